"""bft-ray: trustworthy Ray computations when some machines lie.

Each verified call runs on several untrusted executors (Ray actors pinned to GPUs); their
outputs are compared within a numeric tolerance; a verifier accepts the value a strict-majority
quorum agreed on, signs a certificate anyone can check offline, and flags the executors that
disagreed, with their signed attestations as evidence.

Example:
    .. code-block:: python

        import bft_ray

        cluster = bft_ray.init(executors=4, faults={2: "gaussian_noise"})

        @bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=1)
        def step(x):
            return x * 2

        ref = step.remote(1.5)
        assert bft_ray.get(ref) == 3.0
        print(cluster.report())
"""

from bft_ray import faults
from bft_ray.api import (
    BftCluster,
    VerifiedActorHandle,
    VerifiedClass,
    VerifiedFunction,
    certificate,
    current_cluster,
    device,
    get,
    init,
    shutdown,
    task_id,
    verified_remote,
    wait,
)
from bft_ray.config import ClusterSpec, Policy, Tolerance
from bft_ray.errors import (
    BftRayError,
    CapabilityError,
    CertificateError,
    ConfigError,
    ExecutorUnavailableError,
    NoQuorumError,
    TrustStateError,
    UserCodeError,
    VerificationError,
    VerificationTimeoutError,
)
from bft_ray.report import Report
from bft_ray.trust.plans import Adaptive, Replicate, SpotCheck, adaptive, spot_check
from bft_ray.trust.standing import Prices
from bft_ray.verifier.certificate import Certificate, verify_certificate

__version__ = "0.1.0"

# Torch-backed parts load on first use, so importing bft_ray (every executor does) stays light.
_LAZY = {
    "calibrate": ("bft_ray.inference.calibrate", "calibrate"),
    "RobustTrainer": ("bft_ray.robust.trainer", "RobustTrainer"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bft_ray' has no attribute {name!r}")


__all__ = [
    "Adaptive",
    "BftCluster",
    "BftRayError",
    "CapabilityError",
    "Certificate",
    "CertificateError",
    "ClusterSpec",
    "ConfigError",
    "ExecutorUnavailableError",
    "NoQuorumError",
    "Policy",
    "Prices",
    "Replicate",
    "Report",
    "RobustTrainer",
    "SpotCheck",
    "Tolerance",
    "TrustStateError",
    "UserCodeError",
    "VerificationError",
    "VerificationTimeoutError",
    "VerifiedActorHandle",
    "VerifiedClass",
    "VerifiedFunction",
    "__version__",
    "adaptive",
    "calibrate",
    "certificate",
    "current_cluster",
    "device",
    "faults",
    "get",
    "init",
    "shutdown",
    "spot_check",
    "task_id",
    "verified_remote",
    "verify_certificate",
    "wait",
]
