"""Public API: ``init``, ``@verified_remote``, ``get``/``wait``/``certificate``/``task_id``.

Example:
    .. code-block:: python

        import bft_ray

        cluster = bft_ray.init(executors=4, faults={2: "gaussian_noise"})

        @bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=1,
                                 tolerance=bft_ray.Tolerance(rtol=1e-5, atol=1e-6))
        def step(x):
            return x @ x.T

        ref = step.remote(x)                  # a plain ray.ObjectRef of the verified value
        value = bft_ray.get(ref, timeout=60)  # or ray.get(ref): the value a quorum agreed on
        cert = bft_ray.certificate(ref)
        assert bft_ray.verify_certificate(cert, cluster.verifier_keys(), value=value)
        print(cluster.report())
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar, overload

import blake3
import ray
from ray import ObjectRef
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bft_ray import faults as fault_lib
from bft_ray.actor_facade import public_actor
from bft_ray.compare.digest import digest_wire
from bft_ray.compare.wire import UnsupportedTypeError, encode
from bft_ray.config import ClusterSpec, Policy, Tolerance, validated
from bft_ray.errors import (
    BftRayError,
    CapabilityError,
    ConfigError,
    TrustStateError,
    VerificationTimeoutError,
)
from bft_ray.executor import guard
from bft_ray.executor.actor import inside_executor
from bft_ray.executor.pool import create_pool, local_gpu_count
from bft_ray.report import Report
from bft_ray.submission import Submitter
from bft_ray.trust.plans import CheckerCall, Replicate, plan_from
from bft_ray.trust.reputation import QuarantinePolicy
from bft_ray.verifier.certificate import Certificate, FunctionId
from bft_ray.verifier.group import BftVerifier, GroupSetup
from bft_ray.verifier.group import actor_name as group_actor_name
from bft_ray.verifier.records import CallMeta
from bft_ray.verifier.results import ResultDesk
from bft_ray.verifier.trust_state import AgreedStanding, TrustRules, agree
from bft_ray.verifier.trust_state import trust_report as committed_trust_report
from bft_ray.verifier.trusted import (
    CallSpec,
    TrustedVerifier,
    admin_capability,
    desk_capability,
)

__all__ = [
    "BftCluster",
    "VerifiedActorHandle",
    "VerifiedClass",
    "VerifiedFunction",
    "certificate",
    "current_cluster",
    "device",
    "get",
    "init",
    "shutdown",
    "task_id",
    "verified_remote",
    "wait",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_POLICY_KEYS = ("replicas", "quorum", "tolerance", "max_replicas", "timeout_s")
# Ray options and what bft-ray does with them.
_RESOURCE_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "accelerator_type"}
_CALL_OPTIONS = {"name", "enable_task_events"}
_RETURN_OPTIONS = {"num_returns"}  # applies to the verifier's task, whose refs the caller gets
_RETRY_OPTIONS = {"max_retries", "retry_exceptions", "max_restarts", "max_task_retries"}
# Where the verifier actor is registered, so other processes of the cluster can attach to it.
NAMESPACE = "bft_ray"
_DEFAULT_EXECUTORS = 4
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

    The process that created the cluster holds the *owner* handle: only it can steer executors
    (:meth:`inject_fault`, :meth:`executor_handles`). Other processes of the Ray cluster (a
    plain Ray task or actor, a second driver, a notebook) *attach* to it by name and can submit
    verified calls, read reports and certificates.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        verifier: Any,
        started_ray: bool,
        setup: Any = None,
        *,
        name: str = "default",
        verifier_keys: list[bytes] | None = None,
        keep: int = 100_000,
        desk: Any = None,
    ) -> None:
        self.spec = spec
        self.name = name
        self._verifier = verifier
        self._desk = desk  # the result desk of batched calls (None: every call goes direct)
        self._submitter = Submitter(verifier, desk)
        self._started_ray = started_ray
        self._setup = setup
        self._verifier_keys: list[bytes] = verifier_keys or [ray.get(verifier.public_key.remote())]
        # The owner's capability: only the creating process may steer the verifier and executors.
        self._admin = admin_capability(setup.master) if setup is not None else None
        self._put_cache: dict[int, tuple[Any, ObjectRef, FunctionId]] = {}
        self._registered: set[str] = set()  # function keys the verifier holds
        # Ray task id (hex) of each submission -> its bft-ray task id, for task_id()/certificate().
        self._task_ids: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._keep = max(keep, 1)  # how many ref -> task id entries to remember
        self._group: list[Any] = []  # BFT mode: the verifier actors (owner only)
        self.closed = False

    @property
    def owner(self) -> bool:
        """Whether this process created the cluster (and may steer its executors)."""
        return self._admin is not None

    def _need_owner(self, what: str) -> bytes:
        if self._admin is None:
            raise CapabilityError(
                f"{what} steers executors and is only available in the process that called "
                f"bft_ray.init(executors=...) for cluster {self.name!r}; this process attached "
                "to it and can submit verified calls, read reports and certificates."
            )
        return self._admin

    def _remember(self, ray_task: str, task_id: str) -> None:
        self._task_ids[ray_task] = task_id
        if len(self._task_ids) > self._keep:
            self._task_ids.popitem(last=False)

    @property
    def executors(self) -> int:
        return self.spec.executors

    def verifier_keys(self) -> list[bytes]:
        """Public keys whose signatures make a certificate valid (the whole group's in BFT mode).

        ``bft_ray.verify_certificate(cert, cluster.verifier_keys())`` then requires ``2f + 1``
        of them on a BFT certificate.
        """
        return list(self._verifier_keys)

    def verifier_status(self) -> list[dict[str, Any]]:
        """BFT mode: each verifier's round, commits, pending claims, ledger and counters.

        A verifier that cannot answer (crashed, or its node is gone) shows as
        ``{"index": i, "error": ...}``.
        """
        out = []
        for i, h in enumerate(self._group_handles()):
            try:
                out.append(ray.get(h.status.remote(), timeout=30))
            except Exception as exc:
                out.append({"index": i, "error": f"{type(exc).__name__}: {exc}"[:200]})
        return out

    def _group_handles(self) -> list[Any]:
        """The verifier actors: the owner's handles, or found by name in an attached process."""
        if self._group or self.spec.verifiers <= 1:
            return list(self._group)
        handles = []
        for i in range(self.spec.verifiers):
            try:
                handles.append(ray.get_actor(group_actor_name(self.name, i), namespace=NAMESPACE))
            except ValueError:
                handles.append(_Missing(i))
        return handles

    def inject_verifier_fault(self, index: int, fault: str) -> str:
        """BFT mode: change verifier ``index``'s behaviour at run time (owner only).

        ``"honest"`` heals it; ``"crash"`` makes it exit, after which Ray restarts it and it
        recovers from its ledger (honest again).

        Example:
            >>> cluster.inject_verifier_fault(1, "censor")  # doctest: +SKIP
            'censor'
        """
        admin = self._need_owner("inject_verifier_fault")
        if not self._group:
            raise ConfigError("inject_verifier_fault needs a BFT group (init(verifiers>=4))")
        if not 0 <= index < len(self._group):
            raise ConfigError(f"no verifier {index}; verifiers are 0..{len(self._group) - 1}")
        name = fault_lib.resolve_verifier_fault(fault)
        return ray.get(self._group[index].set_fault.remote(admin, name), timeout=30)

    def verifier_handles(self) -> list[Any]:
        """BFT mode: the verifier actors' handles (owner only; for chaos tests)."""
        self._need_owner("verifier_handles")
        return list(self._group)

    def executor_keys(self) -> dict[str, bytes]:
        """Executor id -> Ed25519 public key, for every incarnation so far."""
        return ray.get(self._verifier.executor_keys.remote())

    def report(self) -> Report:
        """Per-executor tasks, agreements, flags and trust score (after in-flight judging settles).

        Example:
            >>> print(cluster.report())  # doctest: +SKIP
        """
        data = ray.get(self._verifier.report.remote())
        rows = data["executors"]
        if self.spec.verifiers > 1:
            # BFT mode: standing, credit and taint come from the committed standing that f + 1
            # verifiers hold, never from the dispatcher's own bookkeeping.
            agreed = self.committed_standing()
            s = agreed.standing
            for row in rows:
                eid = row["executor"]
                acct = s.account(eid) if eid in s.executors else None
                row["standing"] = acct["status"] if acct else "active"
                row["credit"] = round(acct["balance"], 6) if acct else 0.0
                row["tainted"] = acct["tainted"] if acct else 0
                if acct and acct["group"]:
                    row["group"] = acct["group"]
            data["counters"]["standing_agreed_by"] = ",".join(map(str, agreed.agreed_by))
        return Report(rows, data["counters"], data.get("recent", []))

    def committed_standing(self, timeout_s: float = 15.0) -> AgreedStanding:
        """BFT mode: the executor standing that at least ``f + 1`` verifiers hold.

        Every verifier is asked for its whole state; the digest of each is recomputed here
        (a reported digest is never trusted) and a state is returned only if ``f + 1``
        verifiers hold it, so at least one honest verifier vouches for it. While the group
        is still committing (answers differ) it asks again for a few seconds, preferring a
        state every answering verifier holds.

        Raises:
            ConfigError: In the trusted mode (``verifiers=1``).
            TrustStateError: If no state is held by ``f + 1`` verifiers within ``timeout_s``.
        """
        if self.spec.verifiers <= 1:
            raise ConfigError("committed_standing needs a BFT group (init(verifiers>=4))")
        handles = self._group_handles()
        n = len(handles)
        start = time.monotonic()
        while True:
            answers: dict[int, Any] = {}
            refs: dict[int, Any] = {}
            for i, h in enumerate(handles):
                try:
                    refs[i] = h.standing.remote()
                except Exception as exc:  # a verifier that is gone
                    answers[i] = f"{type(exc).__name__}: {exc}"[:200]
            if refs:
                ray.wait(list(refs.values()), num_returns=len(refs), timeout=10.0)
            for i, ref in refs.items():
                try:
                    answers[i] = ray.get(ref, timeout=0.1)
                except Exception as exc:
                    answers[i] = f"{type(exc).__name__}: {exc}"[:200]
            elapsed = time.monotonic() - start
            try:
                agreed = agree(answers, n)
            except TrustStateError:
                if elapsed > timeout_s:
                    raise
            else:
                answering = sum(isinstance(a, dict) and "state" in a for a in answers.values())
                if len(agreed.agreed_by) == answering or elapsed > min(3.0, timeout_s):
                    return agreed
            time.sleep(0.25)

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
        admin = self._need_owner("inject_fault")
        return ray.get(self._verifier.inject_fault.remote(admin, index, fault))

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
        admin = self._need_owner("executor_handles")
        return ray.get(self._verifier.executor_handles.remote(admin, include_quarantined))

    def recover_executor(self, index: int, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """Have the verifier check executor slot ``index`` and respawn it if it is dead.

        For layers that place unreplicated work on executors (robust training re-creates a
        crashed worker with it). The verifier pings the executor itself; only a failed or
        unanswered ping retires it, and the pool respawns the slot within ``max_respawns``.
        Returns the slot's :meth:`executor_handles` entry once it is in service (the same
        executor if it was alive), or ``None``.

        Example:
            >>> entry = cluster.recover_executor(3)  # doctest: +SKIP
            >>> entry["executor_id"]  # doctest: +SKIP
            'ex3.1'
        """
        if not 0 <= index < self.spec.executors:
            raise ConfigError(f"no executor slot {index}; slots are 0..{self.spec.executors - 1}")
        admin = self._need_owner("recover_executor")
        return ray.get(self._verifier.recover_executor.remote(admin, index, timeout_s))

    def scale(
        self, executors: int, *, faults: dict[int, Any] | None = None, timeout_s: float = 300.0
    ) -> BftCluster:
        """Add executors to or remove executors from the running cluster.

        New executors get the next slot numbers, in a new placement group, and are used by
        calls submitted from then on; on an autoscaling cluster this waits (up to
        ``timeout_s``) for the nodes to arrive. Removed executors (newest slots first) get no
        new work, are killed once their outstanding replicas answered, and are never
        respawned; replicated instances they held are repaired on the others.

        Args:
            executors: Executors in service afterwards.
            faults: Fault injection for new slots, slot index -> behaviour (chaos tests).
            timeout_s: How long to wait for the new executors' resources.

        Example:
            >>> cluster.scale(executors=8)  # doctest: +SKIP
            BftCluster('default', executors=8, ...)
        """
        admin = self._need_owner("scale")
        if not isinstance(executors, int) or executors < 1:
            raise ConfigError(f"executors={executors!r}: the pool needs at least one executor")
        faults = dict(faults or {})
        for index, fault in faults.items():
            if index < self.spec.executors:
                raise ConfigError(
                    f"faults[{index}]: slot {index} already exists; use inject_fault for it"
                )
            fault_lib.resolve(fault)
        result = ray.get(self._verifier.scale.remote(admin, executors, faults, timeout_s))
        for actor_id in result["executor_actor_ids"]:
            guard.guard_actor(bytes.fromhex(actor_id))
        self.spec = self.spec.model_copy(update={"executors": result["executors"]})
        logger.info("bft-ray pool now has %d executors", result["executors"])
        return self

    def flags(self, executor_id: str) -> list:
        """Flags raised against an executor, each with its signed evidence."""
        return ray.get(self._verifier.flags.remote(executor_id))

    def trust_report(self) -> dict[str, Any]:
        """Credit accounts, standing and earned trust per executor, and the tainted results.

        JSON-ready (``json.dump(cluster.trust_report(), f)``; :meth:`export_trust` does it).

        Example:
            >>> acct = cluster.trust_report()["executors"][0]  # doctest: +SKIP
            >>> acct["balance"], acct["status"]  # doctest: +SKIP
            (41.0, 'active')

        In BFT mode this is the committed standing (:meth:`committed_standing`): the state
        at least ``f + 1`` verifiers hold, derived from committed verdicts and operator
        records only, with ``agreed_by`` (the verifiers that hold it), ``digest``, ``f`` and
        ``others`` (why the rest do not count). It raises
        :class:`~bft_ray.errors.TrustStateError` if fewer than ``f + 1`` agree.
        """
        if self.spec.verifiers > 1:
            return committed_trust_report(self.committed_standing())
        return ray.get(self._verifier.trust_report.remote())

    def export_trust(self, path: str) -> str:
        """Write :meth:`trust_report` to ``path`` as JSON; returns the path."""
        import json

        with open(path, "w") as fh:
            json.dump(self.trust_report(), fh, indent=2)
        return path

    def tainted(self) -> list[dict[str, Any]]:
        """Results accepted from one executor without an audit whose executor was later
        proven wrong: ``executor``, ``task_id``, ``function``, ``digest``, ``rerunnable``."""
        return ray.get(self._verifier.tainted.remote())

    def reverify_tainted(self) -> list[dict[str, Any]]:
        """Re-run every tainted result with full replication on other executors (owner only).

        Returns one row per result, with ``changed`` True where the re-verified value differs
        from the one that was accepted alone (``None`` and ``error`` if it could not be
        re-verified). Re-verified results leave the tainted list.
        """
        admin = self._need_owner("reverify_tainted")
        return ray.get(self._verifier.reverify_tainted.remote(admin))

    def reinstate(self, executor_id: str) -> str:
        """Put a quarantined, banned or suspect executor back in service (owner only).

        Its earned trust is not restored: it is replicated until it earns trust again. In
        BFT mode this is a committed operator record (signed by the dispatcher, applied by
        every verifier in commit order); it returns the committed status.
        """
        admin = self._need_owner("reinstate")
        return ray.get(self._verifier.reinstate.remote(admin, executor_id))

    def ban(self, executor_id: str) -> str:
        """Give an executor no more work, not even canaries, until reinstated (owner only).

        In BFT mode this is a committed operator record; it returns once ``f + 1`` verifiers
        committed it, and the dispatcher sends the executor no call dispatched after that.
        """
        admin = self._need_owner("ban")
        return ray.get(self._verifier.ban.remote(admin, executor_id))

    def _put(self, obj: Any) -> tuple[ObjectRef, FunctionId]:
        # Functions and classes are stored (and identified) once per cluster, not once per call.
        key = id(obj)
        hit = self._put_cache.get(key)
        if hit is None or hit[0] is not obj:
            hit = (obj, ray.put(obj), _function_id(obj))
            self._put_cache[key] = hit
        return hit[1], hit[2]

    def _function_key(self, fn: Any) -> tuple[str, FunctionId]:
        """The key under which the verifier holds ``fn``, registering it on first use.

        Calls then carry only the key: a nested object ref in every call would make the
        verifier a borrower of it each time (reference-counting messages per call).
        """
        ref, fn_id = self._put(fn)
        key = ref.hex()
        if key not in self._registered:
            ray.get(self._verifier.register_function.remote(key, [ref]))
            self._registered.add(key)
        return key, fn_id

    def shutdown(self) -> None:
        """Stop the verifier and executors (and Ray, if :func:`init` started it).

        In a process that attached to the cluster this only detaches: the cluster keeps running
        for its owner.
        """
        global _cluster
        if self.closed:
            return
        self.closed = True
        self._submitter.close()  # queued calls reach the verifier first
        if not self.owner:
            with _lock:
                if _cluster is self:
                    _cluster = None
            return
        try:
            ray.get(self._verifier.shutdown.remote(self._admin), timeout=30)
        except Exception as exc:
            logger.debug("verifier shutdown: %s", exc)
        for h in self._group:
            try:
                ray.get(h.shutdown.remote(), timeout=10)
            except Exception:
                pass
            try:
                ray.kill(h, no_restart=True)
            except Exception:
                pass
        for actor in (self._verifier, self._desk):
            try:
                if actor is not None:
                    ray.kill(actor, no_restart=True)
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
        role = "owner" if self.owner else "attached"
        return (
            f"BftCluster({self.name!r}, executors={self.spec.executors}, "
            f"verifiers={self.spec.verifiers}, {role}, closed={self.closed})"
        )


def init(
    executors: int | None = None,
    verifiers: int = 1,
    faults: dict[int, Any] | None = None,
    address: str | None = None,
    *,
    name: str = "default",
    ready_timeout_s: float = 300.0,
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
    verifier_faults: dict[int, str] | None = None,
    ledger_dir: str | None = None,
    executor_groups: dict[int, str] | None = None,
    trust_path: str | None = None,
    prices: dict[str, float] | None = None,
    readmit_after: int = 5,
    canary_rate: float = 0.0,
    canary_interval_s: float = 2.0,
    release: str = "certified",
    certify_timeout_s: float = 120.0,
    **ray_init_kwargs: Any,
) -> BftCluster:
    """Start or join Ray, then create a bft-ray cluster or attach to the one running.

    If a bft-ray cluster named ``name`` already runs in the Ray cluster (started by another
    driver, or by this job's driver when called from a Ray task or actor), this attaches to it:
    verified calls, reports and certificates work, steering executors does not. Otherwise it
    places the executors and starts the verifier, registered as ``name`` in the ``bft_ray``
    namespace.

    Args:
        executors: Number of untrusted executor actors (default 4 for a new cluster; when
            attaching, leave it unset or give the running cluster's size).
        verifiers: ``1`` for the trusted-verifier mode (the driver's verifier decides), or
            ``n = 3f + 1 >= 4`` for a BFT verifier group: every verdict is then rechecked by each
            verifier, agreed through HotStuff rounds and certified by ``2f + 1`` of them.
        faults: Fault injection, executor index -> behaviour (see :mod:`bft_ray.faults`).
        address: Ray address to join. ``None`` joins ``RAY_ADDRESS`` if set (as under
            ``ray job submit``) or an already initialised Ray, else starts a local Ray.
        name: Name of the bft-ray cluster in the Ray cluster (several can coexist).
        ready_timeout_s: On a joined cluster, how long to wait for the executors' resources
            (an autoscaler may still be adding the GPU nodes), with a progress line every 10 s.
            A local Ray started here cannot grow, so a shortfall fails at once.
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
        verifier_faults: BFT mode: Byzantine behaviour per verifier index, for tests and demos
            (names in :data:`bft_ray.faults.VERIFIER_FAULTS`).
        ledger_dir: BFT mode: where each verifier keeps its key and SQLite ledger (one file per
            verifier; audit them with ``bft-ray audit DIR``). Default: a new temporary directory.
        executor_groups: Owner or collusion group per executor index: replicas (and audits)
            of one call never run on two executors of the same group.
        trust_path: File where the trust state (earned trust, credit, standing, taint, drift)
            is kept; loaded at start if it exists, saved as it changes. Default: in memory.
        prices: Credit prices: ``reward`` per credited result, ``stake`` per proven wrong
            result, ``crash_penalty`` per crash or stall (:class:`bft_ray.trust.Prices`).
        readmit_after: Correct canary tasks in a row that re-admit a quarantined executor.
        canary_rate: Fraction of verified calls after which a known-answer canary (a replay of
            a certified call) is sent to one executor that did not run it.
        canary_interval_s: Seconds between canary rounds for quarantined executors.
        release: BFT mode: when a verified call's value is returned. ``"certified"`` (the
            default): only with its certificate, once ``2f + 1`` verifiers committed the
            verdict (about two consensus rounds after it is decided). ``"verdict"``: as soon as
            the dispatcher's own verdict is decided, at the trusted mode's latency, while the
            group commits it; ``bft_ray.certificate(ref)`` then waits for the certificate and
            raises :class:`~bft_ray.errors.VerificationError` if the group did not certify it
            (``cluster.report().counters["uncertified"]`` counts those). See ``docs/bft.md``.
        certify_timeout_s: BFT mode: how long a verdict may wait for the group's certificate
            before the call (with ``release="verdict"``: its certificate) fails.
        **ray_init_kwargs: Passed to ``ray.init`` when bft-ray starts or joins Ray.

    Returns:
        The :class:`BftCluster` handle.

    Raises:
        ConfigError: For an invalid spec (unknown fault names, indices outside the pool, a
            cluster that cannot hold the executors, ...), before anything is started.
    """
    global _cluster
    with _lock:
        attached = _cluster if _cluster is not None and not _cluster.owner else None
    if attached is not None and not attached.closed:
        # A Ray worker is reused across tasks: one that attached for an earlier task (to a
        # cluster that may be gone by now) attaches afresh. Detaching frees nothing.
        attached.shutdown()
    with _lock:
        if _cluster is not None and not _cluster.closed:
            raise ConfigError(
                "bft_ray.init() was already called in this process; call bft_ray.shutdown() "
                "(or cluster.shutdown()) before initialising again."
            )
    spec = validated(
        ClusterSpec,
        executors=_DEFAULT_EXECUTORS if executors is None else executors,
        verifiers=verifiers,
        gpus_per_executor=gpus_per_executor,
        cpus_per_executor=cpus_per_executor,
        faults=dict(faults or {}),
        address=address,
        executor_options=dict(executor_options or {}),
        quarantine_below=quarantine_below,
        quarantine_min_tasks=quarantine_min_tasks,
        verifier_faults=dict(verifier_faults or {}),
        ledger_dir=ledger_dir,
        executor_groups=dict(executor_groups or {}),
        trust_path=trust_path,
        prices=dict(prices or {}),
        readmit_after=readmit_after,
        canary_rate=canary_rate,
        canary_interval_s=canary_interval_s,
        release=release,
        certify_timeout_s=certify_timeout_s,
    )
    for v_fault in spec.verifier_faults.values():
        fault_lib.resolve_verifier_fault(v_fault)
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
                address="local",  # a new local Ray, never one found on the machine
                num_cpus=cpus,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory or 1 << 30,
                **ray_init_kwargs,
            )
        started = True
    if inside_executor():
        raise ConfigError(
            "bft_ray.init() was called from inside a verified function; executors are "
            "untrusted and cannot host or steer a bft-ray cluster."
        )
    attached = _attach(name)
    if attached is not None:
        if executors is not None and executors != attached.spec.executors:
            raise ConfigError(
                f"a bft-ray cluster named {name!r} already runs with "
                f"{attached.spec.executors} executors; attach without executors=, or start "
                "another one with bft_ray.init(name=...)."
            )
        if faults:
            raise ConfigError(
                f"a bft-ray cluster named {name!r} already runs; faults are set by its owner "
                "(cluster.inject_fault). Attach without faults=, or use another name=."
            )
        with _lock:
            _cluster = attached
        logger.info("attached to bft-ray cluster %r (%d executors)", name, attached.executors)
        return attached
    try:
        setup = create_pool(
            spec,
            seed=seed,
            max_respawns=max_respawns,
            master=os.urandom(32),
            placement_timeout_s=60.0 if started else ready_timeout_s,
            wait_for_resources=not started,
        )
    except BaseException:
        if started:
            ray.shutdown()  # leave nothing running behind a failed init
        raise
    # The verifier is trusted: keep it on the driver's node (the head under `ray job submit`),
    # never on an untrusted executor node, whose loss would also take the verifier with it.
    on_driver_node = NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False
    )

    def trusted_actor(cls: type, actor_name: str, concurrency: int) -> Any:
        return ray.remote(public_actor(cls)).options(
            num_cpus=0,
            max_restarts=0,
            max_concurrency=concurrency,
            scheduling_strategy=on_driver_node,
            name=actor_name,
            namespace=NAMESPACE,
        )

    verifier = trusted_actor(TrustedVerifier, _actor_name(name), 10_000).remote(
        setup,
        quarantine=QuarantinePolicy(
            below=spec.quarantine_below,
            min_tasks=spec.quarantine_min_tasks,
            keep=spec.executors // 2 + 1,
        ),
        keep_certificates=keep_certificates,
        spec=spec,
    )
    # Hands out the values of calls the driver sends in batches (see bft_ray.submission).
    desk = trusted_actor(ResultDesk, _desk_name(name), 100_000).remote(
        verifier, desk_capability(setup.master)
    )
    group: list[Any] = []
    keys: list[bytes] | None = None
    if spec.verifiers > 1:
        try:
            group, keys = _start_group(spec, name, verifier, admin_capability(setup.master))
        except BaseException:
            ray.kill(verifier, no_restart=True)
            ray.kill(desk, no_restart=True)
            if started:
                ray.shutdown()
            raise
    ray.get(desk.start.remote(), timeout=120)
    cluster = BftCluster(
        spec,
        verifier,
        started,
        setup,
        name=name,
        keep=keep_certificates,
        verifier_keys=keys,
        desk=desk,
    )
    cluster._group = group
    with _lock:
        _cluster = cluster
    mode = f"BFT group of {spec.verifiers} verifiers" if group else "trusted verifier"
    logger.info("bft-ray ready: %d executors, %s", spec.executors, mode)
    return cluster


