"""Invariant checker: the safety properties of DESIGN.md section 6, checked on every event.

The simulator reports what each replica persists, sends and commits; the checker verifies, with
its own certificate verifier (independent of the replicas'):

* ``conflicting_commit``: two replicas committed different blocks at the same height;
* ``log_not_chain``: a replica's commit log did not grow by a child of its last block;
* ``double_vote``: an honest key signed votes for two different blocks in one round;
* ``vote_after_timeout``: an honest key voted in a round it had already timed out of;
* ``safety_regressed``: a persisted safety round decreased;
* ``bad_certificate``: an honest replica sent a QC/TC without ``2f + 1`` distinct valid signers;
* ``commit_rule``: a commit whose proof does not satisfy the commit rule;
* ``proposal_not_from_leader``: an honest replica proposed in a round it does not lead;
* ``core_safety_violation``: a replica's own defensive check fired (conflicting commit target).

Example:
    >>> Violation("double_vote", 1, 10, "key 1 round 3").kind
    'double_vote'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from bft_ray.consensus.blocktree import CommittedBlock, verify_commit_proof
from bft_ray.consensus.config import CommitRule
from bft_ray.consensus.crypto import CertificateVerifier, SignatureVerifier, ValidatorSet
from bft_ray.consensus.leader import LeaderElection
from bft_ray.consensus.safety import SafetyData
from bft_ray.consensus.types import (
    Message,
    Proposal,
    QuorumCert,
    Timeout,
    TimeoutCert,
    Vote,
    genesis_block,
)

__all__ = ["SAFETY_KINDS", "InvariantChecker", "Violation"]

#: Violation kinds that are genuine safety failures between replicas (not proof-format checks).
SAFETY_KINDS = frozenset({"conflicting_commit", "log_not_chain", "core_safety_violation"})


@dataclass(frozen=True)
class Violation:
    """One broken invariant.

    Attributes:
        kind: Which invariant (see module docs).
        instance: Simulated instance involved, if any.
        time: Simulation tick.
        detail: Human-readable description.
    """

    kind: str
    instance: int | None
    time: int
    detail: str

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return asdict(self)


class InvariantChecker:
    """Accumulates :class:`Violation` objects from simulator callbacks.

    Args:
        validators: The replica set.
        verifier: Signature checker (independent instance from the replicas').
        rule: The commit rule under test.
        leaders: The leader election the replicas use.
        honest_keys: Keys whose every signature comes from one correct replica (not Byzantine,
            not twinned); vote invariants are checked for these only.
        check_commit_proofs: Check each commit's proof against the rule.
    """

    def __init__(
        self,
        validators: ValidatorSet,
        verifier: SignatureVerifier,
        rule: CommitRule,
        leaders: LeaderElection,
        honest_keys: Iterable[int],
        *,
        check_commit_proofs: bool = True,
    ) -> None:
        self._certs = CertificateVerifier(validators, verifier, cache_size=1 << 16)
        self._rule = CommitRule(rule)
        self._leaders = leaders
        self._honest = frozenset(honest_keys)
        self._check_proofs = check_commit_proofs
        self._votes: dict[tuple[int, int], bytes] = {}
        self._timed_out: dict[tuple[int, int], None] = {}
        self._persisted: dict[int, SafetyData] = {}
        self.logs: dict[int, list[bytes]] = {}
        self._canon: list[bytes] = []
        self.violations: list[Violation] = []
        self._genesis = genesis_block().id

    def _add(self, kind: str, instance: int | None, time: int, detail: str) -> None:
        self.violations.append(Violation(kind, instance, time, detail))

    def _check_cert(self, inst: int, time: int, cert: QuorumCert | TimeoutCert | None) -> None:
        if cert is None:
            return
        ok = (
            self._certs.verify_qc(cert)
            if isinstance(cert, QuorumCert)
            else self._certs.verify_tc(cert)
        )
        if not ok:
            self._add("bad_certificate", inst, time, f"{type(cert).__name__} failed verification")

    def on_send(self, inst: int, key: int, msg: Message, time: int) -> None:
        """A replica running the correct code sent ``msg`` (signed with ``key``)."""
        t = type(msg)
        if t is Vote:
            r = msg.data.round  # type: ignore[union-attr]
            if key in self._honest:
                bid = msg.data.block_id  # type: ignore[union-attr]
                prev = self._votes.setdefault((key, r), bid)
                if prev != bid:
                    self._add(
                        "double_vote",
                        inst,
                        time,
                        f"key {key} voted {prev.hex()[:8]} and {bid.hex()[:8]} in round {r}",
                    )
                if (key, r) in self._timed_out:
                    self._add("vote_after_timeout", inst, time, f"key {key} round {r}")
        elif t is Proposal:
            b = msg.block  # type: ignore[union-attr]
            if self._leaders.leader(b.round) != b.author:
                self._add("proposal_not_from_leader", inst, time, f"round {b.round} by {b.author}")
            self._check_cert(inst, time, b.qc)
            self._check_cert(inst, time, msg.last_round_tc)  # type: ignore[union-attr]
        elif t is Timeout:
            if key in self._honest:
                self._timed_out[(key, msg.round)] = None  # type: ignore[union-attr]
            self._check_cert(inst, time, msg.high_qc)  # type: ignore[union-attr]
            self._check_cert(inst, time, msg.last_round_tc)  # type: ignore[union-attr]

    def on_persist(self, inst: int, safety: SafetyData, time: int) -> None:
        """A replica durably wrote ``safety``."""
        prev = self._persisted.get(inst)
        if prev is not None and not safety.dominates(prev):
            self._add("safety_regressed", inst, time, f"{prev} -> {safety}")
        self._persisted[inst] = safety

    def on_commit(self, inst: int, committed: Iterable[CommittedBlock], time: int) -> None:
        """A replica applied ``committed`` (in order)."""
        log = self.logs.setdefault(inst, [])
        canon = self._canon
        for c in committed:
            b = c.block
            bid = b.id
            prev = log[-1] if log else self._genesis
            if b.parent_id != prev:
                self._add(
                    "log_not_chain",
                    inst,
                    time,
                    f"block {bid.hex()[:8]} (round {b.round}) does not extend {prev.hex()[:8]}",
                )
            pos = len(log)
            if pos < len(canon):
                if canon[pos] != bid:
                    self._add(
                        "conflicting_commit",
                        inst,
                        time,
                        f"height {pos + 1}: {bid.hex()[:8]} vs {canon[pos].hex()[:8]}",
                    )
            else:
                canon.append(bid)
            if self._check_proofs and bid == c.head_id:
                ok = all(self._certs.verify_qc(q) for q in c.commit_proof)
                if not ok or not verify_commit_proof(bid, b.round, c.commit_proof, self._rule):
                    self._add("commit_rule", inst, time, f"round {b.round} {bid.hex()[:8]}")
            log.append(bid)

    def on_core_error(self, inst: int, error: Exception, time: int) -> None:
        """A replica's defensive safety check raised."""
        self._add("core_safety_violation", inst, time, str(error))
