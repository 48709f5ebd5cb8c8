"""The verdict of one call as a pure state machine: outcomes in, a decision out.

Like etcd raft's ``VoteResult``, the state never acts: the verifier feeds it admitted outcomes
(:mod:`bft_ray.verifier.admission`) and does what :meth:`CallState.decide` returns. No Ray,
no clocks, no randomness of its own: the same outcomes, policy and tie-break key always give the
same decision, which is what lets a group of BFT verifiers recompute and check each other's
verdicts.

Contract of :meth:`CallState.decide`, which the caller MUST honour before feeding again:

* ``PENDING``: wait for the next outcome of a running replica.
* ``REPLACE(k)`` / ``ESCALATE(k)``: dispatch exactly ``k`` new replicas, each on a slot that has
  not run this call (the state already counts them as running; ``k`` never exceeds the
  ``spare`` slots the caller said it has). A dispatch that fails at once is fed back as a
  ``CRASHED`` outcome (of executor ``"-"`` when nothing reached an executor, so no one is
  flagged for it).
* ``ACCEPT``: the call is decided; ``decision.record`` says who agreed, who dissented and why.
  Replicas still running are fed later with :meth:`CallState.judge_late`; once none is running,
  :meth:`CallState.final_record` is the record to apply to reputation.
* ``FAIL``: no verdict is possible; ``decision.record`` holds the fates for the error message
  and for reputation (no one is flagged for a dispute).

The rules (docs/architecture.md, "Verdict rules"):

* **Agreement** is the tolerance relation between comparable outcomes of the same kind (value
  or error); equal digests agree without a comparison.
* **Acceptance**: the largest *clique* (outputs that agree pairwise) once its size reaches
  ``quorum_for(received + running)``, a strict majority of everything that can still arrive.
  Two disjoint cliques can never both reach it; every member of an accepted clique is within
  the tolerance of every other, so with fewer than ``q`` colluders the accepted value is within
  the tolerance of an honest output.
* **The value** is one member of the accepted clique, chosen by a keyed hash under ``tiebreak``,
  a secret the verifier draws per call and reveals only in the certificate, after the outputs
  are committed; ties between equally large cliques are broken the same way. Nothing an
  executor controls (its digest, its bits) decides the choice among agreeing outputs.
* **Flags**: an outcome is ``DISAGREED`` (flagged, with its signed attestation as evidence) only
  if it disagrees with the accepted value *and* agrees with fewer than ``q`` outcomes (itself
  included), counting as possible agreers the replicas still running and every replica of
  ``policy.replicas`` that produced no comparable output (so a claim cannot get an honest
  output flagged by leaving its agreeing peers out); reputation is applied from
  :meth:`CallState.final_record`, once every replica has finished.
* **Credit**: an outcome is ``AGREED`` only if it agrees with the value *and* with at least ``q``
  outcomes, so with fewer than ``q`` colluders it is within the tolerance of an honest output; a
  colluder that agrees only with an accomplice chosen as the value is ``UNALIGNED``. Honest outputs that agree pairwise and number at least ``q`` therefore each agree
  with at least ``q`` outcomes and are never flagged, whatever the others return. An outcome
  that disagrees with the value but agrees with ``q`` or more is ``UNALIGNED``: not proven
  wrong, not credited.

Example:
    >>> from bft_ray.compare.wire import decode_canonical, encode
    >>> from bft_ray.compare.digest import digest_wire
    >>> from bft_ray.config import Policy, Tolerance
    >>> from bft_ray.verifier.admission import Outcome, Status
    >>> def out(slot, v):
    ...     w = encode(v)
    ...     return Outcome(f"ex{slot}", f"slot{slot}", 0, Status.OK, decode_canonical(w), digest_wire(w))
    >>> st = CallState("t1", Policy(replicas=3, tolerance=Tolerance.exact()), tiebreak=b"k" * 32)
    >>> st.start(3)
    >>> st.feed(out(0, 1.0)); st.decide(spare=1).step
    <Step.PENDING: 'pending'>
    >>> st.feed(out(1, 1.0)); d = st.decide(spare=1)
    >>> d.step, sorted(d.record.members)
    (<Step.ACCEPT: 'accept'>, ['ex0', 'ex1'])
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence

import blake3

from bft_ray.compare.tolerance import compare
from bft_ray.config import Policy
from bft_ray.executor.attestation import Attestation
from bft_ray.verifier.admission import Outcome, Status

__all__ = [
    "CallState",
    "Decision",
    "Judgement",
    "Label",
    "Step",
    "VerdictRecord",
    "choose_clique",
    "escalation_size",
    "max_cliques",
]


class Step(enum.Enum):
    PENDING = "pending"
    ACCEPT = "accept"
    REPLACE = "replace"
    ESCALATE = "escalate"
    FAIL = "fail"


class Label(enum.Enum):
    """How one replica is judged in a verdict record."""

    AGREED = "agreed"  # agrees with the accepted value and with >= q outcomes: credited
    UNALIGNED = "unaligned"  # not proven wrong, not credited
    DISAGREED = "disagreed"  # disagrees with the value and with all but < q outcomes: flagged
    DISPUTED = "disputed"  # no verdict was reached
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    INVALID = "invalid"

    @property
    def flags(self) -> bool:
        """Whether this judgement is a penalty (it then carries evidence when there is any)."""
        return self in _FLAGGING


_FLAGGING = frozenset({Label.DISAGREED, Label.INVALID, Label.CRASHED, Label.TIMEOUT})
_FAILURE_LABEL = {
    Status.CRASHED: Label.CRASHED,
    Status.TIMEOUT: Label.TIMEOUT,
    Status.INVALID: Label.INVALID,
    # Not proven wrong for this call (see Status.MISATTRIBUTED): not flagged, not credited.
    Status.MISATTRIBUTED: Label.UNALIGNED,
}


@dataclasses.dataclass(frozen=True)
class Judgement:
    """One replica's part in a verdict."""

    executor_id: str
    slot: str
    label: Label
    reason: str = ""
    attestation: Attestation | None = None