def _start_group(
    spec: ClusterSpec, name: str, dispatcher: Any, admin: bytes
) -> tuple[list[Any], list[bytes]]:
    """Start the BFT verifier actors, exchange their keys, and hand them to the dispatcher."""
    n = spec.verifiers
    ledger_dir = spec.ledger_dir or tempfile.mkdtemp(prefix=f"bft-ray-{name}-ledgers-")
    dispatcher_key = ray.get(dispatcher.public_key.remote())
    # Verifiers go on distinct nodes where the cluster offers a `verifier` resource (one per
    # verifier node), else they are spread by Ray.
    placed = ray.cluster_resources().get("verifier", 0) >= n
    # The same standing rules (prices, quarantine, owner groups) on every verifier, or their
    # committed standing would differ.
    rules = TrustRules.from_spec(spec)
    handles = []
    for i in range(n):
        fault = spec.verifier_faults.get(i)
        options: dict[str, Any] = dict(
            num_cpus=0,
            name=group_actor_name(name, i),
            namespace=NAMESPACE,
            # A restarted verifier recovers from its ledger; an injected crash stays down.
            max_restarts=0 if fault == "crash" else 3,
            max_task_retries=0,
        )
        if placed:
            options["resources"] = {"verifier": 1}
        else:
            options["scheduling_strategy"] = "SPREAD"
        setup = GroupSetup(
            name,
            i,
            n,
            dispatcher_key,
            ledger_dir,
            fault,
            admin_digest=blake3.blake3(admin).digest(),
            rules=rules,
        )
        handles.append(ray.remote(public_actor(BftVerifier)).options(**options).remote(setup))
    keys = ray.get([h.public_key.remote() for h in handles], timeout=120)
    ray.get([h.start.remote(keys) for h in handles], timeout=120)
    # Attaching registers every executor with every verifier (up to 20 s for one that stalls).
    ray.get(
        dispatcher.attach_group.remote(
            admin, handles, keys, timeout_s=spec.certify_timeout_s, release=spec.release
        ),
        timeout=180,
    )
    logger.info("bft-ray verifier group: n=%d, f=%d, ledgers in %s", n, (n - 1) // 3, ledger_dir)
    return handles, keys


class _Missing:
    """Stands for a verifier actor that cannot be found (its status reports the error)."""

    def __init__(self, index: int) -> None:
        self.index = index

    @property
    def status(self) -> Any:
        raise ValueError(f"verifier {self.index} is not running")


def _actor_name(name: str) -> str:
    return f"verifier:{name}"


def _desk_name(name: str) -> str:
    return f"results:{name}"


def _attach(name: str) -> BftCluster | None:
    """An attached handle to the running bft-ray cluster ``name``, or ``None`` if none runs."""
    try:
        verifier = ray.get_actor(_actor_name(name), namespace=NAMESPACE)
    except ValueError:
        return None
    info = ray.get(verifier.describe.remote(), timeout=120)
    guard.install()
    for actor_id in info["executor_actor_ids"]:
        guard.guard_actor(bytes.fromhex(actor_id))
    try:
        desk = ray.get_actor(_desk_name(name), namespace=NAMESPACE)
    except ValueError:
        desk = None  # every call of this process then goes direct
    return BftCluster(
        info["spec"],
        verifier,
        False,
        None,
        name=name,
        verifier_keys=info["verifier_keys"],
        desk=desk,
    )


def current_cluster() -> BftCluster:
    """The cluster of this process: the one :func:`init` returned, or the one running.

    In a process that never called :func:`init` but is connected to Ray (a plain Ray task or
    actor, a Serve replica), this attaches to the cluster named ``default``.
    """
    global _cluster
    if (_cluster is None or _cluster.closed) and ray.is_initialized() and not inside_executor():
        attached = _attach("default")
        if attached is not None:
            with _lock:
                if _cluster is None or _cluster.closed:
                    _cluster = attached
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
#
# ``.remote()`` returns plain ``ray.ObjectRef``s: the refs of the verifier's task that decides
# the call. They resolve only after the verdict, to the value decoded from the certified bytes,
# so ``ray.get``, ``ray.wait``, ``await`` and plain Ray tasks all consume verified data with no
# bft-ray wrapper in the way. A ref names its call through its Ray task id, which the verifier
# maps to the bft-ray task id; that is how ``certificate(ref)`` and ``task_id(ref)`` find it,
# from any process of the cluster.


def _unwrap(exc: BaseException) -> BaseException:
    """Surface bft-ray errors as themselves rather than wrapped in a RayTaskError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BftRayError):
        return cause
    return exc


def _refs_of(refs: Any) -> tuple[list[ObjectRef], bool]:
    single = isinstance(refs, ObjectRef)
    items = [refs] if single else list(refs) if isinstance(refs, list | tuple) else [refs]
    for r in items:
        if not isinstance(r, ObjectRef):
            raise TypeError(
                f"expected an ObjectRef (what .remote() returns) or a list of them, got "
                f"{type(r).__qualname__}"
            )
    return items, single


@overload
def get(refs: ObjectRef, *, timeout: float | None = None, progress: bool | str = False) -> Any: ...
@overload
def get(
    refs: Sequence[ObjectRef], *, timeout: float | None = None, progress: bool | str = False
) -> list[Any]: ...


def get(refs: Any, *, timeout: float | None = None, progress: bool | str = False) -> Any:
    """Like ``ray.get``, with bft-ray errors raised as themselves.

    ``ray.get`` works on verified refs too; this raises ``NoQuorumError`` and friends
    unwrapped, and on a timeout says where each pending call stands (waiting for its
    arguments, queued on an executor, running).

    Args:
        refs: A ref returned by a verified call, or a list of them (any ObjectRef works).
        timeout: Seconds to wait; ``None`` waits forever.
        progress: ``True``, or a description, to show a progress bar (``rich``, on stderr) of
            the refs done so far. Values are then fetched as their refs complete, and the
            first failed one (in completion order) raises at once.

    Raises:
        NoQuorumError: Replicas disagreed beyond the tolerance and escalation did not help.
        ExecutorUnavailableError: Too few live executors.
        VerificationTimeoutError: ``timeout`` passed first (also a Ray ``GetTimeoutError``).

    Example:
        >>> value = bft_ray.get(square.remote(3), timeout=60)  # doctest: +SKIP
        >>> values = bft_ray.get(refs, progress="training steps")  # doctest: +SKIP
    """
    object_refs, single = _refs_of(refs)
    try:
        if progress:
            desc = progress if isinstance(progress, str) else "verified calls"
            values = _get_with_progress(object_refs, timeout, desc)
        else:
            values = ray.get(object_refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise VerificationTimeoutError(
            f"verified result not ready within {timeout}s. {_pending_phases(object_refs)}"
            "Raise the timeout, or check cluster.report() for stalled executors."
        ) from None
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap(exc) from None
    return values[0] if single else values


def _get_with_progress(refs: list[ObjectRef], timeout: float | None, desc: str) -> list[Any]:
    """``ray.get(refs, timeout=timeout)`` with a progress bar advancing as refs complete.

    Raises ``GetTimeoutError`` (and the refs' own errors) as ``ray.get`` does.
    """
    from bft_ray.progress import progress_bar

    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    pending = list(dict.fromkeys(refs))  # ray.wait refuses duplicates
    values: dict[ObjectRef, Any] = {}
    with progress_bar(desc, total=len(pending)) as bar:
        while pending:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not ready:
                raise ray.exceptions.GetTimeoutError(
                    f"Get timed out: {len(pending)} of {len(values) + len(pending)} not ready"
                )
            if pending:  # everything else already done leaves with it
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            values.update(zip(ready, ray.get(ready, timeout=left)))
            bar.advance(len(ready))
    return [values[r] for r in refs]


def _pending_phases(refs: list[ObjectRef], limit: int = 3) -> str:
    """A sentence on where the first pending calls stand (best effort, never raises)."""
    try:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        cluster = _cluster if _cluster is not None and not _cluster.closed else None
        if not pending or cluster is None:
            return ""
        tasks = list(dict.fromkeys(r.task_id().hex() for r in pending))
        mine = [cluster._task_ids.get(t) for t in tasks[:limit]]  # this process's own calls
        phases = ray.get(cluster._verifier.phases.remote(tasks[:limit], mine), timeout=10)
        ids = ray.get(cluster._verifier.task_ids.remote(tasks[:limit]), timeout=10)
        ids = [m or i for m, i in zip(mine, ids)]
        lines = "; ".join(f"{tid or '?'}: {ph}" for tid, ph in zip(ids, phases))
        more = f" (and {len(tasks) - limit} more)" if len(tasks) > limit else ""
        return f"{len(tasks)} call(s) pending{more}: {lines}. "
    except Exception:
        return ""


def wait(
    refs: Any,
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Like ``ray.wait`` (which also works on verified refs): split refs into ready and pending.

    Args:
        refs: A list of refs from verified calls (plain ObjectRefs may be mixed in), or one.
        num_returns: How many ready refs to wait for.
        timeout: Seconds to wait at most; ``None`` waits for ``num_returns``.
        fetch_local: As in ``ray.wait``: also wait until the values are local.

    Returns:
        ``(ready, pending)``, each a list of the refs given, in their order.

    Example:
        >>> ready, pending = bft_ray.wait(refs, num_returns=2, timeout=10)  # doctest: +SKIP
    """
    items, _ = _refs_of(refs)
    if len(set(items)) != len(items):
        raise ValueError("wait() got the same ref twice")
    ready, _ = ray.wait(items, num_returns=num_returns, timeout=timeout, fetch_local=fetch_local)
    ready_set = set(ready)
    return [r for r in items if r in ready_set], [r for r in items if r not in ready_set]


def task_id(ref: ObjectRef) -> str:
    """The bft-ray task id of the verified call that returned ``ref``.

    It names the call in certificates, flags, errors and reports. Known at once in the process
    that submitted the call; elsewhere it is asked from the verifier.

    Example:
        >>> tid = bft_ray.task_id(ref)  # doctest: +SKIP
        >>> bft_ray.verify_certificate(cert, keys, task_id=tid)  # doctest: +SKIP
        True
    """
    (ref,), _ = _refs_of(ref)
    cluster = current_cluster()
    ray_task = ref.task_id().hex()
    known = cluster._task_ids.get(ray_task)
    if known is None:
        known = ray.get(cluster._verifier.task_ids.remote([ray_task]))[0]
    if known is None:
        raise ValueError(f"{ref} is not the result of a verified call known to this cluster")
    return known


def certificate(ref: ObjectRef, *, timeout: float | None = None) -> Certificate:
    """The :class:`Certificate` of a verified call (blocks until the verdict).

    In BFT mode with ``bft_ray.init(release="verdict")`` the value is returned before the group
    has certified it; this then also waits for the group's certificate.

    Raises:
        The call's verification error, if it failed (with ``release="verdict"``, also a
        :class:`~bft_ray.errors.VerificationError` if the group did not certify a value that
        was returned), or :class:`~bft_ray.errors.VerificationTimeoutError` after ``timeout``.
    """
    (ref,), _ = _refs_of(ref)
    cluster = current_cluster()
    deadline = None if timeout is None else time.monotonic() + timeout
    # The verdict is stored before the value is returned: wait for the value, then ask.
    ready, _ = ray.wait([ref], timeout=timeout, fetch_local=False)
    if not ready:
        raise VerificationTimeoutError(f"certificate not ready within {timeout}s")
    ray_task = ref.task_id().hex()
    asked = cluster._verifier.certificate.remote(cluster._task_ids.get(ray_task), ray_task)
    # At least a moment for the lookup itself, even if waiting for the value used the budget.
    left = None if deadline is None else max(0.5, deadline - time.monotonic())
    try:
        status, payload = ray.get(asked, timeout=left)
    except ray.exceptions.GetTimeoutError:
        raise VerificationTimeoutError(
            f"certificate not ready within {timeout}s: the verifier did not answer in time "
            "(with release='verdict', the group may still be certifying the value)"
        ) from None
    if status == "error":
        exc = _unwrap(payload)
        if isinstance(exc, ray.exceptions.RayTaskError):
            exc = exc.as_instanceof_cause()  # also the user's exception type, as ray.get raises
        raise exc
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
    num_returns = ray_options.get("num_returns", 1)
    if not isinstance(num_returns, int) or isinstance(num_returns, bool) or num_returns < 1:
        raise ConfigError(
            f"num_returns={num_returns!r}: verified calls return a fixed number of refs (an int "
            ">= 1); streaming ('streaming', 'dynamic') is not verified. Return a list instead."
        )
    unsupported = sorted(set(ray_options) - _RESOURCE_OPTIONS - _CALL_OPTIONS - _RETURN_OPTIONS)
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


def _refuse_generator(fn: Any, what: str) -> None:
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigError(
            f"{what} is a generator function. Replicas are compared on one complete output, "
            "so streamed results are not verified: return a list (e.g. `return list(...)`), "
            "or split the work into several verified calls."
        )


class VerifiedFunction:
    """A function whose calls are replicated on untrusted executors and verified.

    Created by :func:`verified_remote`. Call :meth:`remote` to submit; calling it directly is an
    error, as with Ray remote functions. ``async def`` functions are verified like plain ones
    (each executor runs the coroutine to completion); generator functions are refused.
    """

    def __init__(self, fn: Any, options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = dict(options)
        _refuse_generator(fn, getattr(fn, "__qualname__", repr(fn)))
        options = dict(options)
        self.plan = plan_from(options.pop("policy", None))
        checker = getattr(self.plan, "checker", None)
        self._checker = CheckerCall(checker) if checker is not None else None
        ours, theirs = _split_options(options)
        self.policy = _policy(ours)
        self._call_options = _check_ray_options(fn, theirs)
        self._ray_options = theirs
        self.num_returns = int(theirs.get("num_returns", 1))
        self.__name__ = getattr(fn, "__name__", "function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        if _cluster is not None and not _cluster.closed:
            _check_fits(self.policy, theirs, _cluster, self.__qualname__)

    def options(self, **options: Any) -> VerifiedFunction:
        """A copy with some options overridden (ours and Ray's), validated at once."""
        return VerifiedFunction(self._fn, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a verified call; returns at once with a ``ray.ObjectRef`` of the value.

        With ``num_returns=n`` (n > 1) it returns a list of n refs, one per item of the tuple
        the function returns (the certificate covers the whole tuple).
        """
        _refuse_nested(f"{self.__qualname__}.remote()")
        cluster = current_cluster()
        _check_fits(self.policy, self._ray_options, cluster, self.__qualname__)
        fn_key, fn_id = cluster._function_key(self._fn)
        plan, checker_key = None, None
        if not isinstance(self.plan, Replicate):
            if cluster.spec.verifiers > 1:
                raise ConfigError(
                    f"{self.__qualname__}: policy={self.plan.describe()} runs in the trusted "
                    "mode (verifiers=1) only: a spot check's audit coin must be secret and "
                    "unpredictable, and a group of verifiers that do not trust each other "
                    "would need a shared random coin to draw it, which bft-ray does not have. "
                    "The BFT group replicates every call. Use policy='replicate' or "
                    "bft_ray.init(verifiers=1)."
                )
            plan = self.plan
            if self._checker is not None:
                checker_key, _ = cluster._function_key(self._checker)
        a, kw = _prepare_args(args, kwargs)
        task_id = _new_task_id(self.__name__)
        meta = CallMeta(task_id, self.__qualname__, fn_id, _args_digest(a, kw))
        call = CallSpec(
            task_id,
            self.__qualname__,
            self.policy,
            self._call_options,
            meta,
            self.num_returns,
            plan,
            checker_key,
        )
        refs = cluster._submitter.submit(call, fn_key, a, kw)
        first = refs[0] if isinstance(refs, list) else refs
        cluster._remember(first.task_id().hex(), task_id)
        return refs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Verified functions cannot be called directly. Instead of running '{self.__name__}()', "
            f"try '{self.__name__}.remote()'."
        )

    def __repr__(self) -> str:
        return f"VerifiedFunction({self.__qualname__}, {self.policy!r}, {self.plan.describe()})"


class VerifiedClass:
    """A class whose instances are replicated on ``replicas`` executors; method calls are verified."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = dict(options)
        options = dict(options)
        if not isinstance(plan_from(options.pop("policy", None)), Replicate):
            raise ConfigError(
                f"{cls.__qualname__}: replicated instances keep state on every replica, so "
                "their calls cannot be spot-checked; use policy='replicate' (the default) or "
                "make the method a stateless verified function."
            )
        ours, theirs = _split_options(options)
        self.policy = _policy(ours)
        self._call_options = _check_ray_options(cls, theirs)
        if "num_returns" in theirs:
            raise ConfigError(
                f"{cls.__qualname__}: num_returns applies to methods; decorate the method with "
                "@ray.method(num_returns=n)."
            )
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
        close_token = os.urandom(16)
        ready = cluster._verifier.create_instance.remote(call, [cls_ref], a, kw, close_token)
        cluster._remember(ready.task_id().hex(), task_id)
        return VerifiedActorHandle(cluster, self._cls, call, ready, close_token)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Verified classes cannot be instantiated directly. Instead of '{self.__name__}()', "
            f"use '{self.__name__}.remote()'."
        )


class VerifiedActorHandle:
    """Handle to a replicated instance. ``handle.method.remote(...)`` returns an ``ObjectRef``.

    Calls from one handle run in submission order on every replica, so deterministic state
    stays identical across honest replicas. A replica whose answer disagrees has a diverged
    state and is never asked again; when fewer than ``quorum`` healthy replicas remain, calls
    fail with :class:`~bft_ray.errors.ExecutorUnavailableError`.

    :meth:`close` frees the replicas and the call log, as does dropping the last reference to
    the handle. A handle stays in the process that created the instance (it cannot be pickled
    into a Ray task: the ordering of calls lives in it); pass results instead.
    """

    def __init__(
        self,
        cluster: BftCluster,
        cls: type,
        call: CallSpec,
        ready: ObjectRef,
        close_token: bytes | None = None,
    ) -> None:
        self._cluster = cluster
        self._cls = cls
        self._call = call
        self._ready = ready
        self._close_token = close_token
        self._seq = itertools.count()
        self._seq_lock = threading.Lock()
        self.instance_id = call.task_id
        self.closed = False

    def holders(self, timeout: float | None = None) -> list[str]:
        """Executor ids holding healthy replicas now (blocks until the instance is created).

        Replicas that crashed or diverged are replaced by new ones that replay the call log.
        """
        return self.info(timeout)["holders"]

    def certificate(self, timeout: float | None = None) -> Certificate:
        """The certificate of the constructor's verdict (blocks until the instance is created).

        The constructor is verified like a call: its replicas' answers (``None``) agreed under
        the instance's policy. In BFT mode the verifier group committed that verdict, so the
        certificate carries ``2f + 1`` verifier signatures and its commit proof.

        Example:
            >>> acc = Accumulator.remote(0)  # doctest: +SKIP
            >>> bft_ray.verify_certificate(acc.certificate(), cluster.verifier_keys())  # doctest: +SKIP

        Raises:
            The constructor's error, if it failed.
        """
        return certificate(self._ready, timeout=timeout)

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        """Holders and the number of replicas rebuilt so far (``repairs``)."""
        try:
            return ray.get(
                self._cluster._verifier.instance_info.remote(self.instance_id),
                timeout=timeout,
            )
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None

    def close(self, wait: bool = True) -> None:
        """Free the instance: its replicas on the executors and its call log.

        Calls already submitted finish; calls submitted afterwards fail. Idempotent.
        """
        if self.closed:
            return
        self.closed = True
        cluster = self._cluster
        if cluster.closed or self._close_token is None or not ray.is_initialized():
            return
        ref = cluster._verifier.drop_instance.remote(self._close_token, self.instance_id)
        if wait:
            ray.get(ref)

    def __del__(self) -> None:
        # Dropping the last reference frees the instance, like a Ray actor handle.
        try:
            self.close(wait=False)
        except Exception:
            pass

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a verified instance handle ({self._cls.__qualname__}) cannot be passed to another "
            "process: the order of its calls lives in this handle. Create the instance where it "
            "is used, or pass the results of its calls."
        )

    def __getattr__(self, name: str) -> _VerifiedMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._cls, name, None)
        if attr is None or not callable(attr):
            raise AttributeError(f"{self._cls.__qualname__} has no method {name!r}")
        _refuse_generator(attr, f"{self._cls.__qualname__}.{name}")
        return _VerifiedMethod(self, name, int(getattr(attr, "__ray_num_returns__", None) or 1))

    def _submit(self, method: str, args: tuple, kwargs: dict, num_returns: int) -> Any:
        cluster = self._cluster
        _refuse_nested(f"{self._call.name}.{method}.remote()")
        if self.closed:
            raise ConfigError(f"{self._call.name}: the instance was closed; create a new one.")
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
            call = dataclasses.replace(
                self._call, task_id=task_id, name=name, meta=meta, num_returns=num_returns
            )
            submit = cluster._verifier.call_method
            if num_returns != 1:
                submit = submit.options(num_returns=num_returns)
            refs = submit.remote(call, self.instance_id, seq, method, a, kw)
        first = refs[0] if isinstance(refs, list) else refs
        cluster._remember(first.task_id().hex(), task_id)
        return refs

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return (
            f"VerifiedActorHandle({self._cls.__qualname__}, instance_id={self.instance_id!r}"
            f"{state})"
        )


class _VerifiedMethod:
    def __init__(self, handle: VerifiedActorHandle, name: str, num_returns: int = 1) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._submit(self._name, args, kwargs, self._num_returns)

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
