"""Public API: ``init``, ``@verified_remote``, ``VerifiedRef``, ``get``/``wait``/``certificate``.

Example:
    .. code-block:: python

        import bft_ray

        cluster = bft_ray.init(executors=4, faults={2: "gaussian_noise"})

        @bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=1,
                                 tolerance=bft_ray.Tolerance(rtol=1e-5, atol=1e-6))
        def step(x):
            return x @ x.T

        ref = step.remote(x)                  # VerifiedRef; ref.ref is a plain ObjectRef
        value = bft_ray.get(ref, timeout=60)  # the value a quorum agreed on
        cert = bft_ray.certificate(ref)
        assert bft_ray.verify_certificate(cert, cluster.verifier_keys(), value=value)
        print(cluster.report())
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import math
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar, overload

import ray
from ray import ObjectRef
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bft_ray import faults as fault_lib
from bft_ray.compare.digest import digest_wire
from bft_ray.compare.wire import UnsupportedTypeError, encode
from bft_ray.config import ClusterSpec, Policy, Tolerance, validated
from bft_ray.errors import BftRayError, ConfigError, VerificationTimeoutError
from bft_ray.executor import guard
from bft_ray.executor.actor import inside_executor
from bft_ray.executor.pool import create_pool, local_gpu_count
from bft_ray.report import Report
from bft_ray.trust.reputation import QuarantinePolicy
from bft_ray.verifier.certificate import Certificate, FunctionId
from bft_ray.verifier.records import CallMeta
from bft_ray.verifier.trusted import CallSpec, TrustedVerifier, admin_capability

__all__ = [
    "BftCluster",
    "VerifiedActorHandle",
    "VerifiedClass",
    "VerifiedFunction",
    "VerifiedRef",
    "certificate",
    "current_cluster",
    "device",
    "get",
    "init",
    "shutdown",
    "verified_remote",
    "wait",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_POLICY_KEYS = ("replicas", "quorum", "tolerance", "max_replicas", "timeout_s")
# Ray options and what bft-ray does with them.
_RESOURCE_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "accelerator_type"}
_CALL_OPTIONS = {"name", "enable_task_events"}
_RETRY_OPTIONS = {"max_retries", "retry_exceptions", "max_restarts", "max_task_retries"}
# Arrays larger than this are put in the object store once instead of being copied into the
# verifier's call and again into every replica's call (the verifier then only relays a ref).
# Below it, inlining is cheaper than a put plus a fetch on every executor (measured: a 64 KiB
# argument put in the store made a verified call about 2 ms slower).
_INLINE_ARG_BYTES = 100_000

_lock = threading.Lock()
_cluster: BftCluster | None = None


# -- cluster ------------------------------------------------------------------------------


class BftCluster:
    """Handle to a running bft-ray deployment (executor pool + verifier).

    Returned by :func:`init`. Use :meth:`report` to see what every executor did,
    :meth:`verifier_keys` to check certificates offline, and :meth:`shutdown` when done (or use
    the cluster as a context manager).
    """

    def __init__(self, spec: ClusterSpec, verifier: Any, started_ray: bool, setup: Any) -> None:
        self.spec = spec
        self._verifier = verifier
        self._started_ray = started_ray
        self._setup = setup
        self._verifier_key: bytes = ray.get(verifier.public_key.remote())
        # The driver's capability: only this handle may steer the verifier and executors.
        self._admin = admin_capability(setup.master)
        self._put_cache: dict[int, tuple[Any, ObjectRef, FunctionId]] = {}
        self.closed = False

    @property
    def executors(self) -> int:
        return self.spec.executors

    def verifier_keys(self) -> list[bytes]:
        """Public keys whose signatures make a certificate valid."""
        return [self._verifier_key]

    def executor_keys(self) -> dict[str, bytes]:
        """Executor id -> Ed25519 public key, for every incarnation so far."""
        return ray.get(self._verifier.executor_keys.remote())

    def report(self) -> Report:
        """Per-executor tasks, agreements, flags and trust score (after in-flight judging settles).

        Example:
            >>> print(cluster.report())  # doctest: +SKIP
        """
        data = ray.get(self._verifier.report.remote())
        return Report(data["executors"], data["counters"])

    def inject_fault(self, index: int, fault: Any) -> str:
        """Change the injected behaviour of executor slot ``index`` at run time.

        Useful for chaos tests and demos; the slot keeps the behaviour across respawns. Pass
        ``"honest"`` to heal it.

        Example:
            >>> cluster.inject_fault(2, bft_ray.faults.gaussian_noise(0.5))  # doctest: +SKIP
            'gaussian_noise(0.5)'
        """
        if not 0 <= index < self.spec.executors:
            raise ConfigError(f"no executor slot {index}; slots are 0..{self.spec.executors - 1}")
        fault_lib.resolve(fault)
        return ray.get(self._verifier.inject_fault.remote(self._admin, index, fault))

    def executor_handles(self, include_quarantined: bool = False) -> list[dict[str, Any]]:
        """Executors in service with their actor handles, for layers that place unreplicated work.

        Each entry has ``index``, ``executor_id``, ``node_id``, ``status``, ``fault`` (the
        injected behaviour now, including changes by :meth:`inject_fault`) and ``handle`` (an
        :class:`~bft_ray.executor.actor.ExecutorActor` handle: ``create_instance``, ``call``,
        ``run``), ``slot``, ``public_key`` (its registered key) and ``capability`` (the slot's
        token, which every steering executor method takes first). Calls made this way are *not*
        verified; their answers still pass through the executor's injected fault behaviour and
        come back as signed answer envelopes: read them with
        :func:`bft_ray.verifier.admission.admit`.
        """
        return ray.get(self._verifier.executor_handles.remote(self._admin, include_quarantined))

    def flags(self, executor_id: str) -> list:
        """Flags raised against an executor, each with its signed evidence."""
        return ray.get(self._verifier.flags.remote(executor_id))

    def _put(self, obj: Any) -> tuple[ObjectRef, FunctionId]:
        # Functions and classes are stored (and identified) once per cluster, not once per call.
        key = id(obj)
        hit = self._put_cache.get(key)
        if hit is None or hit[0] is not obj:
            hit = (obj, ray.put(obj), _function_id(obj))
            self._put_cache[key] = hit
        return hit[1], hit[2]

    def shutdown(self) -> None:
        """Stop the verifier and executors (and Ray, if :func:`init` started it)."""
        global _cluster
        if self.closed:
            return
        self.closed = True
        try:
            ray.get(self._verifier.shutdown.remote(self._admin), timeout=30)
        except Exception as exc:
            logger.debug("verifier shutdown: %s", exc)
        try:
            ray.kill(self._verifier, no_restart=True)
        except Exception:
            pass
        with _lock:
            if _cluster is self:
                _cluster = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> BftCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"BftCluster(executors={self.spec.executors}, verifiers={self.spec.verifiers}, closed={self.closed})"


def init(
    executors: int = 4,
    verifiers: int = 1,
    faults: dict[int, Any] | None = None,
    address: str | None = None,
    *,
    gpus_per_executor: float = 1.0,
    cpus_per_executor: float = 1.0,
    executor_options: dict[str, Any] | None = None,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    object_store_memory: int | None = None,
    seed: int = 0,
    max_respawns: int = 2,
    keep_certificates: int = 20_000,
    quarantine_below: float = 0.3,
    quarantine_min_tasks: int = 4,
    **ray_init_kwargs: Any,
) -> BftCluster:
    """Start or join Ray, place the executors and start the verifier.

    Args:
        executors: Number of untrusted executor actors.
        verifiers: ``1`` for the trusted-verifier mode (the only mode in this version).
        faults: Fault injection, executor index -> behaviour (see :mod:`bft_ray.faults`).
        address: Ray address to join. ``None`` joins ``RAY_ADDRESS`` if set (as under
            ``ray job submit``) or an already initialised Ray, else starts a local Ray.
        gpus_per_executor: GPUs per executor (``0`` for CPU-only executors).
        cpus_per_executor: CPUs per executor.
        executor_options: Extra Ray actor options for executors, e.g. ``runtime_env``.
        num_cpus: CPUs of a local Ray (default: enough for the executors plus two).
        num_gpus: GPUs of a local Ray. Default: the GPUs present, or, on a machine without
            GPUs, one logical GPU per executor so the same code runs on a laptop (work then runs
            on the CPU; see :func:`device`).
        object_store_memory: Object store size of a local Ray (default 1 GiB).
        seed: Seed of fault behaviours.
        max_respawns: How often a crashed or stalled executor slot is respawned.
        keep_certificates: How many recent certificates the verifier keeps retrievable.
        quarantine_below: Trust score under which a flagged executor stops receiving work; at
            most a minority of the pool is quarantined. ``0`` disables quarantine.
        quarantine_min_tasks: Outcomes an executor needs before it can be quarantined.
        **ray_init_kwargs: Passed to ``ray.init`` when bft-ray starts or joins Ray.

    Returns:
        The :class:`BftCluster` handle.

    Raises:
        ConfigError: For an invalid spec (unknown fault names, indices outside the pool, a
            cluster that cannot hold the executors, ...), before anything is started.
    """
    global _cluster
    spec = validated(
        ClusterSpec,
        executors=executors,
        verifiers=verifiers,
        gpus_per_executor=gpus_per_executor,
        cpus_per_executor=cpus_per_executor,
        faults=dict(faults or {}),
        address=address,
        executor_options=dict(executor_options or {}),
        quarantine_below=quarantine_below,
        quarantine_min_tasks=quarantine_min_tasks,
    )
    for spec_value in spec.faults.values():
        fault_lib.resolve(spec_value)  # unknown names fail here, in the driver
    if spec.executor_options:
        bad = set(spec.executor_options) & (
            _RETRY_OPTIONS | {"num_gpus", "num_cpus", "max_concurrency"}
        )
        if bad:
            raise ConfigError(
                f"executor_options {sorted(bad)} are managed by bft-ray (retries stay off so "
                "faults are never hidden; use gpus_per_executor/cpus_per_executor for resources)."
            )
        try:
            ray.remote(**spec.executor_options)(TrustedVerifier)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid executor_options: {exc}") from None
    with _lock:
        if _cluster is not None and not _cluster.closed:
            raise ConfigError(
                "bft_ray.init() was already called in this process; call bft_ray.shutdown() "
                "(or cluster.shutdown()) before initialising again."
            )

    # Nothing an executor produces is ever unpickled in this process either.
    guard.install()
    started = False
    if not ray.is_initialized():
        target = spec.address or os.environ.get("RAY_ADDRESS")
        if target:
            ray.init(address=target, **ray_init_kwargs)
        else:
            if num_gpus is None:
                present = local_gpu_count()
                num_gpus = present or math.ceil(spec.executors * spec.gpus_per_executor)
                if not present and num_gpus:
                    logger.info(
                        "no GPU found: declaring %s logical GPUs for %d executors; work runs on the CPU",
                        num_gpus,
                        spec.executors,
                    )
            cpus = num_cpus or max(
                os.cpu_count() or 1, math.ceil(spec.executors * spec.cpus_per_executor) + 2
            )
            ray_init_kwargs.setdefault("include_dashboard", False)
            ray.init(
                num_cpus=cpus,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory or 1 << 30,
                **ray_init_kwargs,
            )
        started = True
    try:
        setup = create_pool(spec, seed=seed, max_respawns=max_respawns, master=os.urandom(32))
    except BaseException:
        if started:
            ray.shutdown()  # leave nothing running behind a failed init
        raise
    # The verifier is trusted: keep it on the driver's node (the head under `ray job submit`),
    # never on an untrusted executor node, whose loss would also take the verifier with it.
    on_driver_node = NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False
    )
    verifier = (
        ray.remote(TrustedVerifier)
        .options(
            num_cpus=0, max_restarts=0, max_concurrency=10_000, scheduling_strategy=on_driver_node
        )
        .remote(
            setup,
            quarantine=QuarantinePolicy(
                below=spec.quarantine_below,
                min_tasks=spec.quarantine_min_tasks,
                keep=spec.executors // 2 + 1,
            ),
            keep_certificates=keep_certificates,
        )
    )
    cluster = BftCluster(spec, verifier, started, setup)
    with _lock:
        _cluster = cluster
    logger.info("bft-ray ready: %d executors, trusted verifier", spec.executors)
    return cluster


def current_cluster() -> BftCluster:
    """The cluster started by :func:`init` in this process."""
    if _cluster is None or _cluster.closed:
        raise ConfigError(
            "bft-ray is not initialised: call bft_ray.init(executors=...) before submitting "
            "verified calls."
        )
    return _cluster


def shutdown() -> None:
    """Shut down the cluster started by :func:`init` (no-op if none)."""
    if _cluster is not None:
        _cluster.shutdown()


def device() -> Any:
    """The torch device user code should use inside an executor: CUDA if present, else CPU.

    Ray sets ``CUDA_VISIBLE_DEVICES`` for an actor holding a (possibly logical) GPU, but on a
    machine without a real GPU there is no device behind it; this falls back to the CPU.
    """
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- references ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class VerifiedRef:
    """The future result of a verified call.

    Attributes:
        ref: A plain ``ObjectRef`` of the accepted value. It resolves only after the verdict,
            so anything that consumes it (``ray.get``, another task) only sees verified data;
            on failure it raises the verification error.
        task_id: The call's task id (appears in certificates, flags and errors).
        name: Function or method name.
        verifier: Handle of the verifier that decides the call (serves its certificate).

    A ``VerifiedRef`` is awaitable: ``value = await ref`` inside async code.
    """

    ref: ObjectRef
    task_id: str
    name: str
    verifier: Any = dataclasses.field(default=None, repr=False)

    def __await__(self):
        return _await_value(self.ref).__await__()

    def __repr__(self) -> str:
        return f"VerifiedRef({self.name}, task_id={self.task_id!r})"


async def _await_value(ref: ObjectRef) -> Any:
    try:
        return await ref
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap(exc) from None


def _unwrap(exc: BaseException) -> BaseException:
    """Surface bft-ray errors as themselves rather than wrapped in a RayTaskError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BftRayError):
        return cause
    return exc