@dataclasses.dataclass(frozen=True)
class VerdictRecord:
    """What a decided (or failed) call says about its replicas.

    Attributes:
        task_id: The call.
        accepted: The outcome whose value is returned (``None`` for a failure).
        members: Executor ids of the accepted clique.
        needed: Agreeing outcomes that were required.
        compared: Outcomes that could count when it was decided (received plus running).
        judgements: One per replica known at decision time.
        tiebreak: The key that chose the value among the clique.
    """

    task_id: str
    accepted: Outcome | None
    members: tuple[str, ...]
    needed: int
    compared: int
    judgements: tuple[Judgement, ...]
    tiebreak: bytes

    @property
    def agreeing(self) -> list[Judgement]:
        return [j for j in self.judgements if j.label is Label.AGREED]

    @property
    def dissenting(self) -> list[Judgement]:
        return [j for j in self.judgements if j.label is not Label.AGREED]


@dataclasses.dataclass(frozen=True)
class Decision:
    step: Step
    count: int = 0
    reason: str = ""
    record: VerdictRecord | None = None
    best: int = 0


def escalation_size(best: int, compared: int, policy: Policy) -> int | None:
    """Fewest extra replicas that could still produce a quorum, or ``None`` if none can.

    Example:
        >>> escalation_size(best=1, compared=3, policy=Policy(replicas=3, max_replicas=5))
        2
        >>> escalation_size(best=1, compared=3, policy=Policy(replicas=3, max_replicas=4)) is None
        True
    """
    limit = int(policy.max_replicas or policy.replicas) - compared
    for k in range(1, limit + 1):
        if best + k >= policy.quorum_for(compared + k):
            return k
    return None


def max_cliques(nodes: Sequence[str], adjacent: dict[str, set[str]]) -> list[frozenset[str]]:
    """All maximal cliques of a small undirected graph (Bron-Kerbosch with pivoting).

    Example:
        >>> adj = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}
        >>> sorted(sorted(c) for c in max_cliques(["a", "b", "c"], adj))
        [['a', 'b'], ['b', 'c']]
    """
    out: list[frozenset[str]] = []

    def expand(r: set[str], p: set[str], x: set[str]) -> None:
        if not p and not x:
            out.append(frozenset(r))
            return
        pivot = max(p | x, key=lambda u: (len(adjacent[u] & p), u))
        for v in sorted(p - adjacent[pivot]):
            expand(r | {v}, p & adjacent[v], x & adjacent[v])
            p = p - {v}
            x = x | {v}

    expand(set(), set(nodes), set())
    return out


