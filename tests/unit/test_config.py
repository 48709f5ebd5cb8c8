"""Bad configuration fails at once, with a message that says how to fix it (no Ray needed)."""

from __future__ import annotations

import pickle

import pytest

import bft_ray
from bft_ray.config import ClusterSpec, Policy, validated


@pytest.fixture(scope="module", autouse=True)
def _no_ray_running():
    """These tests check that bad input fails *before* Ray starts, so none may run already
    (an earlier module may have left the session's shared Ray up; the next one restarts it)."""
    import ray

    bft_ray.shutdown()
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(replicas=4, quorum=2), "quorum=2 is not a strict majority of replicas=4"),
        (dict(replicas=3, quorum=1), "quorum=1 is not a strict majority"),
        (dict(replicas=3, quorum=4), "quorum=4 exceeds replicas=3"),
        (dict(replicas=0), "replicas: Input should be greater than or equal to 1"),
        (dict(replicas=3, max_replicas=2), "max_replicas=2 is below replicas=3"),
        (dict(timeout_s=0), "timeout_s: Input should be greater than 0"),
        (dict(tolerance=bft_ray.Tolerance.exact(), replicas=-1), "replicas"),
    ],
)
def test_bad_policy_fails_at_decoration(options, match):
    with pytest.raises(bft_ray.ConfigError, match=match):
        bft_ray.verified_remote(**options)(lambda x: x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rtol=-1e-5), "rtol: Input should be greater than or equal to 0"),
        (dict(atol=-1.0), "atol"),
        (dict(max_ulps=-1), "max_ulps"),
        (dict(mode="fuzzy"), "mode"),
        (dict(rtol=1e-5, bogus=1), "bogus"),
    ],
)
def test_bad_tolerance_is_rejected(kwargs, match):
    with pytest.raises(bft_ray.ConfigError, match=match) as err:
        bft_ray.Tolerance(**kwargs)
    assert isinstance(err.value, ValueError)
    with pytest.raises(bft_ray.ConfigError, match=match):
        validated(bft_ray.Tolerance, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(executors=0), "executors"),
        (
            dict(executors=4, faults={7: "zeros"}),
            r"faults name executor indices \[7\] but executors are 0..3",
        ),
        (
            dict(executors=4, faults={1: "meltdown"}),
            "unknown fault 'meltdown'. Known faults: bitflip",
        ),
        (dict(verifiers=2), "a BFT group needs n = 3f \\+ 1 >= 4 verifiers"),
        (dict(verifiers=4, verifier_faults={4: "silent"}), r"verifier indices \[4\]"),
        (dict(verifiers=4, verifier_faults={0: "lazy"}), "unknown verifier behaviour 'lazy'"),
        (dict(verifier_faults={0: "silent"}), "verifier_faults need a BFT group"),
        (dict(verifiers=4, trust_path="t.json"), "derived from the verifiers' committed ledgers"),
        (dict(verifiers=4, canary_rate=0.1), "canary_rate runs in the trusted mode"),
        (dict(release="verdict"), 'release="verdict" is for a BFT group'),
        (dict(verifiers=4, release="early"), "release"),
        (dict(verifiers=4, certify_timeout_s=0), "certify_timeout_s"),
        (dict(gpus_per_executor=-1), "gpus_per_executor"),
        (dict(executor_options={"max_restarts": 3}), "managed by bft-ray"),
        (dict(executor_options={"not_an_option": 3}), "invalid executor_options"),
    ],
)
def test_bad_cluster_spec_fails_before_ray_starts(kwargs, match):
    import ray

    with pytest.raises(bft_ray.ConfigError, match=match):
        bft_ray.init(**kwargs)
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(max_retries=3), "Ray retries off"),
        (dict(runtime_env={"pip": ["x"]}), r"bft_ray.init\(executor_options"),
        (dict(num_gpus=-1), "cannot be negative"),
        (dict(not_an_option=1), "Invalid option keyword not_an_option"),
    ],
)
def test_ray_options_are_validated_by_ray_and_screened_by_us(options, match):
    with pytest.raises(bft_ray.ConfigError, match=match):
        bft_ray.verified_remote(**options)(lambda x: x)


def test_calls_before_init_explain_what_to_do():
    f = bft_ray.verified_remote(replicas=1)(lambda x: x)
    with pytest.raises(bft_ray.ConfigError, match=r"call bft_ray.init\(executors=...\)"):
        f.remote(1)


def test_defaults():
    p = Policy()
    assert (p.replicas, p.quorum, p.max_replicas) == (3, 2, 5)
    assert Policy(replicas=5).quorum == 3
    assert p.quorum_for(3) == 2 and p.quorum_for(4) == 3 and p.quorum_for(5) == 3
    assert ClusterSpec().verifiers == 1


def test_errors_are_ray_errors_and_pickle():
    from ray.exceptions import RayError

    err = bft_ray.NoQuorumError("no quorum", task_id="t1")
    assert isinstance(err, RayError) and isinstance(err, bft_ray.VerificationError)
    back = pickle.loads(pickle.dumps(err))
    assert (
        type(back) is bft_ray.NoQuorumError
        and str(back) == "no quorum"
        and back.details == {"task_id": "t1"}
    )
    assert issubclass(bft_ray.ConfigError, ValueError)
    assert issubclass(bft_ray.VerificationTimeoutError, TimeoutError)
    from ray.exceptions import GetTimeoutError

    assert issubclass(bft_ray.VerificationTimeoutError, GetTimeoutError)


def test_decorator_forms():
    @bft_ray.verified_remote
    def f(x):
        return x

    assert f.policy.replicas == 3 and f.__name__ == "f"
    g = f.options(replicas=5)
    assert g.policy.replicas == 5 and g.policy.quorum == 3 and f.policy.replicas == 3
    with pytest.raises(TypeError, match=r"f\.remote"):
        f(1)
