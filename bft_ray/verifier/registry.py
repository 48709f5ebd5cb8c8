"""Executor identities as each BFT verifier confirmed them itself (pure; no Ray).

A claim names, for every executor it cites, a public key and a Ray actor id. Were those the
dispatcher's word only, a lying dispatcher could give an honest executor a key it holds itself:
every honest answer would then fail its signature check, be judged ``invalid``, and flag the
executor on the record. So every verifier keeps its own registry and votes for a claim only if
each executor it names has exactly the key, actor and slot that verifier pinned:

* **Registration** (the dispatcher, when an executor starts, respawns or is added): the
  dispatcher signs the list of ``(executor id, actor id)`` pairs (:func:`registration_bytes`)
  and hands every verifier the actors' handles. Each verifier checks the signature (no other
  worker may register an identity), that each handle is that actor, then asks the actor itself
  for its start-up answer (read strictly, never unpickled) and :meth:`ExecutorRegistry.pin` s
  the key it states. The dispatcher uses an executor only once ``2f + 1`` verifiers confirmed the
  key the dispatcher read from it; an executor that tells verifiers different keys never gets
  there and is retired.
* **First pin wins**: an executor id keeps the first key, actor and slot pinned for it, so no
  later registration can re-key an identity that evidence is already recorded against.
* **Committed claims** (:meth:`ExecutorRegistry.learn`): a committed claim's executors were
  confirmed by at least ``f + 1`` honest voters, so a verifier that restarted, or missed a
  registration, pins them from the blocks it applies.

Example:
    >>> reg = ExecutorRegistry()
    >>> reg.pin("ex0", Registered(b"k" * 32, "aa" * 16, "slot0"))
    ''
    >>> reg.pin("ex0", Registered(b"x" * 32, "aa" * 16, "slot0"))
    'executor ex0 is already registered with another key or actor'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from bft_ray.compare import wire
from bft_ray.verifier.claims import VerdictClaim

__all__ = [
    "ExecutorRegistry",
    "Registered",
    "registration_bytes",
    "slot_of_executor",
    "unconfirmed",
]

_DOMAIN = b"bft-ray/executor-registration/v1\x00"


def registration_bytes(pairs: Iterable[tuple[str, str]]) -> bytes:
    """What the dispatcher signs to register executors: ``(executor id, actor id hex)`` pairs."""
    return _DOMAIN + wire.encode([[eid, aid] for eid, aid in pairs])


_EXECUTOR_ID = re.compile(r"ex([0-9]+)(?:\.[0-9]+)?", re.ASCII)


def slot_of_executor(executor_id: str) -> str:
    """The slot an executor id belongs to (``ex3`` and ``ex3.2`` are ``slot3``), or ``""``.

    Example:
        >>> slot_of_executor("ex3.2"), slot_of_executor("nope"), slot_of_executor("ex\u00b2")
        ('slot3', '', '')
    """
    m = _EXECUTOR_ID.fullmatch(executor_id) if isinstance(executor_id, str) else None
    return f"slot{int(m.group(1))}" if m else ""


@dataclasses.dataclass(frozen=True)
class Registered:
    """One executor incarnation as a verifier pinned it.

    Attributes:
        key: The Ed25519 public key the executor stated to this verifier.
        actor_id: Hex id of its Ray actor.
        slot: Its slot.
    """

    key: bytes
    actor_id: str
    slot: str


class ExecutorRegistry:
    """The executors one verifier has confirmed (see the module docstring)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Registered] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, executor_id: object) -> bool:
        return executor_id in self._by_id

    def get(self, executor_id: str) -> Registered | None:
        return self._by_id.get(executor_id)

    def items(self) -> list[tuple[str, Registered]]:
        return sorted(self._by_id.items())

    def pin(self, executor_id: str, reg: Registered) -> str:
        """Pin an executor's identity; ``""`` when pinned (or already so), else why not."""
        if slot_of_executor(executor_id) != reg.slot:
            return f"executor {executor_id} states slot {reg.slot!r}, not its own"
        known = self._by_id.get(executor_id)
        if known is None:
            self._by_id[executor_id] = reg
            return ""
        if known != reg:
            return f"executor {executor_id} is already registered with another key or actor"
        return ""

    def unknown(self, claim: VerdictClaim) -> list[str]:
        """Executors the claim names that this verifier has not pinned."""
        return [eid for eid, _, _ in claim.executors if eid not in self._by_id]

    def mismatch(self, claim: VerdictClaim) -> str:
        """Why the claim's executors are not the ones this verifier pinned (``""`` if they are).

        Must be checked BEFORE the claim is rechecked or offered for a vote: the recheck trusts
        the keys the claim lists.
        """
        for eid, key, actor in claim.executors:
            reg = self._by_id.get(eid)
            if reg is None:
                return f"executor {eid} is not registered with this verifier"
            if reg.key != key:
                return f"the claim gives executor {eid} a key it never stated to this verifier"
            if reg.actor_id != actor:
                return f"the claim gives executor {eid} an actor that is not its own"
        for r in claim.replicas:
            reg = self._by_id.get(r.executor_id)
            if reg is not None and r.slot != reg.slot:
                return f"the claim puts executor {r.executor_id} on {r.slot}, not its own slot"
        return ""

    def learn(self, claim: VerdictClaim) -> None:
        """Pin the executors of a committed claim (``f + 1`` honest voters confirmed them)."""
        slots = {r.executor_id: r.slot for r in claim.replicas}
        for eid, key, actor in claim.executors:
            self.pin(eid, Registered(key, actor, slots.get(eid, slot_of_executor(eid))))


def unconfirmed(keys: dict[str, bytes], answers: list, n: int) -> dict[str, str]:
    """Executors that fewer than ``2f + 1`` of ``n`` verifiers confirmed, and why.

    Args:
        keys: Executor id -> the key the dispatcher read from the executor itself.
        answers: Each verifier's answer to ``register_executors`` (a dict, or whatever came
            back instead: an error, garbage from a faulty verifier).
        n: Group size.

    Example:
        >>> k = b"k" * 32
        >>> ok = {"ex0": {"public_key": k}}
        >>> unconfirmed({"ex0": k}, [ok, ok, ok, "timeout"], 4)
        {}
        >>> sorted(unconfirmed({"ex0": k}, [ok, ok, "timeout", "timeout"], 4))
        ['ex0']
    """
    need = 2 * ((n - 1) // 3) + 1
    problems = {}
    for eid, key in keys.items():
        seen = []
        for a in answers:
            got = a.get(eid) if isinstance(a, dict) else None
            pinned = got.get("public_key") if isinstance(got, dict) else None
            if type(pinned) is bytes and pinned == key:  # exact type: the answer is untrusted
                seen.append("ok")
            elif isinstance(got, dict):
                seen.append(str(got.get("error") or "pinned another key")[:200])
            else:
                seen.append(str(a)[:120] if got is None else "malformed answer")
        confirmed = seen.count("ok")
        if confirmed < need:
            problems[eid] = (
                f"only {confirmed} of {n} verifiers confirmed executor {eid}'s key (need "
                f"{need}): " + "; ".join(s for s in seen if s != "ok")[:400]
            )
    return problems
