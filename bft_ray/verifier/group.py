"""The BFT verifier actor: Ray transport around one :class:`~bft_ray.verifier.replica.VerifierReplica`.

Each verifier is an async Ray actor with its own Ed25519 key (kept in its ledger directory, so
a restarted verifier signs with the same key) and its own SQLite ledger. Everything that
decides anything lives in the pure replica; this module only moves bytes:

* ``deliver(sender, bytes)``: a consensus message from a peer, fire-and-forget. A proposal is
  held until this verifier has rechecked every claim in it (it waits up to ``claim_wait_s`` for
  the dispatcher's copy of a claim it has not seen), then stepped.
* ``submit_claim(entry, refs)``: the dispatcher sends each claim to every verifier with the
  object refs of the executors' answers (nested in a list, so Ray hands the refs over without
  resolving them). The verifier reads each answer from the executor's own object, through the
  deserialisation guard (an object is read only if the executor's actor produced it, and only
  as raw bytes), rechecks the claim, offers it to the replica, and answers once the claim is
  committed: with its signature over the BFT certificate body, or with why it will not sign.
* ``register_executors(signature, items)``: the dispatcher's signed registration of new
  executors with their actor handles; this verifier asks each actor itself for the key it
  states and pins it (:mod:`bft_ray.verifier.registry`). A claim naming an executor with any
  other key, actor or slot is refused before its answers are read.
* ``submit_operator(entry)``: an operator record (``cluster.ban``/``reinstate`` in BFT mode),
  signed by the dispatcher; offered as is (its signature is its whole check) and answered once
  committed, with the standing this verifier holds after that block.
* ``standing()``: this verifier's committed standing (the whole state and its digest), which
  ``cluster.trust_report()`` reads from every verifier and accepts only where ``f + 1`` agree.
* A timer ticks the replica every ``tick_s`` while it holds uncommitted claims (an idle group
  sends nothing), and after each step or tick the drain loop persists, sends, applies.

Sends are ``peer.deliver.remote(...)`` calls whose results are never awaited: no blocking
``ray.get`` anywhere on the hot path.

Byzantine behaviours (``bft_ray.init(verifier_faults={index: name})``, names in
:data:`bft_ray.faults.VERIFIER_FAULTS`) are implemented here, at the transport and
application seams, never inside the consensus core.

Example:
    >>> GroupSetup("default", 0, 4, b"k" * 32, "/tmp/ledgers").ledger_path.name
    'verifier-0.sqlite'
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hmac
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import blake3
import ray
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bft_ray.config import Policy
from bft_ray.consensus import (
    Block,
    Ed25519Signer,
    Ed25519Verifier,
    Node,
    NodeConfig,
    Outgoing,
    Proposal,
    Timeout,
    ValidatorSet,
    Vote,
    decode_message,
)
from bft_ray.consensus.types import proposal_signing_bytes
from bft_ray.crypto import SigningKey, verify_signature
from bft_ray.errors import CapabilityError
from bft_ray.executor import guard
from bft_ray.metrics import GroupMetrics
from bft_ray.verifier.admission import NoAnswer, Status
from bft_ray.verifier.byzantine import FaultyApp
from bft_ray.verifier.certificate import Certificate, FunctionId
from bft_ray.verifier.claims import (
    ClaimError,
    SignedOperator,
    VerdictClaim,
    decode_payload,
    encode_payload,
)
from bft_ray.verifier.commit_proof import encode_proof
from bft_ray.verifier.recheck import FOREIGN, Recheck, Verdict, recheck
from bft_ray.verifier.records import CallMeta, certificate_fields
from bft_ray.verifier.registry import ExecutorRegistry, Registered, registration_bytes
from bft_ray.verifier.replica import OPERATOR_OK, Committed, VerifierReplica
from bft_ray.verifier.trust_state import TrustRules

__all__ = [
    "NAMESPACE",
    "BftVerifier",
    "GroupSetup",
    "actor_name",
    "certificate_body",
    "fail_statement",
    "share_proofs",
    "take_shared_proofs",
]

logger = logging.getLogger(__name__)

NAMESPACE = "bft_ray"
_FAIL_DOMAIN = b"bft-ray/failed-verdict/v1"


def actor_name(cluster: str, index: int) -> str:
    """Ray name of verifier ``index`` of cluster ``cluster`` (in :data:`NAMESPACE`)."""
    return f"bft-verifier:{cluster}:{index}"


@dataclasses.dataclass(frozen=True)
class GroupSetup:
    """Static configuration of one verifier of the group.

    Attributes:
        cluster: The bft-ray cluster's name (peers are found by name).
        index: This verifier's index in the group.
        n: Group size (``3f + 1``).
        dispatcher_key: Public key that signs every claim.
        ledger_dir: Directory of this verifier's key, group file and SQLite ledger.
        fault: Byzantine behaviour (``None`` or ``"honest"`` for none).
        tick_s: Seconds per logical tick.
        base_timeout_ticks: Ticks before a round with no progress times out.
        max_timeout_ticks: Cap of the round timeout's back-off.
        censor_after: Ticks a valid claim may wait before a block that leaves it out gets no
            vote from this verifier.
        claim_wait_s: How long a proposal waits for the dispatcher's copy of a claim.
        read_timeout_s: How long reading one executor answer may take.
        confirm_timeout_s: How long an executor may take to state its key to this verifier
            when registered (it has just answered the dispatcher the same question).
        max_claims: Most claims per block.
        admin_digest: blake3 digest of the driver's admin capability; only its holder may
            change this verifier's injected behaviour.
        continuous: For benchmarking consensus alone: leaders propose (empty) blocks without
            pause, so rounds run back to back; call ``kick()`` once all verifiers started.
        rules: The standing rules (prices, quarantine, owner groups), the same on every
            verifier of the group, or their standing digests differ.
    """

    cluster: str
    index: int
    n: int
    dispatcher_key: bytes
    ledger_dir: str
    fault: str | None = None
    tick_s: float = 0.05
    base_timeout_ticks: int = 10
    max_timeout_ticks: int = 160
    censor_after: int = 30
    claim_wait_s: float = 5.0
    read_timeout_s: float = 60.0
    confirm_timeout_s: float = 20.0
    max_claims: int = 256
    admin_digest: bytes = b""  # blake3 of the driver's admin capability (fault injection)
    continuous: bool = False  # benchmarks only: leaders propose empty blocks without pause
    rules: TrustRules = dataclasses.field(default_factory=TrustRules)

    @property
    def ledger_path(self) -> Path:
        return Path(self.ledger_dir) / f"verifier-{self.index}.sqlite"

    @property
    def key_path(self) -> Path:
        return Path(self.ledger_dir) / f"verifier-{self.index}.key"

    @property
    def group_path(self) -> Path:
        return Path(self.ledger_dir) / f"verifier-{self.index}.group.json"


def certificate_body(claim: VerdictClaim, record: Any, policy: Policy, block: Block) -> Certificate:
    """The unsigned BFT certificate of an accepted claim, from a recomputed record.

    The dispatcher and every verifier build it from the same inputs, so they sign and check
    the same bytes.
    """
    meta = CallMeta(claim.task_id, claim.name, FunctionId(*claim.function), claim.args_digest)
    keys = {eid: key for eid, key, _ in claim.executors}
    fields = certificate_fields(record, meta, policy.tolerance.describe(), keys)
    return Certificate.unsigned(mode="bft", block_round=block.round, block_id=block.id, **fields)


def fail_statement(task_id: str, block_round: int, block_id: bytes) -> bytes:
    """What a verifier signs for a committed failed verdict."""
    from bft_ray.crypto import encode_fields

    return encode_fields(_FAIL_DOMAIN, task_id, block_round, block_id)


class BftVerifier:
    """One verifier of the BFT group (an async Ray actor; see the module docstring).

    Args:
        setup: Its configuration.
    """

    def __init__(self, setup: GroupSetup) -> None:
        guard.install()
        self.setup = setup
        self.index = setup.index
        self.fault = setup.fault or "honest"
        Path(setup.ledger_dir).mkdir(parents=True, exist_ok=True)
        seed = self._load_key()
        self.key = SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
        self._seed = seed
        self.replica: VerifierReplica | None = None
        self._peers: dict[int, Any] = {}
        self._waiters: dict[str, asyncio.Future] = {}
        self._arrivals: dict[bytes, asyncio.Future] = {}
        self._done: OrderedDict[str, Committed] = OrderedDict()
        # Executors as this verifier confirmed them with the actors themselves, and the
        # confirmations still under way (a claim naming one waits for it).
        self.registry = ExecutorRegistry()
        self._proofs: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self._registering: dict[str, asyncio.Future] = {}
        self._handled = 0
        self._ticker: asyncio.Task | None = None
        self.counters = {"claims": 0, "refused": 0, "committed": 0, "messages": 0, "sent": 0}
        self.metrics = GroupMetrics(setup.cluster, setup.index)  # Prometheus (bft_ray.metrics)
        if setup.group_path.exists():
            group = json.loads(setup.group_path.read_text())
            keys = [bytes.fromhex(k) for k in group["keys"]]
            # A restart, or a new run on the same ledger (a new dispatcher key): recover from
            # the ledger, entries of former runs under the keys that signed them.
            known = [bytes.fromhex(k) for k in group.get("dispatchers", [])]
            former = [k for k in known if k != setup.dispatcher_key]
            self._write_group(keys, [*former, setup.dispatcher_key])
            self._start(keys, former)

    def _load_key(self) -> bytes:
        path = self.setup.key_path
        if path.exists():
            return path.read_bytes()
        seed = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(seed)
        return seed

    # -- set-up ---------------------------------------------------------------------------

    async def public_key(self) -> bytes:
        return self.key.public_bytes

    async def start(self, keys: list[bytes]) -> None:
        """Join the group whose verifiers have ``keys`` (index order)."""
        if self.replica is not None:
            return
        self._write_group(keys, [self.setup.dispatcher_key])
        self._start(keys)

    def _write_group(self, keys: list[bytes], dispatchers: list[bytes]) -> None:
        """The group file: the verifiers' keys, and every dispatcher key whose entries this
        ledger holds (oldest first)."""
        doc = {"keys": [k.hex() for k in keys], "dispatchers": [d.hex() for d in dispatchers]}
        tmp = self.setup.group_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.setup.group_path)

    def _start(self, keys: list[bytes], former_dispatchers: list[bytes] | None = None) -> None:
        from bft_ray.verifier.ledger import Ledger

        validators = ValidatorSet(tuple(keys))
        s = self.setup
        ledger = Ledger(
            s.ledger_path,
            index=s.index,
            validators=validators,
            signing_key=self.key,
            check_signatures=False,  # every attestation was verified by the recheck
        )
        app = FaultyApp(
            s.dispatcher_key, max_claims=s.max_claims, censor_after=s.censor_after, rules=s.rules
        )
        app.fault = self.fault
        app.continuous = s.continuous
        # After a restart: the same committed set, reputation and standing as before the crash
        # (the standing is derived from committed entries only, so replaying them rebuilds it).
        # The registry learns only the current run's executors (restore returns the current
        # dispatcher's claims only): a former run's ex0 had another key.
        blocks = [b for _, b in ledger.committed(1)]
        for sc in app.restore(blocks, former_dispatchers or ()):
            self._learn(sc)
        node = Node(
            NodeConfig(
                s.index,
                validators,
                base_timeout_ticks=s.base_timeout_ticks,
                max_timeout_ticks=s.max_timeout_ticks,
            ),
            Ed25519Signer(s.index, self._seed),
            Ed25519Verifier(tuple(keys)),
            app,
            recovery=ledger.recovery(),
        )
        self.validators = validators
        self.ledger = ledger
        self.replica = VerifierReplica(node, app, ledger, rows=_rows)

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick_loop(), context=contextvars.Context()
            )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.setup.tick_s)
            rep = self.replica
            if rep is not None and rep.busy():
                rep.tick()
                self._pump()

    # -- messages -------------------------------------------------------------------------

    def _peer(self, i: int) -> Any:
        h = self._peers.get(i)
        if h is None:
            h = ray.get_actor(actor_name(self.setup.cluster, i), namespace=NAMESPACE)
            self._peers[i] = h
        return h

    def _send(self, out: Outgoing) -> None:
        if self.fault == "silent":
            return
        targets = (
            [out.to] if out.to is not None else [i for i in range(self.setup.n) if i != self.index]
        )
        msg = out.message
        if self.fault == "forge":
            msg = _forged(msg)
        if self.fault == "equivocate" and isinstance(msg, Proposal) and out.to is None:
            twin = self._twin(msg)
            if twin is not None:
                half = len(targets) // 2
                self._post(targets[:half], msg)
                self._post(targets[half:], twin)
                return
        self._post(targets, msg)

    def _post(self, targets: list[int], msg: Any) -> None:
        data = msg.encode()
        # Sent from no caller's context: this usually runs inside a peer's ``deliver`` call,
        # and Ray's ray.cancel is recursive, so a Byzantine peer that cancels its own call
        # would otherwise cancel the votes and proposals this verifier sends while handling it.
        ctx = contextvars.Context()
        for t in targets:
            try:
                ctx.run(self._peer(t).deliver.remote, self.index, data)
                self.counters["sent"] += 1
            except Exception as exc:  # a peer that is gone: consensus tolerates the loss
                logger.debug("verifier %d: send to %d failed: %s", self.index, t, exc)
                self._peers.pop(t, None)

    def _twin(self, p: Proposal) -> Proposal | None:
        b = p.block
        entries = decode_payload(b.payload) if b.payload else []
        other = encode_payload(entries[:-1]) if entries else encode_payload([b"x"])
        twin = Block(b.round, b.qc, other, b.author)
        sig = Ed25519Signer(self.index, self._seed).sign(
            proposal_signing_bytes(self.validators.domain, twin.id)
        )
        return Proposal(twin, p.last_round_tc, sig)

    def _pump(self) -> None:
        rep = self.replica
        assert rep is not None
        sends, applied = rep.drain()
        for out in sends:
            self._send(out)
        self.metrics.node_stats(rep.node.stats)
        for c in applied:
            self.counters["committed"] += 1
            self._learn(c.claim)
            if not c.operator:
                self.metrics.committed(c.task_id, c.claim.claim.step == "accept")
            self._done[c.task_id] = c
            if len(self._done) > 50_000:
                self._done.popitem(last=False)
            fut = self._waiters.pop(c.task_id, None)
            if fut is not None and not fut.done():
                fut.set_result(c)

    async def deliver(self, sender: int, data: bytes) -> None:
        """A consensus message from peer ``sender`` (fire-and-forget)."""
        if self.replica is None:
            return
        self._handled += 1
        self.counters["messages"] += 1
        if self.fault == "crash" and self._handled > 40:
            logger.warning("verifier %d crashes (injected fault)", self.index)
            os._exit(1)
        try:
            msg = decode_message(data)
        except Exception:
            return
        if isinstance(msg, Proposal) and msg.block.payload and self._signed_by_author(msg):
            # Only a proposal its author really signed is worth decoding and checking the
            # claims of before the core sees it: anyone can call deliver, and that work is
            # about 0.4 ms per entry (the core still checks all of the proposal when stepped).
            await self._await_claims(msg.block.payload)
        self.replica.step(msg)
        self._pump()
        self._ensure_ticker()

    def _signed_by_author(self, msg: Proposal) -> bool:
        keys = self.validators.public_keys
        author = msg.block.author
        if not 0 <= author < len(keys):
            return False
        message = proposal_signing_bytes(self.validators.domain, msg.block.id)
        return verify_signature(keys[author], message, msg.signature)

    async def _await_claims(self, payload: bytes) -> None:
        try:
            entries = decode_payload(payload)
        except ClaimError:
            return
        app = self.replica.app  # type: ignore[union-attr]
        waits: dict[bytes, asyncio.Future] = {}
        loop = asyncio.get_running_loop()
        for e in entries:
            if app.recheck_of(e) is None and app.decode(e) is not None:
                key = blake3.blake3(e).digest()
                fut = self._arrivals.get(key)
                if fut is None:
                    fut = self._arrivals[key] = loop.create_future()
                waits[key] = fut
        if waits:
            await asyncio.wait(waits.values(), timeout=self.setup.claim_wait_s)
            # A claim that never came leaves no future behind (they would pile up forever).
            for key, fut in waits.items():
                if not fut.done() and self._arrivals.get(key) is fut:
                    del self._arrivals[key]

    # -- executor registry ----------------------------------------------------------------

    def _learn(self, sc: Any) -> None:
        """Pin the executors of a committed claim (see :mod:`bft_ray.verifier.registry`)."""
        if sc is not None and not isinstance(sc, SignedOperator):
            self.registry.learn(sc.claim)

    async def register_executors(self, signature: bytes, items: list) -> dict[str, dict]:
        """Confirm new executors with the actors themselves and pin the keys they state.

        Args:
            signature: The dispatcher's signature over
                :func:`~bft_ray.verifier.registry.registration_bytes` of the pairs.
            items: ``(executor id, actor id hex, actor handle)`` of each executor.

        Returns:
            Per executor id: ``{"public_key": key}`` as pinned here, or ``{"error": why}``.

        Raises:
            CapabilityError: If the dispatcher did not sign this registration.
        """
        pairs = [(str(eid), str(aid)) for eid, aid, _ in items]
        if not (
            isinstance(signature, bytes)
            and verify_signature(self.setup.dispatcher_key, registration_bytes(pairs), signature)
        ):
            raise CapabilityError("registering executors needs the dispatcher's signature")
        loop = asyncio.get_running_loop()
        futs = {}
        out: dict[str, dict] = {}
        for (eid, aid), (_, _, handle) in zip(pairs, items):
            known = self.registry.get(eid)
            if known is not None and known.actor_id == aid:
                out[eid] = {"public_key": known.key}  # pinned already (first pin wins)
                continue
            # Set before the first await: a claim that arrives meanwhile waits for this.
            fut = self._registering.get(eid)
            if fut is None or fut.done():
                # From no caller's context, and awaited shielded: it is shared by every caller
                # registering this executor, so one that cancels its own call cancels nothing.
                fut = self._registering[eid] = loop.create_task(
                    self._confirm(eid, aid, handle), context=contextvars.Context()
                )
            futs[eid] = fut
        for eid, fut in futs.items():
            out[eid] = await asyncio.shield(fut)
            if self._registering.get(eid) is fut:
                del self._registering[eid]
        return out

    async def _confirm(self, eid: str, aid: str, handle: Any) -> dict:
        from bft_ray.executor.pool import BadExecutorInfo, read_info

        try:
            actor = handle._actor_id.hex()
        except AttributeError:
            return {"error": f"{eid}: not an actor handle"}
        if actor != aid:
            return {"error": f"{eid}: the handle is actor {actor}, not {aid}"}
        guard.guard_actor(handle)  # its start-up answer is read strictly, as raw bytes
        try:
            raw = await asyncio.wait_for(
                asyncio.wrap_future(handle.info.remote().future()), self.setup.confirm_timeout_s
            )
        except asyncio.TimeoutError:
            why = f"{eid}: no start-up answer within {self.setup.confirm_timeout_s:g}s"
            return {"error": why}
        except Exception as exc:  # the actor died, or sent what the guard refuses
            return {"error": f"{eid}: no start-up answer: {type(exc).__name__}: {exc}"[:300]}
        try:
            info = read_info(raw, eid)
        except BadExecutorInfo as exc:
            return {"error": str(exc)}
        if info["executor_id"] != eid:
            return {"error": f"{eid}: the actor says it is {info['executor_id']!r}"}
        why = self.registry.pin(eid, Registered(info["public_key"], aid, info["slot"]))
        if why:
            return {"error": why}
        return {"public_key": info["public_key"]}

    async def _registry_refusal(self, claim: VerdictClaim) -> str:
        """Why the claim's executors are not the ones this verifier pinned (``""`` if they are);
        waits for confirmations still under way."""
        waits = [
            self._registering[e] for e in self.registry.unknown(claim) if e in self._registering
        ]
        if waits:
            await asyncio.wait(waits, timeout=self.setup.confirm_timeout_s)
        return self.registry.mismatch(claim)

    # -- claims ---------------------------------------------------------------------------

    async def submit_claim(self, entry: bytes, refs: list) -> dict:
        """Recheck a claim, order it, and answer once it is committed (see the module doc)."""
        rep = self.replica
        if rep is None:
            return {"index": self.index, "ok": False, "reason": "verifier not started"}
        self._ensure_ticker()
        self.counters["claims"] += 1
        sc = rep.app.decode(entry)
        if sc is None or isinstance(sc, SignedOperator):
            return {
                "index": self.index,
                "ok": False,
                "reason": "claim not signed by the dispatcher",
            }
        self.metrics.claim(sc.task_id)
        if self.fault == "silent":
            return {"index": self.index, "ok": False, "reason": "silent"}
        refusal = await self._registry_refusal(sc.claim)
        if refusal:
            result = Recheck(Verdict.INVALID, refusal)
        else:
            answers = await self._read(sc.claim, {r.hex(): r for r in refs})
            result = recheck(sc.claim, answers)
        if not result.ok:
            self.counters["refused"] += 1
            self.metrics.refused()
            rep.offer(entry, result)
            if self.fault != "wrong_vote":
                # Say so at once: with f + 1 refusals the dispatcher knows it cannot certify.
                # Executors unknown here (this verifier restarted) are named, so the
                # dispatcher registers them again.
                return {
                    "index": self.index,
                    "ok": False,
                    "reason": result.reason,
                    "unregistered": self.registry.unknown(sc.claim),
                }
        done = self._done.get(sc.task_id)
        if done is None:
            rep.offer(entry, result)
            fut = self._arrivals.pop(blake3.blake3(entry).digest(), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            self._pump()
        return self._ack(await self._committed(sc.task_id), result)

    async def submit_claims(self, items: list) -> list[dict]:
        """:meth:`submit_claim` for several claims in one Ray call, answered in order.

        The dispatcher sends the claims it reaches in one turn of its event loop together: under
        load one Ray call per claim and verifier was a fifth of the dispatcher's CPU. Answers
        come once every claim of the batch is committed or refused (they usually commit in the
        same block); one claim's error never touches the others'.
        """
        results = await asyncio.gather(
            *(self.submit_claim(entry, refs) for entry, refs in items), return_exceptions=True
        )
        out = [
            r
            if isinstance(r, dict)
            else {"index": self.index, "ok": False, "reason": f"{type(r).__name__}: {r}"}
            for r in results
        ]
        return share_proofs(out)

    async def _read(self, claim: VerdictClaim, refs: dict[str, Any]) -> dict[str, Any]:
        """Each replica's answer, read from the executor's own object (never copied)."""
        actors = {eid: aid for eid, _, aid in claim.executors}
        out: dict[str, Any] = {}
        reads = []
        for r in claim.replicas:
            ref = refs.get(r.object_id) if r.object_id else None
            if ref is None or r.state == "running":
                continue
            actor = actors.get(r.executor_id, "")
            try:
                actor_bytes = bytes.fromhex(actor)
            except ValueError:
                actor_bytes = b""
            if not actor_bytes or ref.task_id().actor_id().binary() != actor_bytes:
                out[r.object_id] = FOREIGN
                continue
            guard.guard_actor(actor_bytes)
            # A failed replica's object too is read to its final state (the dispatcher kills a
            # stalled executor, so it errors): objects never change once written, so every
            # honest verifier sees the same thing, and an answer that made it counts.
            reads.append((r.object_id, ref))

        async def read(oid: str, ref: Any) -> None:
            try:
                out[oid] = await asyncio.wait_for(
                    asyncio.wrap_future(ref.future()), self.setup.read_timeout_s
                )
            except asyncio.TimeoutError:
                out[oid] = NoAnswer(
                    Status.TIMEOUT, f"no answer within {self.setup.read_timeout_s:g}s"
                )
            except BaseException as exc:
                out[oid] = guard.no_answer(exc)

        await asyncio.gather(*(read(oid, ref) for oid, ref in reads))
        return out

    async def submit_operator(self, entry: bytes) -> dict:
        """Order an operator record; answer once committed, with the standing after its block."""
        rep = self.replica
        if rep is None:
            return {"index": self.index, "ok": False, "reason": "verifier not started"}
        self._ensure_ticker()
        sc = rep.app.decode(entry)
        if not isinstance(sc, SignedOperator):
            return {"index": self.index, "ok": False, "reason": "not a signed operator record"}
        if self.fault == "silent":
            return {"index": self.index, "ok": False, "reason": "silent"}
        if self._done.get(sc.task_id) is None:
            rep.offer(entry, OPERATOR_OK)
            self._pump()
        return {**self._where(await self._committed(sc.task_id)), "ok": True}

    async def _committed(self, task_id: str) -> Committed:
        """The entry of ``task_id`` once this verifier committed it (at once if it has)."""
        done = self._done.get(task_id)
        if done is None:
            fut = self._waiters.get(task_id)
            if fut is None:
                fut = self._waiters[task_id] = asyncio.get_running_loop().create_future()
            # Shielded: the future is shared by every caller waiting for this task (a peer
            # that replays an entry and cancels its own call must not cancel the others').
            done = await asyncio.shield(fut)
        return done

    def _where(self, done: Committed) -> dict:
        """What every ack says: this verifier, the block, its standing after the block."""
        block = done.block
        return {
            "index": self.index,
            "block_round": block.round,
            "block_id": block.id,
            **_view(done),
        }

    def _ack(self, done: Committed, result: Recheck) -> dict:
        block = done.block
        base = self._where(done)
        if not result.ok and self.fault != "wrong_vote":
            return {**base, "ok": False, "reason": result.reason}
        claim = done.claim.claim
        if claim.step == "fail":
            sig = self.key.sign(fail_statement(claim.task_id, block.round, block.id))
        elif result.record is None:  # wrong_vote signs what it never checked: nothing valid
            sig = os.urandom(64)
        else:
            assert result.policy is not None
            body = certificate_body(claim, result.record, result.policy, block).body()
            sig = self.key.sign(body)
        if self.fault == "forge":
            sig = os.urandom(64)
        proof = self._proof(done)
        return {
            **base,
            "ok": True,
            "public_key": self.key.public_bytes,
            "signature": sig,
            "commit_proof": proof,
        }

    def _proof(self, done: Committed) -> bytes:
        """The commit proof of ``done``'s block, encoded once per block: every claim of a block
        shares it (it carries the block's whole payload, so encoding it per claim cost a tenth
        of a verifier's CPU in a burst)."""
        key = (done.block.id, done.chain[-1].id if done.chain else b"")
        proof = self._proofs.get(key)
        if proof is None:
            proof = encode_proof(
                done.block, done.chain, done.commit_qcs, self.validators.public_keys
            )
            self._proofs[key] = proof
            if len(self._proofs) > 64:
                self._proofs.popitem(last=False)
        return proof

    async def kick(self) -> None:
        """Start the timers and send what the replica has ready (after ``start``)."""
        if self.replica is not None:
            self._pump()
            self._ensure_ticker()

    async def set_fault(self, capability: bytes, fault: str) -> str:
        """Change this verifier's injected behaviour (driver only; chaos tests and demos).

        A ``"crash"`` exits at the next message; a restarted verifier comes back honest (its
        configured behaviour) and recovers from its ledger.
        """
        from bft_ray.faults import resolve_verifier_fault

        ok = isinstance(capability, bytes) and hmac.compare_digest(
            blake3.blake3(capability).digest(), self.setup.admin_digest
        )
        if not self.setup.admin_digest or not ok:
            raise CapabilityError("changing a verifier's behaviour needs the driver's capability")
        self.fault = resolve_verifier_fault(fault)
        if self.fault == "crash":
            self._handled = 1 << 30
        if self.replica is not None:
            self.replica.app.fault = self.fault  # type: ignore[attr-defined]
        return self.fault

    # -- inspection -----------------------------------------------------------------------

    async def status(self) -> dict:
        """Round, commits, pending claims, reputation digest and counters (tests, CLI)."""
        rep = self.replica
        if rep is None:
            return {"index": self.index, "started": False}
        st = rep.node.status()
        return {
            "index": self.index,
            "started": True,
            "fault": self.fault,
            "round": st.round,
            "committed_round": st.committed_round,
            "pending": rep.app.pending(),
            "reputation_digest": rep.app.reputation_digest().hex(),
            "standing_digest": rep.app.standing_digest().hex(),
            "ledger": str(self.setup.ledger_path),
            "ledger_height": self.ledger.committed_height,
            "counters": dict(self.counters),
            "rejected": dict(rep.node.stats.rejected),
            "executors": {e: r.key for e, r in self.registry.items()},
            "public_key": self.key.public_bytes,
        }

    async def reputation(self) -> list[dict]:
        rep = self.replica
        return [] if rep is None else [r.as_row() for r in rep.app.reputation.records()]

    async def standing(self) -> dict:
        """This verifier's committed standing: the whole state, its digest, the round.

        Readers recompute the digest from ``state`` and take a state only where ``f + 1``
        verifiers hold it (:func:`bft_ray.verifier.trust_state.agree`).
        """
        rep = self.replica
        if rep is None:
            return {"index": self.index, "error": "verifier not started"}
        return {
            "index": self.index,
            "state": rep.app.standing.to_json(),
            "digest": rep.app.standing_digest().hex(),
            "committed_round": rep.app.committed_round,
            "ledger_height": self.ledger.committed_height,
        }

    async def shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.replica is not None:
            self.ledger.close()


def share_proofs(acks: list[dict]) -> list[dict]:
    """Send each commit proof once per batch: a later ack of the same block names the earlier
    ack that carries it (``proof_at``) instead of repeating several kilobytes; the dispatcher
    undoes it with :func:`take_shared_proofs`.

    Example:
        >>> acks = share_proofs([{"block_id": b"b", "commit_proof": b"p"}] * 2)
        >>> acks[1]["proof_at"], take_shared_proofs(acks)[1]["commit_proof"]
        (0, b'p')
    """
    first: dict[bytes, int] = {}
    out = []
    for k, ack in enumerate(acks):
        proof = ack.get("commit_proof")
        if isinstance(proof, bytes):
            at = first.setdefault(proof, k)
            if at != k:
                ack = {**ack, "commit_proof": None, "proof_at": at}
        out.append(ack)
    return out


def take_shared_proofs(acks: list) -> list:
    """Undo :func:`share_proofs` on a verifier's answer (untrusted: a ``proof_at`` that does not
    point at an earlier ack of the same block carrying bytes is simply dropped; that ack then
    has no proof, and the other verifiers' proofs serve)."""
    out = []
    for k, ack in enumerate(acks):
        at = ack.get("proof_at") if isinstance(ack, dict) else None
        if type(at) is int and 0 <= at < k and ack.get("commit_proof") is None:
            src = acks[at]
            proof = src.get("commit_proof") if isinstance(src, dict) else None
            bid = ack.get("block_id")
            same = isinstance(src, dict) and type(bid) is bytes and src.get("block_id") == bid
            ack = {name: value for name, value in ack.items() if name != "proof_at"}
            ack["commit_proof"] = proof if same and isinstance(proof, bytes) else None
        out.append(ack)
    return out


def _view(done: Committed) -> dict:
    """The standing after ``done``'s block, as the dispatcher adopts it from f + 1 verifiers."""
    return {
        "standing_digest": done.standing_digest,
        "blocked": [list(b) for b in done.blocked],
    }


def _rows(applied: list[Committed]) -> list[Any]:
    """Ledger rows of the claims of one committed block.

    Operator records get no verdict row: they are in the block's payload, which the ledger
    hash-chains and the audit checks, and they judge no executor's answer.
    """
    from bft_ray.verifier.ledger import row_of_claim

    return [row_of_claim(c.entry, c.claim) for c in applied if not c.operator]


def _forged(msg: Any) -> Any:
    """The same message with a signature that verifies under no key."""
    bad = os.urandom(64)
    if isinstance(msg, Vote | Proposal | Timeout):
        return dataclasses.replace(msg, signature=bad)
    return msg
