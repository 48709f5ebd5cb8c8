"""Executor standing derived from committed records, and reading it back from the group (pure).

In BFT mode each verifier applies every committed entry, in commit order, to a
:class:`~bft_ray.trust.standing.Standing` (the trusted mode's pure state): a verdict claim's
judgements through :meth:`Standing.apply` (credit, streaks, stakes), then the quarantine rule;
an operator record (:class:`~bft_ray.verifier.claims.OperatorClaim`) through ``ban`` or
``reinstate``. Nothing else enters it, no wall clock in particular, so every honest verifier
holds byte-identical standing (:meth:`Standing.digest`) and a restarted one rebuilds it by
replaying its ledger.

What the committed standing does *not* hold, and why:

* **drift** (``suspect``): it needs each output's distance to the accepted value, and a
  committed claim carries judgements, not outputs (a verifier that never read the answers
  still applies the claim);
* **canaries and probation**: a canary's verdict is the dispatcher's alone, never rechecked
  by the group, so a quarantined executor stays quarantined until the operator reinstates it
  (a committed record);
* **taint**: spot checks are refused in BFT mode, so no result is ever accepted alone.

The quarantine rule is the trusted mode's (:class:`~bft_ray.trust.reputation.QuarantinePolicy`
on the committed reputation), with the pool size taken from committed data too: at most a
minority of the slots the committed record has seen is ever quarantined.

:func:`agree` is the reader's side: given each verifier's reported state it recomputes every
digest itself and returns the state that at least ``f + 1`` verifiers hold (so at least one
honest verifier vouches for it), or raises :class:`~bft_ray.errors.TrustStateError`.

Example:
    >>> rules = TrustRules(quarantine_below=0.3, quarantine_min_tasks=2)
    >>> s = rules.new_standing()
    >>> rules.apply_operator(s, OperatorClaim("op-1", "ban", "ex2"))
    >>> blocked(s)
    (('ex2', 'banned'),)
    >>> a = agree({0: {"state": s.to_json()}, 1: {"state": s.to_json()}, 2: "down"}, n=4)
    >>> a.agreed_by, a.standing.get("ex2").status.value
    ((0, 1), 'banned')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bft_ray.errors import TrustStateError
from bft_ray.trust.reputation import QuarantinePolicy, Reputation
from bft_ray.trust.standing import Prices, Standing, state_digest
from bft_ray.verifier.claims import OperatorClaim, VerdictClaim
from bft_ray.verifier.recheck import record_of

__all__ = [
    "AgreedStanding",
    "TrustRules",
    "agree",
    "blocked",
    "function_key",
    "trust_report",
]


def function_key(function: tuple[str, str, str]) -> str:
    """The per-function key of earned trust: module, name and code digest (as trusted mode)."""
    module, qualname, digest = function
    return f"{module}:{qualname}:{digest[:16]}"


def blocked(standing: Standing) -> tuple[tuple[str, str], ...]:
    """Executors that receive no real work (quarantined or banned), sorted, with their status."""
    return tuple(
        (eid, s.status.value) for eid, s in sorted(standing.executors.items()) if not s.status.works
    )


@dataclasses.dataclass(frozen=True)
class TrustRules:
    """The standing rules every verifier of one group applies (set at ``init``, identical on all).

    Attributes:
        prices: Credit prices as ``(name, value)`` pairs (:class:`Prices` fields).
        readmit_after: Kept in the state for parity with trusted mode (no canaries here).
        quarantine_below: Trust score under which a flagged executor is quarantined
            (``0`` disables quarantine).
        quarantine_min_tasks: Outcomes an executor needs before it can be quarantined.
        groups: ``(slot, owner group)`` pairs (``init(executor_groups=...)``).
        cooldown: Agreements owed after a flag (the replicate plan's default).
    """

    prices: tuple[tuple[str, float], ...] = ()
    readmit_after: int = 5
    quarantine_below: float = 0.0
    quarantine_min_tasks: int = 4
    groups: tuple[tuple[str, str], ...] = ()
    cooldown: int = 50

    @classmethod
    def from_spec(cls, spec: Any) -> TrustRules:
        """The rules of a :class:`~bft_ray.config.ClusterSpec`."""
        return cls(
            prices=tuple(sorted((spec.prices or {}).items())),
            readmit_after=spec.readmit_after,
            quarantine_below=spec.quarantine_below,
            quarantine_min_tasks=spec.quarantine_min_tasks,
            # Slot names as bft_ray.executor.pool.slot_name writes them (that module imports Ray).
            groups=tuple(sorted((f"slot{i}", g) for i, g in spec.executor_groups.items())),
        )

    def new_standing(self) -> Standing:
        return Standing(Prices(**dict(self.prices)), readmit_after=self.readmit_after)

    def apply_claim(
        self, standing: Standing, reputation: Reputation, claim: VerdictClaim
    ) -> list[str]:
        """Apply one committed claim (its reputation already applied); the newly quarantined."""
        record = record_of(claim)
        groups = dict(self.groups)
        for j in record.judgements:
            if j.executor_id != "-":
                standing.register(j.executor_id, groups.get(j.slot, ""))
        standing.apply(record, function_key(claim.function), cooldown=self.cooldown)
        if self.quarantine_below <= 0:
            return []
        newly = []
        for j in record.judgements:
            if not j.label.flags or j.executor_id == "-":
                continue
            if not standing.get(j.executor_id).status.works:
                continue  # already quarantined or banned
            # The pool's size from committed data: the slots the record has seen, and those
            # whose executors still work. Never quarantine more than a minority of them.
            slots = {r.node_id for r in reputation.records()}
            working = {
                r.node_id for r in reputation.records() if standing.receives_work(r.executor_id)
            }
            policy = QuarantinePolicy(
                self.quarantine_below, self.quarantine_min_tasks, keep=len(slots) // 2 + 1
            )
            if policy.should_quarantine(reputation.get(j.executor_id), len(working)):
                standing.quarantine(j.executor_id, f"trust below {self.quarantine_below}")
                newly.append(j.executor_id)
        return newly

    def apply_operator(self, standing: Standing, op: OperatorClaim) -> None:
        """Apply one committed operator record."""
        if op.action == "ban":
            standing.ban(op.executor_id)
        else:
            standing.reinstate(op.executor_id)


@dataclasses.dataclass(frozen=True)
class AgreedStanding:
    """A standing that at least ``f + 1`` verifiers reported identically.

    Attributes:
        standing: The state (rebuilt from the reported JSON).
        digest: Its digest, recomputed here from the state.
        agreed_by: Indices of the verifiers whose state has this digest.
        committed_round: Highest committed round any of them reported.
        others: Index -> why it is not among them (another digest, an error).
        n: Group size.
    """

    standing: Standing
    digest: bytes
    agreed_by: tuple[int, ...]
    committed_round: int
    others: dict[int, str]
    n: int

    @property
    def f(self) -> int:
        return (self.n - 1) // 3


def agree(answers: Mapping[int, Any], n: int) -> AgreedStanding:
    """The standing that at least ``f + 1`` of the ``n`` verifiers hold.

    Args:
        answers: Verifier index (the handle asked, not what the answer says) -> its
            ``standing()`` answer (a dict with ``state`` and optionally ``committed_round``),
            or anything else (an error text) for a verifier that did not answer.
        n: Group size.

    Returns:
        The agreed state. If two states each have ``f + 1`` verifiers (a group still
        committing), the one of the higher committed round: both are committed states.

    Raises:
        TrustStateError: If no state is held by ``f + 1`` verifiers.
    """
    f = (n - 1) // 3
    by_digest: dict[bytes, list[int]] = {}
    states: dict[bytes, Standing] = {}
    rounds: dict[int, int] = {}
    others: dict[int, str] = {}
    for index, ans in sorted(answers.items()):
        if not isinstance(ans, dict) or not isinstance(ans.get("state"), dict):
            others[index] = f"no state: {str(ans)[:120]}"
            continue
        try:
            # Recomputed from the state itself: a reported digest is never taken on trust.
            digest = state_digest(ans["state"])
            standing = Standing.from_json(ans["state"])
        except Exception as exc:  # malformed state from a faulty verifier
            others[index] = f"malformed state: {type(exc).__name__}: {exc}"[:160]
            continue
        claimed = ans.get("digest")
        if claimed is not None and claimed != digest.hex():
            others[index] = "its reported digest does not match its state"
            continue
        by_digest.setdefault(digest, []).append(index)
        states.setdefault(digest, standing)
        r = ans.get("committed_round", 0)
        rounds[index] = r if isinstance(r, int) else 0
    vouched = [d for d, who in by_digest.items() if len(who) >= f + 1]
    if not vouched:
        seen = ", ".join(f"{len(w)} hold {d.hex()[:12]}" for d, w in by_digest.items())
        raise TrustStateError(
            f"no trust state is held by f + 1 = {f + 1} of the {n} verifiers, so no honest "
            f"verifier vouches for one ({seen or 'none answered'}; "
            f"{'; '.join(f'{i}: {w}' for i, w in sorted(others.items())) or 'no errors'}). "
            "The group may still be committing: retry, or check cluster.verifier_status().",
            answers={i: (w if isinstance(w, str) else "") for i, w in others.items()},
        )
    best = max(vouched, key=lambda d: (max(rounds[i] for i in by_digest[d]), len(by_digest[d])))
    for d, who in by_digest.items():
        if d != best:
            for i in who:
                others[i] = f"holds another state ({d.hex()[:12]})"
    return AgreedStanding(
        states[best],
        best,
        tuple(by_digest[best]),
        max(rounds[i] for i in by_digest[best]),
        others,
        n,
    )


def trust_report(agreed: AgreedStanding) -> dict[str, Any]:
    """``cluster.trust_report()``'s shape for a committed standing, with who vouched for it."""
    s = agreed.standing
    return {
        "mode": "bft",
        "prices": s.prices.model_dump(),
        "executors": [
            {**s.account(eid), "functions": s.functions(eid)} for eid in sorted(s.executors)
        ],
        "tainted": [],  # no result is accepted alone in BFT mode
        "digest": agreed.digest.hex(),
        "agreed_by": list(agreed.agreed_by),
        "verifiers": agreed.n,
        "f": agreed.f,
        "committed_round": agreed.committed_round,
        "others": {str(i): why for i, why in sorted(agreed.others.items())},
    }