def _refs_of(refs: Any) -> tuple[list[ObjectRef], bool]:
    single = not isinstance(refs, list | tuple)
    items = [refs] if single else list(refs)
    out = []
    for r in items:
        if isinstance(r, VerifiedRef):
            out.append(r.ref)
        elif isinstance(r, ObjectRef):
            out.append(r)
        else:
            raise TypeError(f"expected VerifiedRef or ObjectRef, got {type(r).__qualname__}")
    return out, single


@overload
def get(refs: VerifiedRef, *, timeout: float | None = None) -> Any: ...
@overload
def get(refs: Sequence[VerifiedRef], *, timeout: float | None = None) -> list[Any]: ...


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """Block until verified values are ready and return them.

    Args:
        refs: A :class:`VerifiedRef` or a list of them (plain ObjectRefs pass through).
        timeout: Seconds to wait; ``None`` waits forever.

    Raises:
        NoQuorumError: Replicas disagreed beyond the tolerance and escalation did not help.
        ExecutorUnavailableError: Too few live executors.
        VerificationTimeoutError: ``timeout`` passed first.
    """
    object_refs, single = _refs_of(refs)
    try:
        values = ray.get(object_refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise VerificationTimeoutError(
            f"verified result not ready within {timeout}s; raise the timeout or check "
            "cluster.report() for stalled executors."
        ) from None
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap(exc) from None
    return values[0] if single else values


def wait(
    refs: Any,
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Like ``ray.wait``: split ``refs`` into ready and pending, preserving order.

    Args:
        refs: A list of :class:`VerifiedRef` (plain ObjectRefs may be mixed in), or a single one.
        num_returns: How many ready refs to wait for.
        timeout: Seconds to wait at most; ``None`` waits for ``num_returns``.
        fetch_local: As in ``ray.wait``: also wait until the values are local.

    Returns:
        ``(ready, pending)``, each a list of the refs given, in their order.

    Example:
        >>> ready, pending = bft_ray.wait(refs, num_returns=2, timeout=10)  # doctest: +SKIP
    """
    items = [refs] if isinstance(refs, VerifiedRef | ObjectRef) else list(refs)
    object_refs, _ = _refs_of(items)
    if len(set(object_refs)) != len(object_refs):
        raise ValueError("wait() got the same ref twice")
    ready, _ = ray.wait(
        object_refs, num_returns=num_returns, timeout=timeout, fetch_local=fetch_local
    )
    ready_set = set(ready)
    return (
        [r for r, o in zip(items, object_refs) if o in ready_set],
        [r for r, o in zip(items, object_refs) if o not in ready_set],
    )


def certificate(ref: VerifiedRef, *, timeout: float | None = None) -> Certificate:
    """The :class:`Certificate` of a verified call (blocks until the verdict).

    Raises:
        The call's verification error, if it failed.
    """
    verifier = ref.verifier if ref.verifier is not None else current_cluster()._verifier
    # The verdict is stored before the value is returned: wait for the value, then ask.
    ready, _ = ray.wait([ref.ref], timeout=timeout, fetch_local=False)
    if not ready:
        raise VerificationTimeoutError(f"certificate not ready within {timeout}s")
    status, payload = ray.get(verifier.certificate.remote(ref.task_id))
    if status == "error":
        raise payload
    return payload


# -- decorator ----------------------------------------------------------------------------


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = {k: options[k] for k in _POLICY_KEYS if k in options}
    theirs = {k: v for k, v in options.items() if k not in _POLICY_KEYS}
    return ours, theirs


def _check_ray_options(target: Any, ray_options: dict[str, Any]) -> dict[str, Any]:
    """Let Ray validate its options, then decide what each means for bft-ray.

    Returns the options to use on each executor call (``name``, ...).
    """
    if not ray_options:
        return {}
    try:
        ray.remote(**ray_options)(target)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"invalid Ray option for {getattr(target, '__qualname__', target)}: {exc}"
        ) from None
    retry = sorted(set(ray_options) & _RETRY_OPTIONS)
    if retry:
        raise ConfigError(
            f"{retry}: bft-ray runs replicas with Ray retries off so that faults are never "
            "hidden, and re-executes on its own (see replicas, max_replicas, timeout_s). Remove them."
        )
    unsupported = sorted(set(ray_options) - _RESOURCE_OPTIONS - _CALL_OPTIONS)
    if unsupported:
        raise ConfigError(
            f"{unsupported} cannot apply per call: verified calls run on long-lived executor "
            "actors. Set them on the executors with bft_ray.init(executor_options={...})."
        )
    return {k: v for k, v in ray_options.items() if k in _CALL_OPTIONS}


def _check_fits(
    policy: Policy, ray_options: dict[str, Any], cluster: BftCluster, what: str
) -> None:
    spec = cluster.spec
    if policy.replicas > spec.executors:
        raise ConfigError(
            f"{what}: replicas={policy.replicas} but the pool has {spec.executors} executors; "
            "replicas of one call must run on distinct executors. Lower replicas or use "
            f"bft_ray.init(executors>={policy.replicas})."
        )
    gpus = ray_options.get("num_gpus")
    if gpus is not None and gpus > spec.gpus_per_executor:
        raise ConfigError(
            f"{what}: num_gpus={gpus} but each executor holds {spec.gpus_per_executor:g}. Use "
            f"bft_ray.init(gpus_per_executor={gpus}) or ask for fewer GPUs."
        )
    cpus = ray_options.get("num_cpus")
    if cpus is not None and cpus > spec.cpus_per_executor:
        raise ConfigError(
            f"{what}: num_cpus={cpus} but each executor holds {spec.cpus_per_executor:g}. Use "
            f"bft_ray.init(cpus_per_executor={cpus})."
        )


def _policy(options: dict[str, Any]) -> Policy:
    ours = dict(options)
    if ours.get("tolerance") is None:
        ours.pop("tolerance", None)
    return validated(Policy, **ours)


def _prepare_args(args: tuple, kwargs: dict) -> tuple[list, dict]:
    """Large arrays go to the object store once; small values travel inline."""

    def prep(a: Any) -> Any:
        if isinstance(a, ObjectRef):
            return a
        if isinstance(a, VerifiedRef):
            return a.ref
        nbytes = getattr(a, "nbytes", None)  # numpy arrays and torch tensors both have it
        if isinstance(nbytes, int) and nbytes > _INLINE_ARG_BYTES:
            return ray.put(a)
        return a

    return [prep(a) for a in args], {k: prep(v) for k, v in kwargs.items()}


def _new_task_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:16]}"


def _function_id(obj: Any) -> FunctionId:
    """Module, qualified name and a digest of the pickled code: what a certificate binds."""
    import blake3
    import cloudpickle

    try:
        code = blake3.blake3(cloudpickle.dumps(obj)).hexdigest()
    except Exception:  # unpicklable objects fail later, in ray.put, with Ray's own message
        code = ""
    return FunctionId(
        getattr(obj, "__module__", "") or "", getattr(obj, "__qualname__", repr(obj)), code
    )


def _args_digest(args: list, kwargs: dict) -> bytes:
    """Digest of a call's arguments as sent (object refs by id), bound into its certificate."""

    def norm(a: Any) -> Any:
        return {"object_ref": a.hex()} if isinstance(a, ObjectRef) else a

    call = [[norm(a) for a in args], {str(k): norm(v) for k, v in kwargs.items()}]
    try:
        return digest_wire(encode(call))
    except UnsupportedTypeError:
        import pickle

        import blake3

        # Arguments are the caller's own, trusted values; pickle is a stable enough commitment
        # for values the canonical form does not cover.
        try:
            return blake3.blake3(pickle.dumps(call, protocol=5)).digest()
        except Exception:
            return b"\x00" * 32


def _refuse_nested(what: str) -> None:
    if inside_executor():
        raise ConfigError(
            f"{what} was called from inside a verified function. Nested verified calls would "
            "multiply replicas and can deadlock the executors; compute the value in the outer "
            "function, or call the verified function from the driver."
        )


class VerifiedFunction:
    """A function whose calls are replicated on untrusted executors and verified.

    Created by :func:`verified_remote`. Call :meth:`remote` to submit; calling it directly is an
    error, as with Ray remote functions.
    """

    def __init__(self, fn: Any, options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = dict(options)
        ours, theirs = _split_options(options)
        self.policy = _policy(ours)
        self._call_options = _check_ray_options(fn, theirs)
        self._ray_options = theirs
        self.__name__ = getattr(fn, "__name__", "function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        if _cluster is not None and not _cluster.closed:
            _check_fits(self.policy, theirs, _cluster, self.__qualname__)

    def options(self, **options: Any) -> VerifiedFunction:
        """A copy with some options overridden (ours and Ray's), validated at once."""
        return VerifiedFunction(self._fn, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> VerifiedRef:
        """Submit a verified call; returns immediately with a :class:`VerifiedRef`."""
        _refuse_nested(f"{self.__qualname__}.remote()")
        cluster = current_cluster()
        _check_fits(self.policy, self._ray_options, cluster, self.__qualname__)
        fn_ref, fn_id = cluster._put(self._fn)
        a, kw = _prepare_args(args, kwargs)
        task_id = _new_task_id(self.__name__)
        meta = CallMeta(task_id, self.__qualname__, fn_id, _args_digest(a, kw))
        call = CallSpec(task_id, self.__qualname__, self.policy, self._call_options, meta)
        value_ref = cluster._verifier.submit.remote(call, [fn_ref], a, kw)
        return VerifiedRef(value_ref, call.task_id, call.name, cluster._verifier)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Verified functions cannot be called directly. Instead of running '{self.__name__}()', "
            f"try '{self.__name__}.remote()'."
        )

    def __repr__(self) -> str:
        return f"VerifiedFunction({self.__qualname__}, {self.policy!r})"


class VerifiedClass:
    """A class whose instances are replicated on ``replicas`` executors; method calls are verified."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = dict(options)
        ours, theirs = _split_options(options)
        self.policy = _policy(ours)
        self._call_options = _check_ray_options(cls, theirs)
        self._ray_options = theirs
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        if _cluster is not None and not _cluster.closed:
            _check_fits(self.policy, theirs, _cluster, self.__qualname__)

    def options(self, **options: Any) -> VerifiedClass:
        """A copy with some options overridden, validated at once."""
        return VerifiedClass(self._cls, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> VerifiedActorHandle:
        """Create a replicated instance; returns at once with its handle."""
        _refuse_nested(f"{self.__qualname__}.remote()")
        cluster = current_cluster()
        _check_fits(self.policy, self._ray_options, cluster, self.__qualname__)
        cls_ref, cls_id = cluster._put(self._cls)
        task_id = _new_task_id(self.__name__)
        a, kw = _prepare_args(args, kwargs)
        meta = CallMeta(task_id, self.__qualname__, cls_id, _args_digest(a, kw))
        call = CallSpec(task_id, self.__qualname__, self.policy, self._call_options, meta)
        ready = cluster._verifier.create_instance.remote(call, [cls_ref], a, kw)
        return VerifiedActorHandle(cluster, self._cls, call, ready)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Verified classes cannot be instantiated directly. Instead of '{self.__name__}()', "
            f"use '{self.__name__}.remote()'."
        )


class VerifiedActorHandle:
    """Handle to a replicated instance. ``handle.method.remote(...)`` returns a :class:`VerifiedRef`.

    Calls from one handle run in submission order on every replica, so deterministic state
    stays identical across honest replicas. A replica whose answer disagrees has a diverged
    state and is never asked again; when fewer than ``quorum`` healthy replicas remain, calls
    fail with :class:`~bft_ray.errors.ExecutorUnavailableError`.
    """

    def __init__(self, cluster: BftCluster, cls: type, call: CallSpec, ready: ObjectRef) -> None:
        self._cluster = cluster
        self._cls = cls
        self._call = call
        self._ready = ready
        self._seq = itertools.count()
        self._seq_lock = threading.Lock()
        self.instance_id = call.task_id

    def holders(self, timeout: float | None = None) -> list[str]:
        """Executor ids holding healthy replicas now (blocks until the instance is created).

        Replicas that crashed or diverged are replaced by new ones that replay the call log.
        """
        return self.info(timeout)["holders"]

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        """Holders and the number of replicas rebuilt so far (``repairs``)."""
        try:
            return ray.get(
                self._cluster._verifier.instance_info.remote(self.instance_id, [self._ready]),
                timeout=timeout,
            )
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None

    def __getattr__(self, name: str) -> _VerifiedMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._cls, name, None)
        if attr is None or not callable(attr):
            raise AttributeError(f"{self._cls.__qualname__} has no method {name!r}")
        return _VerifiedMethod(self, name)

    def _submit(self, method: str, args: tuple, kwargs: dict) -> VerifiedRef:
        cluster = self._cluster
        _refuse_nested(f"{self._call.name}.{method}.remote()")
        with self._seq_lock:
            seq = next(self._seq)
            a, kw = _prepare_args(args, kwargs)
            task_id = f"{self.instance_id}/{seq}"
            name = f"{self._call.name}.{method}"
            base = self._call.meta
            fn_id = (
                FunctionId(
                    base.function.module,
                    f"{base.function.qualname}.{method}",
                    base.function.code_digest,
                )
                if base
                else FunctionId("", name, "")
            )
            meta = CallMeta(task_id, name, fn_id, _args_digest(a, kw))
            call = dataclasses.replace(self._call, task_id=task_id, name=name, meta=meta)
            value_ref = cluster._verifier.call_method.remote(
                call, self.instance_id, [self._ready], seq, method, a, kw
            )
        return VerifiedRef(value_ref, call.task_id, call.name, cluster._verifier)

    def __repr__(self) -> str:
        return f"VerifiedActorHandle({self._cls.__qualname__}, instance_id={self.instance_id!r})"


class _VerifiedMethod:
    def __init__(self, handle: VerifiedActorHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def remote(self, *args: Any, **kwargs: Any) -> VerifiedRef:
        return self._handle._submit(self._name, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Verified methods cannot be called directly; use '.{self._name}.remote()'."
        )


@overload
def verified_remote(fn_or_cls: T) -> Any: ...
@overload
def verified_remote(
    *,
    replicas: int = 3,
    quorum: int | None = None,
    tolerance: Tolerance | None = None,
    max_replicas: int | None = None,
    timeout_s: float = 300.0,
    **ray_options: Any,
) -> Any: ...


def verified_remote(fn_or_cls: Any = None, **options: Any) -> Any:
    """Decorate a function or class so its calls run replicated on untrusted executors.

    Args:
        replicas: Executors that run each call (default 3).
        quorum: Agreeing outputs needed (default ``replicas // 2 + 1``; must be a strict
            majority).
        tolerance: A :class:`~bft_ray.config.Tolerance` (default ``allclose`` with
            ``rtol=1e-5, atol=1e-8``).
        max_replicas: Bound on executions when replicas disagree (default ``replicas + 2``).
        timeout_s: Seconds before a replica counts as stalled and is replaced.
        **ray_options: Ray options, validated by Ray. Resource options (``num_gpus``,
            ``num_cpus``, ...) must fit one executor; ``name`` labels executor calls; options that
            only make sense for a new worker process (``runtime_env``) belong in
            ``bft_ray.init(executor_options=...)``.

    Example:
        >>> import bft_ray
        >>> @bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=1)
        ... def square(x):
        ...     return x * x
        >>> square.policy.quorum
        2
        >>> bft_ray.verified_remote(replicas=4, quorum=2)(lambda x: x)
        Traceback (most recent call last):
        ...
        bft_ray.errors.ConfigError: Invalid Policy:
          Policy: quorum=2 is not a strict majority of replicas=4: ...
    """

    def wrap(target: Any) -> Any:
        if inspect.isclass(target):
            return VerifiedClass(target, options)
        if callable(target):
            return VerifiedFunction(target, options)
        raise TypeError(
            f"@verified_remote applies to functions and classes, not {type(target).__qualname__}"
        )

    if fn_or_cls is not None:
        if options:
            raise TypeError("use @verified_remote or @verified_remote(**options), not both")
        return wrap(fn_or_cls)
    return wrap