def _keyed(tiebreak: bytes, label: str) -> bytes:
    return blake3.blake3(label.encode(), key=tiebreak).digest()


def choose_clique(
    cliques: Iterable[frozenset[str]], tiebreak: bytes
) -> tuple[frozenset[str], str] | None:
    """The largest clique and the member whose value is taken, both chosen under ``tiebreak``."""
    cliques = [c for c in cliques if c]
    if not cliques:
        return None
    size = max(len(c) for c in cliques)
    best = min(
        (c for c in cliques if len(c) == size),
        key=lambda c: _keyed(tiebreak, "clique\x00" + "\x00".join(sorted(c))),
    )
    rep = min(best, key=lambda m: _keyed(tiebreak, "member\x00" + m))
    return best, rep


class CallState:
    """The verdict state of one call (see the module docstring for the contract).

    Args:
        task_id: The call.
        policy: Replicas, quorum, tolerance, bounds.
        tiebreak: 32-byte secret key for the choices among agreeing outputs.
    """

    def __init__(self, task_id: str, policy: Policy, tiebreak: bytes) -> None:
        if len(tiebreak) != 32:
            raise ValueError("tiebreak must be a 32-byte key")
        self.task_id = task_id
        self.policy = policy
        self.tiebreak = tiebreak
        self.comparable: dict[str, Outcome] = {}  # by slot: one vote per slot, ever
        self.failures: list[Outcome] = []
        self.running = 0
        self.slots_used: set[str] = set()
        self.replacements_left = policy.replicas
        self._unreplaced = 0
        self._agree: dict[tuple[bytes, bytes], bool] = {}
        self.record: VerdictRecord | None = None

    # -- inputs --------------------------------------------------------------------------

    def start(self, k: int) -> None:
        """The caller dispatched the first ``k`` replicas."""
        self.running += k

    def feed(self, outcome: Outcome) -> None:
        """One replica finished (any status). A second answer for a slot never counts."""
        self.running = max(0, self.running - 1)
        if outcome.comparable:
            if outcome.slot in self.comparable:
                return  # a slot votes once per call (a respawn keeps its slot)
            self.comparable[outcome.slot] = outcome
        else:
            self.failures.append(outcome)
            self._unreplaced += 1

    # -- agreement -----------------------------------------------------------------------

    def agrees(self, a: Outcome, b: Outcome) -> bool:
        """Whether two comparable outcomes agree under the call's tolerance (cached)."""
        if a.attestation is not None and b.attestation is not None:
            if a.attestation.kind != b.attestation.kind:
                return False
        elif a.status is not b.status:
            return False
        if a.digest == b.digest:
            return True
        assert a.digest is not None and b.digest is not None
        pair = (a.digest, b.digest) if a.digest < b.digest else (b.digest, a.digest)
        if pair not in self._agree:
            self._agree[pair] = compare(
                a.canonical, b.canonical, self.policy.tolerance, detail=False
            ).agree
        return self._agree[pair]

    def _graph(self, outs: list[Outcome]) -> dict[str, set[str]]:
        adj: dict[str, set[str]] = {o.slot: set() for o in outs}
        for i, a in enumerate(outs):
            for b in outs[i + 1 :]:
                if self.agrees(a, b):
                    adj[a.slot].add(b.slot)
                    adj[b.slot].add(a.slot)
        return adj

    # -- decision ------------------------------------------------------------------------

    def decide(self, spare: int) -> Decision:
        """What to do now, given ``spare`` slots that have not run this call yet."""
        if self.record is not None:
            return Decision(Step.ACCEPT, record=self.record)
        outs = sorted(self.comparable.values(), key=lambda o: o.slot)
        adj = self._graph(outs)
        needed = self.policy.quorum_for(len(outs) + self.running)
        chosen = choose_clique(max_cliques([o.slot for o in outs], adj), self.tiebreak)
        best = len(chosen[0]) if chosen else 0
        if chosen and best >= needed:
            self.record = self._accept(outs, adj, chosen, needed)
            return Decision(Step.ACCEPT, record=self.record, best=best)
        if self._unreplaced and self.replacements_left > 0 and spare > 0:
            k = min(self._unreplaced, self.replacements_left, spare)
            self._unreplaced -= k
            self.replacements_left -= k
            self.running += k
            return Decision(Step.REPLACE, k, f"{k} replica(s) produced no answer", best=best)
        if self.running:
            return Decision(Step.PENDING, best=best)
        if outs:
            k = escalation_size(best, len(outs), self.policy)
            if k is not None and k <= spare:
                self.running += k
                return Decision(
                    Step.ESCALATE,
                    k,
                    f"no quorum among {len(outs)} outputs ({best} agreeing, {needed} needed)",
                    best=best,
                )
        reason = (
            "no replica produced an answer"
            if not outs
            else f"no quorum: {best} agreeing of {len(outs)} compared, {needed} needed"
        )
        return Decision(Step.FAIL, reason=reason, record=self._failed(needed), best=best)

    def _label(self, o: Outcome, rep: Outcome, outs: list[Outcome]) -> tuple[Label, str]:
        q = int(self.policy.quorum or 1)
        degree = sum(1 for other in outs if other.slot == o.slot or self.agrees(o, other))
        if o.slot == rep.slot or self.agrees(o, rep):
            # Credit needs q agreeing outputs too: with fewer than q colluders that puts it
            # within the tolerance of an honest output, so a colluder that only agrees with an
            # accomplice chosen as the value is not credited.
            if degree >= q:
                return Label.AGREED, ""
            return Label.UNALIGNED, f"agrees with the value but with only {degree} outputs"
        # Replicas still running may yet agree with it, and so may the replicas the policy asks
        # for that never produced a comparable output (no executor was available, the claim
        # lists fewer, or one failed without a replacement): flag only what none of them could
        # change. Without the missing ones, a BFT dispatcher could leave honest outputs out of
        # its claim and get an honest executor flagged (tests/adversarial/test_bft_claims.py).
        missing = max(0, self.policy.replicas - len(outs) - self.running)
        if degree + self.running + missing >= q:
            return Label.UNALIGNED, f"agrees with {degree} outputs but not with the accepted value"
        return Label.DISAGREED, "disagrees with the accepted value"

    def _accept(
        self,
        outs: list[Outcome],
        adj: dict[str, set[str]],
        chosen: tuple[frozenset[str], str],
        needed: int,
    ) -> VerdictRecord:
        clique, rep_slot = chosen
        rep = self.comparable[rep_slot]
        judgements = []
        for o in outs:
            label, reason = self._label(o, rep, outs)
            judgements.append(Judgement(o.executor_id, o.slot, label, reason, o.attestation))
        judgements += [self._failure(o) for o in self.failures]
        members = tuple(sorted(self.comparable[s].executor_id for s in clique))
        return VerdictRecord(
            self.task_id,
            rep,
            members,
            needed,
            len(outs) + self.running,
            tuple(judgements),
            self.tiebreak,
        )

    def _failed(self, needed: int) -> VerdictRecord:
        judgements = [
            Judgement(o.executor_id, o.slot, Label.DISPUTED, "no quorum", o.attestation)
            for o in sorted(self.comparable.values(), key=lambda o: o.slot)
        ]
        judgements += [self._failure(o) for o in self.failures]
        return VerdictRecord(
            self.task_id, None, (), needed, len(self.comparable), tuple(judgements), self.tiebreak
        )

    @staticmethod
    def _failure(o: Outcome) -> Judgement:
        return Judgement(o.executor_id, o.slot, _FAILURE_LABEL[o.status], o.reason, o.attestation)

    def judge_late(self, outcome: Outcome) -> None:
        """Feed a replica that finished after the verdict (it counts for reputation only)."""
        self.running = max(0, self.running - 1)
        if not outcome.comparable:
            self.failures.append(outcome)
        elif outcome.slot not in self.comparable:
            self.comparable[outcome.slot] = outcome

    def final_record(self) -> VerdictRecord:
        """The verdict record with every replica judged on everything that arrived.

        Reputation is applied from this record, once no replica is running: a flag decided
        earlier could be wrong, since an honest output's agreeing peers may still be running.
        """
        assert self.record is not None
        if self.record.accepted is None:
            return self.record
        outs = sorted(self.comparable.values(), key=lambda o: o.slot)
        rep = self.record.accepted
        judgements = [
            Judgement(o.executor_id, o.slot, *self._label(o, rep, outs), o.attestation)
            for o in outs
        ]
        judgements += [self._failure(o) for o in self.failures]
        return dataclasses.replace(self.record, judgements=tuple(judgements))
