"""Certificates: the evidence for an accepted result, checkable offline by anyone.

A certificate binds the task, the function (module, qualified name, digest of its pickled
code), the digest of the call's arguments, the accepted answer's kind and digest, the tolerance
and quorum it was judged under, the tie-break key that chose the value among agreeing outputs
(revealed only now, after the outputs were committed), the signed attestation of every
executor that agreed, every dissent (with its attestation when there is one), the registry of
the executors' public keys, and the verifiers' signatures over all of it (:meth:`Certificate.body`,
domain ``bft-ray/certificate/v2``).

:func:`verify_certificate` checks it with nothing but public keys and never raises on bad input;
certificates round-trip exactly through JSON (:meth:`Certificate.to_json`,
:meth:`Certificate.from_json`), so a process that never ran Ray can check one. The format and
every check are described in ``docs/certificates.md``.

In the trusted-verifier mode (``verifiers=1``) one verifier signs. The BFT verifier group adds
``2f + 1`` verifier signatures over the same body (``min_verifier_signatures=2 * f + 1``).

Example:
    >>> import numpy as np
    >>> from bft_ray.crypto import SigningKey
    >>> from bft_ray.compare.digest import digest
    >>> from bft_ray.executor.attestation import Attestation
    >>> value = np.arange(3.0)
    >>> ex = [SigningKey.generate() for _ in range(2)]
    >>> atts = tuple(
    ...     Attestation.create(k, "t1", 0, f"ex{i}", f"slot{i}", "value", digest(value))
    ...     for i, k in enumerate(ex))
    >>> vkey = SigningKey.generate()
    >>> cert = Certificate.issue(vkey, "verifier0", task_id="t1",
    ...     function=FunctionId("m", "f", "00"), args_digest=b"a" * 32, kind="value",
    ...     digest=digest(value), tolerance="exact", quorum=2, compared=2, representative="ex0",
    ...     tiebreak=b"k" * 32, agreeing=atts, dissenting=(),
    ...     executor_keys=tuple((f"ex{i}", k.public_bytes) for i, k in enumerate(ex)))
    >>> verify_certificate(cert, [vkey.public_bytes], task_id="t1", value=value)
    True
    >>> verify_certificate(Certificate.from_json(cert.to_json()), [vkey.public_bytes])
    True
    >>> verify_certificate(cert, [vkey.public_bytes], task_id="t2")   # another task's
    False
    >>> verify_certificate({"task_id": "t1"}, [vkey.public_bytes])    # never raises
    False
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from bft_ray.crypto import SigningKey, encode_fields, verify_signature
from bft_ray.errors import CertificateError
from bft_ray.executor.attestation import KINDS, Attestation

__all__ = ["Certificate", "Dissent", "FunctionId", "VerifierSignature", "verify_certificate"]

_DOMAIN = b"bft-ray/certificate/v2"
VERSION = 2
MODES = ("trusted", "bft")
# "disputed" is the verdict path's label for a call with no verdict; it never appears in an
# accepted record but is a known label, so it is not malformed.
OUTCOMES = ("disagreed", "unaligned", "crashed", "timeout", "invalid", "late", "disputed")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_BYTES_LIKE = (bytes, bytearray, memoryview)


@dataclasses.dataclass(frozen=True)
class FunctionId:
    """Which code a certificate is about.

    Attributes:
        module: Module that defines the function (or class).
        qualname: Qualified name.
        code_digest: Hex of a blake3 digest of the pickled function (computed by the caller;
            empty when unknown).
    """

    module: str
    qualname: str
    code_digest: str


@dataclasses.dataclass(frozen=True)
class Dissent:
    """An executor whose answer was not among the agreeing, with why and its attestation.

    Attributes:
        executor_id: The executor.
        outcome: One of ``"disagreed"`` (flagged), ``"unaligned"`` (within tolerance of a quorum
            but not of the representative; not flagged), ``"crashed"``, ``"timeout"``,
            ``"invalid"`` or ``"late"``.
        reason: Human-readable explanation.
        attestation: The executor's signed attestation, when it sent one.
    """

    executor_id: str
    outcome: str
    reason: str
    attestation: Attestation | None = None


@dataclasses.dataclass(frozen=True)
class VerifierSignature:
    """One verifier's signature over a certificate body.

    Attributes:
        verifier_id: Name of the verifier (informative; the key is what is checked).
        public_key: Its raw 32-byte Ed25519 public key.
        signature: Its 64-byte signature over :meth:`Certificate.body`.
    """

    verifier_id: str
    public_key: bytes
    signature: bytes


@dataclasses.dataclass(frozen=True)
class Certificate:
    """Evidence that ``digest`` is the accepted answer of ``task_id``.

    Attributes:
        task_id: The verified call.
        function: The function (or method) that was called.
        args_digest: Digest of the call's arguments (32 bytes).
        kind: ``"value"``, or ``"error"`` when the replicas agreed that user code raised.
        digest: Digest of the accepted answer (the representative's, 32 bytes).
        tolerance: Tolerance the outputs were compared under (described).
        quorum: Agreeing outputs that were required.
        compared: Outputs that could count when the verdict was reached.
        representative: Executor whose answer is the accepted value.
        tiebreak: Key (32 bytes) that chose the value among agreeing outputs, revealed only
            after the outputs were committed.
        agreeing: Signed attestations of the executors that agreed with the value.
        dissenting: Every other replica known at verdict time, with its outcome.
        executor_keys: Registry: ``(executor id, registered public key)`` for every executor
            named in ``agreeing`` and ``dissenting``.
        signatures: Verifier signatures over :meth:`body`.
        version: Format version (2).
        mode: ``"trusted"`` (one verifier) or ``"bft"`` (a verifier group).
        block_round: BFT mode: round of the committed block holding the verdict (else 0).
        block_id: BFT mode: id of that block (32 bytes; else empty). Each verifier signs only
            after its replica committed the block, so ``2f + 1`` signatures mean at least
            ``f + 1`` honest verifiers recomputed and committed this verdict.
        commit_proof: BFT mode: the proof that the block committed (the block, its committed
            descendants to the head, the head's QCs with ``2f + 1`` verifier signatures each
            and the keys in consensus order; :mod:`bft_ray.verifier.commit_proof`). Not part
            of :meth:`body`: it proves itself. Checked whenever present.
    """

    task_id: str
    function: FunctionId
    args_digest: bytes
    kind: str
    digest: bytes
    tolerance: str
    quorum: int
    compared: int
    representative: str
    tiebreak: bytes
    agreeing: tuple[Attestation, ...]
    dissenting: tuple[Dissent, ...]
    executor_keys: tuple[tuple[str, bytes], ...]
    signatures: tuple[VerifierSignature, ...] = ()
    version: int = VERSION
    mode: str = "trusted"
    block_round: int = 0
    block_id: bytes = b""
    commit_proof: bytes = b""

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def unsigned(cls, **fields: Any) -> Certificate:
        """A certificate with no signatures yet (``version`` and ``mode`` have defaults)."""
        fields.setdefault("signatures", ())
        return cls(**fields)

    def signed_by(self, key: SigningKey, verifier_id: str) -> Certificate:
        """A copy with one more verifier signature over the body."""
        sig = VerifierSignature(verifier_id, key.public_bytes, key.sign(self.body()))
        return dataclasses.replace(self, signatures=(*self.signatures, sig))

    @classmethod
    def issue(cls, key: SigningKey, verifier_id: str, **fields: Any) -> Certificate:
        """An unsigned certificate signed by one verifier (the trusted mode)."""
        return cls.unsigned(**fields).signed_by(key, verifier_id)

    # -- views ------------------------------------------------------------------------------

    @property
    def signers(self) -> list[str]:
        """Executors whose signed outputs agreed."""
        return [a.executor_id for a in self.agreeing]

    @property
    def verifier_ids(self) -> list[str]:
        """Verifiers that signed (as they name themselves; the keys are what is checked)."""
        return [s.verifier_id for s in self.signatures]

    def body(self) -> bytes:
        """The signed bytes: every field except the signatures, unambiguously encoded.

        Fields are length-prefixed in a fixed order, sequences are preceded by their length and
        an optional attestation by a presence flag, so two different certificates never share
        a body.
        """
        f = self.function
        fields: list[bytes | str | int] = [
            self.version,
            self.mode,
            self.task_id,
            f.module,
            f.qualname,
            f.code_digest,
            self.args_digest,
            self.kind,
            self.digest,
            self.tolerance,
            self.quorum,
            self.compared,
            self.representative,
            self.tiebreak,
            len(self.agreeing),
        ]
        for a in self.agreeing:
            fields += [a.signed_record(), a.signature]
        fields.append(len(self.dissenting))
        for d in self.dissenting:
            fields += [d.executor_id, d.outcome, d.reason, int(d.attestation is not None)]
            if d.attestation is not None:
                fields += [d.attestation.signed_record(), d.attestation.signature]
        fields.append(len(self.executor_keys))
        for eid, key in self.executor_keys:
            fields += [eid, key]
        if self.mode == "bft":
            fields += [self.block_round, self.block_id]
        return encode_fields(_DOMAIN, *fields)

    def summary(self) -> str:
        """Readable multi-line description."""
        f = self.function
        lines = [
            f"certificate for {f'{f.module}.' if f.module else ''}{f.qualname} "
            f"task {self.task_id} ({self.mode} mode)",
            f"  code        {f.code_digest or '(unknown)'}",
            f"  arguments   {self.args_digest.hex()}",
            f"  {self.kind:<11} {self.digest.hex()}",
            f"  tolerance   {self.tolerance}",
            f"  quorum      {len(self.agreeing)}/{self.compared} agreeing (needed {self.quorum})",
            f"  signers     {', '.join(f'{a.executor_id}@{a.slot}' for a in self.agreeing)}",
            f"  value from  {self.representative} (chosen with key {self.tiebreak.hex()[:16]}...)",
        ]
        for d in self.dissenting:
            signed = " signed" if d.attestation is not None else ""
            lines.append(f"  dissent     {d.executor_id}: {d.outcome}{signed} ({d.reason})")
        for s in self.signatures:
            lines.append(f"  verifier    {s.verifier_id} {s.public_key.hex()[:16]}... signed")
        return "\n".join(lines)

    # -- JSON -------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The certificate as JSON text (bytes as lowercase hex, keys sorted)."""
        data = {
            "version": self.version,
            "mode": self.mode,
            "task_id": self.task_id,
            "function": {
                "module": self.function.module,
                "qualname": self.function.qualname,
                "code_digest": self.function.code_digest,
            },
            "args_digest": self.args_digest.hex(),
            "kind": self.kind,
            "digest": self.digest.hex(),
            "tolerance": self.tolerance,
            "quorum": self.quorum,
            "compared": self.compared,
            "representative": self.representative,
            "tiebreak": self.tiebreak.hex(),
            "agreeing": [a.to_dict() for a in self.agreeing],
            "dissenting": [
                {
                    "executor_id": d.executor_id,
                    "outcome": d.outcome,
                    "reason": d.reason,
                    "attestation": None if d.attestation is None else d.attestation.to_dict(),
                }
                for d in self.dissenting
            ],
            "executor_keys": [[eid, key.hex()] for eid, key in self.executor_keys],
            "block_round": self.block_round,
            "block_id": self.block_id.hex(),
            "commit_proof": self.commit_proof.hex(),
            "signatures": [
                {
                    "verifier_id": s.verifier_id,
                    "public_key": s.public_key.hex(),
                    "signature": s.signature.hex(),
                }
                for s in self.signatures
            ],
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: Any) -> Certificate:
        """Parse :meth:`to_json` output strictly.

        Missing, extra or duplicated fields, wrong types, hex that is not lowercase, wrong byte
        lengths, out-of-range integers and unknown versions, modes, kinds or outcomes are all
        refused. Parsing checks the form only: call :func:`verify_certificate` on the result.

        Raises:
            CertificateError: For anything that is not a well-formed certificate.
        """
        try:
            if not isinstance(text, (str, bytes, bytearray)):
                raise CertificateError(f"certificate JSON must be text, not {type(text).__name__}")
            data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
            cert = _from_data(data)
            _shape(cert)
            return cert
        except CertificateError:
            raise
        except Exception as exc:
            raise CertificateError(f"not a certificate: {type(exc).__name__}: {exc}") from None


# -- JSON parsing ----------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise CertificateError("duplicated field in certificate JSON")
    return out


def _no_constant(name: str) -> Any:
    raise CertificateError(f"{name} is not allowed in certificate JSON")


def _need(data: Any, keys: Iterable[str], what: str) -> dict:
    keys = set(keys)
    if type(data) is not dict or set(data) != keys:
        raise CertificateError(f"{what} needs exactly the fields {sorted(keys)}")
    return data


def _text(v: Any, what: str) -> str:
    if type(v) is not str:
        raise CertificateError(f"{what} must be text")
    return v


def _int(v: Any, what: str) -> int:
    if type(v) is not int or not _INT64[0] <= v <= _INT64[1]:
        raise CertificateError(f"{what} must be a 64-bit integer")
    return v


def _hex(v: Any, what: str) -> bytes:
    if not _HEX.fullmatch(_text(v, what)):
        raise CertificateError(f"{what} is not lowercase hex")
    return bytes.fromhex(v)


def _list(v: Any, what: str) -> list:
    if type(v) is not list:
        raise CertificateError(f"{what} must be a list")
    return v


def _attestation(data: Any, what: str) -> Attestation:
    try:
        return Attestation.from_dict(data)
    except ValueError as exc:
        raise CertificateError(f"bad {what}: {exc}") from None


def _from_data(data: Any) -> Certificate:
    names = [f.name for f in dataclasses.fields(Certificate)]
    d = _need(data, names, "a certificate")
    fn = _need(d["function"], ("module", "qualname", "code_digest"), "function")
    agreeing = [_attestation(a, "attestation") for a in _list(d["agreeing"], "agreeing")]
    dissenting = []
    for x in _list(d["dissenting"], "dissenting"):
        x = _need(x, ("executor_id", "outcome", "reason", "attestation"), "a dissent")
        att = None
        if x["attestation"] is not None:
            att = _attestation(x["attestation"], "dissent attestation")
        dissenting.append(
            Dissent(
                _text(x["executor_id"], "dissent executor_id"),
                _text(x["outcome"], "dissent outcome"),
                _text(x["reason"], "dissent reason"),
                att,
            )
        )
    keys = []
    for entry in _list(d["executor_keys"], "executor_keys"):
        if type(entry) is not list or len(entry) != 2:
            raise CertificateError("an executor_keys entry is [executor_id, key]")
        keys.append((_text(entry[0], "executor id"), _hex(entry[1], "executor key")))
    sigs = []
    for s in _list(d["signatures"], "signatures"):
        s = _need(s, ("verifier_id", "public_key", "signature"), "a signature")
        sigs.append(
            VerifierSignature(
                _text(s["verifier_id"], "verifier_id"),
                _hex(s["public_key"], "verifier key"),
                _hex(s["signature"], "verifier signature"),
            )
        )
    return Certificate(
        task_id=_text(d["task_id"], "task_id"),
        function=FunctionId(
            _text(fn["module"], "module"),
            _text(fn["qualname"], "qualname"),
            _text(fn["code_digest"], "code_digest"),
        ),
        args_digest=_hex(d["args_digest"], "args_digest"),
        kind=_text(d["kind"], "kind"),
        digest=_hex(d["digest"], "digest"),
        tolerance=_text(d["tolerance"], "tolerance"),
        quorum=_int(d["quorum"], "quorum"),
        compared=_int(d["compared"], "compared"),
        representative=_text(d["representative"], "representative"),
        tiebreak=_hex(d["tiebreak"], "tiebreak"),
        agreeing=tuple(agreeing),
        dissenting=tuple(dissenting),
        executor_keys=tuple(keys),
        signatures=tuple(sigs),
        version=_int(d["version"], "version"),
        mode=_text(d["mode"], "mode"),
        block_round=_int(d["block_round"], "block_round"),
        block_id=_hex(d["block_id"], "block_id"),
        commit_proof=_hex(d["commit_proof"], "commit_proof"),
    )


# -- checking --------------------------------------------------------------------------------


def _sized(v: Any, size: int, what: str) -> None:
    if type(v) is not bytes or len(v) != size:
        raise CertificateError(f"{what} must be {size} bytes")


def _shape(cert: Any) -> None:
    """Exact types and sizes of every field, so the checks below cannot be fooled or raise.

    Exact types (no subclasses) matter: a ``str`` or ``tuple`` subclass could compare or
    iterate differently from what its signed encoding says.
    """
    if type(cert) is not Certificate:
        raise CertificateError(f"not a Certificate: {type(cert).__name__}")
    for name in ("task_id", "kind", "tolerance", "representative", "mode"):
        _text(getattr(cert, name), name)
    for name in ("quorum", "compared", "version", "block_round"):
        _int(getattr(cert, name), name)
    if type(cert.block_id) is not bytes or type(cert.commit_proof) is not bytes:
        raise CertificateError("block_id and commit_proof must be bytes")
    if cert.mode == "bft":
        _sized(cert.block_id, 32, "block_id")
        if cert.block_round < 1:
            raise CertificateError("a BFT certificate names the round of its committed block")
    elif cert.block_id or cert.block_round or cert.commit_proof:
        raise CertificateError("only a BFT certificate names a committed block")
    if cert.version != VERSION:
        raise CertificateError(f"unknown certificate version {cert.version} (this is {VERSION})")
    if cert.mode not in MODES or cert.kind not in KINDS:
        raise CertificateError(f"mode must be one of {MODES} and kind one of {KINDS}")
    for name in ("args_digest", "digest", "tiebreak"):
        _sized(getattr(cert, name), 32, name)
    f = cert.function
    if type(f) is not FunctionId or not all(
        type(x) is str for x in (f.module, f.qualname, f.code_digest)
    ):
        raise CertificateError("function must be a FunctionId of text fields")
    for seq in ("agreeing", "dissenting", "executor_keys", "signatures"):
        if type(getattr(cert, seq)) is not tuple:
            raise CertificateError(f"{seq} must be a tuple")
    for a in cert.agreeing:
        if type(a) is not Attestation or not a.well_formed():
            raise CertificateError("malformed agreeing attestation")
    for d in cert.dissenting:
        if type(d) is not Dissent or not all(
            type(x) is str for x in (d.executor_id, d.outcome, d.reason)
        ):
            raise CertificateError("malformed dissent")
        if d.outcome not in OUTCOMES:
            raise CertificateError(f"unknown dissent outcome {d.outcome!r} (one of {OUTCOMES})")
        if d.attestation is not None and (
            type(d.attestation) is not Attestation or not d.attestation.well_formed()
        ):
            raise CertificateError("malformed dissent attestation")
    for entry in cert.executor_keys:
        if type(entry) is not tuple or len(entry) != 2 or type(entry[0]) is not str:
            raise CertificateError("an executor_keys entry is (executor_id, 32-byte key)")
        _sized(entry[1], 32, "an executor key")
    for s in cert.signatures:
        if type(s) is not VerifierSignature or type(s.verifier_id) is not str:
            raise CertificateError("malformed verifier signature")
        _sized(s.public_key, 32, "a verifier key")
        _sized(s.signature, 64, "a verifier signature")


def _key(k: Any, what: str) -> bytes:
    if not isinstance(k, _BYTES_LIKE):
        raise CertificateError(f"{what} must be raw public key bytes, not {type(k).__name__}")
    return bytes(k)


def _keys(keys: Any, what: str) -> set[bytes]:
    """A set of raw keys from a mapping (its values) or an iterable of bytes."""
    if isinstance(keys, (*_BYTES_LIKE, str)):
        raise CertificateError(
            f"{what} must be a collection of keys, not one {type(keys).__name__}"
        )
    values = keys.values() if isinstance(keys, Mapping) else keys
    return {_key(k, what) for k in values}


def _check(
    cert: Any,
    verifier_keys: Any,
    task_id: Any,
    value: Any,
    has_value: bool,
    value_digest: Any,
    executor_keys: Any,
    min_verifier_signatures: Any,
    require_commit_proof: bool = False,
) -> None:
    _shape(cert)
    if type(min_verifier_signatures) is not int:
        raise CertificateError("min_verifier_signatures must be an integer")
    needed = max(1, min_verifier_signatures)
    trusted = _keys(verifier_keys, "verifier_keys")
    # The keys given are one group (``cluster.verifier_keys()``): whatever mode the certificate
    # states (its signers chose it), it needs 2f + 1 of them, f = (n - 1) // 3. Were the floor
    # only for "bft" certificates, one Byzantine verifier could sign a "trusted" one alone.
    needed = max(needed, 2 * ((len(trusted) - 1) // 3) + 1)
    if require_commit_proof and cert.mode != "bft":
        raise CertificateError(
            f"a {cert.mode!r} certificate has no commit proof (require_commit_proof=True)"
        )
    body = cert.body()
    good = {
        s.public_key
        for s in cert.signatures
        if s.public_key in trusted and verify_signature(s.public_key, body, s.signature)
    }
    if len(good) < needed:
        raise CertificateError(
            f"{len(good)} valid signatures by distinct known verifier keys, {needed} needed "
            "(tampered, or signed by unknown keys?)"
        )
    if task_id is not None and (type(task_id) is not str or cert.task_id != task_id):
        raise CertificateError(f"certificate is for task {cert.task_id!r}, not {task_id!r}")
    if cert.mode == "bft" and (cert.commit_proof or require_commit_proof):
        if not cert.commit_proof:
            raise CertificateError("no commit proof (require_commit_proof=True)")
        from bft_ray.verifier.commit_proof import OTHER_KEYS, check_proof

        why = check_proof(
            cert.commit_proof,
            cert.block_id,
            cert.block_round,
            cert.task_id,
            cert.digest,
            cert.representative,
            trusted,
        )
        # Keys other than the proof's group (a subset, a stale list) cannot check it; unless it
        # is required, the 2f + 1 signatures over the body then decide, as without a proof.
        if why and (require_commit_proof or why != OTHER_KEYS):
            raise CertificateError(f"commit proof: {why}")

    registry: dict[str, bytes] = {}
    for eid, key in cert.executor_keys:
        if eid in registry:
            raise CertificateError(f"executor {eid} appears twice in the key registry")
        registry[eid] = key
    if executor_keys is not None:
        if isinstance(executor_keys, Mapping):
            for eid, key in registry.items():
                got = executor_keys.get(eid)
                if got is None or _key(got, "executor_keys") != key:
                    raise CertificateError(f"executor {eid}'s registered key is not the known one")
        else:
            allowed = _keys(executor_keys, "executor_keys")
            if any(k not in allowed for k in registry.values()):
                raise CertificateError("the registry names a key that is not a known executor key")

    ids = [a.executor_id for a in cert.agreeing]
    if len(set(ids)) != len(ids):
        raise CertificateError(f"an executor agrees twice: {ids}")
    if len({a.slot for a in cert.agreeing}) != len(ids):
        raise CertificateError("two agreeing attestations come from the same slot")
    if len({a.public_key for a in cert.agreeing}) != len(ids):
        raise CertificateError("two agreeing attestations share a key")
    if cert.quorum < 1 or len(ids) < cert.quorum:
        raise CertificateError(f"{len(ids)} agreeing, quorum {cert.quorum} needed")
    if 2 * cert.quorum <= cert.compared or cert.compared < len(ids):
        raise CertificateError(
            f"quorum {cert.quorum} of {cert.compared} compared ({len(ids)} agreeing) is not a "
            "strict majority"
        )
    if cert.representative not in ids:
        raise CertificateError(f"representative {cert.representative} is not among the agreeing")
    exact = cert.tolerance == "exact"
    for a in cert.agreeing:
        if a.task_id != cert.task_id or a.kind != cert.kind:
            raise CertificateError(f"attestation of {a.executor_id} is not for this task and kind")
        # Under a tolerance, agreeing outputs may differ in their bits: only the representative's
        # digest must be the certified one. Under "exact" (bitwise) all digests are equal.
        if (exact or a.executor_id == cert.representative) and a.digest != cert.digest:
            raise CertificateError(f"{a.executor_id}'s attested digest is not the certified one")
        if registry.get(a.executor_id) != a.public_key:
            raise CertificateError(f"attestation of {a.executor_id} is not by its registered key")
        if not a.verify():
            raise CertificateError(f"attestation of {a.executor_id} is not validly signed")

    dissenters = [d.executor_id for d in cert.dissenting]
    if set(dissenters) & set(ids):
        raise CertificateError("an executor is both agreeing and dissenting")
    if len(set(dissenters)) != len(dissenters):
        raise CertificateError("an executor dissents twice")
    for d in cert.dissenting:
        a = d.attestation
        if a is None:
            continue
        if a.executor_id != d.executor_id:
            raise CertificateError(f"dissent of {d.executor_id} carries another's attestation")
        if a.task_id != cert.task_id:
            raise CertificateError(f"dissent attestation of {d.executor_id} is for another task")
        if registry.get(a.executor_id) != a.public_key:
            raise CertificateError(f"dissent of {d.executor_id} is not by its registered key")
        if not a.verify():
            raise CertificateError(f"dissent attestation of {d.executor_id} is not validly signed")
        if d.outcome == "disagreed" and a.digest == cert.digest and a.kind == cert.kind:
            raise CertificateError(f"{d.executor_id} 'disagreed' with the very answer accepted")
    if set(registry) != set(ids) | set(dissenters):
        raise CertificateError("the key registry does not match the executors named")

    if value_digest is not None and (
        not isinstance(value_digest, _BYTES_LIKE) or bytes(value_digest) != cert.digest
    ):
        raise CertificateError("the given digest differs from the certified digest")
    if has_value:
        from bft_ray.compare.digest import digest as digest_of

        try:
            got = digest_of(value)
        except Exception as exc:
            raise CertificateError(f"the value has no canonical form: {exc}") from None
        if got != cert.digest:
            raise CertificateError("the value's digest differs from the certified digest")


def verify_certificate(
    cert: Any,
    verifier_keys: Iterable[bytes] | Mapping[str, bytes],
    *,
    task_id: str | None = None,
    value: Any = dataclasses.MISSING,
    value_digest: bytes | None = None,
    executor_keys: Mapping[str, bytes] | Iterable[bytes] | None = None,
    min_verifier_signatures: int = 1,
    raise_on_failure: bool = False,
    require_commit_proof: bool = False,
) -> bool:
    """Check a certificate offline. Never raises for a malformed one (returns ``False``).

    Checks, in order: every field has its exact type and size; at least
    ``min_verifier_signatures`` valid signatures over :meth:`Certificate.body` from distinct
    keys in ``verifier_keys`` (unknown keys are ignored, a key counts once); the task id; one
    registry entry per executor named, and those keys known when ``executor_keys`` is given;
    distinct agreeing executors, slots and keys, a strict-majority quorum
    (``len(agreeing) >= quorum``, ``2 * quorum > compared >= len(agreeing)``) and a
    representative among them; every agreeing attestation for this task and kind, by its
    registered key, validly signed, and of the certified digest (the representative's always,
    every one's under the ``"exact"`` tolerance); every dissent by an executor not agreeing,
    its attestation (if any) its own, for this task, by its registered key, validly signed, and
    for ``"disagreed"`` not of the accepted answer; finally ``value`` / ``value_digest``.

    Args:
        cert: The certificate (anything: a non-certificate is simply not valid).
        verifier_keys: Public keys of the verifiers you trust (``cluster.verifier_keys()``), or
            a mapping whose values are those keys.
        task_id: If given, the certificate must be for this task (no replay of another task's).
        value: If given, the value must be the certified one (its digest is recomputed with
            :func:`bft_ray.compare.digest.digest`; a value with no digest fails).
        value_digest: If given, must equal the certified digest.
        executor_keys: If given, the registry must agree with it: with a mapping (id -> key,
            e.g. ``cluster.executor_keys()``) each registered executor must map to its
            registered key; with an iterable of keys each registered key must be among them.
        min_verifier_signatures: Distinct known verifier keys that must have signed; at least
            1. At least ``2f + 1`` are always required, where
            ``f = (len(verifier_keys) - 1) // 3``, whatever mode the certificate states (its
            signers choose it): pass the whole group's keys (``cluster.verifier_keys()``), and
            a trusted-mode certificate with its one verifier's key.
        raise_on_failure: Raise :class:`~bft_ray.errors.CertificateError` with the reason
            instead of returning ``False``.
        require_commit_proof: Require a ``"bft"`` certificate (any other mode fails) and its
            commit proof
            (a present one is always checked: the block, its chain to the committed head,
            ``2f + 1`` signatures on each QC under the given keys, the commit rule, and the
            block's claim for this task certifying this digest and representative).

    Returns:
        ``True`` when every check passes, else ``False``.

    Raises:
        CertificateError: Only with ``raise_on_failure=True``, saying which check failed.

    Example:
        >>> verify_certificate(None, [])
        False
        >>> verify_certificate("junk", [], raise_on_failure=True)
        Traceback (most recent call last):
        ...
        bft_ray.errors.CertificateError: not a Certificate: str
    """
    try:
        _check(
            cert,
            verifier_keys,
            task_id,
            value,
            value is not dataclasses.MISSING,
            value_digest,
            executor_keys,
            min_verifier_signatures,
            require_commit_proof,
        )
    except CertificateError:
        if raise_on_failure:
            raise
        return False
    except Exception as exc:  # anything malformed that slipped past the shape checks
        if raise_on_failure:
            raise CertificateError(f"malformed certificate: {type(exc).__name__}: {exc}") from None
        return False
    return True
