"""Certificates: the evidence for an accepted result, checkable offline by anyone.

A certificate binds the task, the function (module, qualified name, digest of its pickled
code), the digest of the call's arguments, the accepted answer's kind and digest, the tolerance
and quorum it was judged under, the tie-break key that chose the value among agreeing outputs
(revealed only now, after the outputs were committed), the signed attestation of every
executor that agreed, every dissent (with its attestation when there is one), the registry of
the executors' public keys, and the verifiers' signatures over all of it.
:func:`verify_certificate` checks it with nothing but public keys and never raises on bad input;
certificates round-trip through JSON (:meth:`Certificate.to_json`,
:meth:`Certificate.from_json`), so a process that never ran Ray can check one.

In the trusted-verifier mode (``verifiers=1``) one verifier signs. The BFT verifier group adds
``2f + 1`` verifier signatures over the same body.

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
    >>> verify_certificate(cert, [vkey.public_bytes], task_id="t2")
    False
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from bft_ray.crypto import SigningKey, encode_fields, verify_signature
from bft_ray.errors import CertificateError
from bft_ray.executor.attestation import KINDS, Attestation

__all__ = ["Certificate", "Dissent", "FunctionId", "VerifierSignature", "verify_certificate"]

_DOMAIN = b"bft-ray/certificate/v2"
VERSION = 2
MODES = ("trusted", "bft")
OUTCOMES = ("disagreed", "unaligned", "crashed", "timeout", "invalid", "late", "disputed")


@dataclasses.dataclass(frozen=True)
class FunctionId:
    """Which code a certificate is about: module, qualified name, digest of its pickled bytes."""

    module: str
    qualname: str
    code_digest: str


@dataclasses.dataclass(frozen=True)
class Dissent:
    """An executor whose answer was not among the agreeing, with why and its attestation."""

    executor_id: str
    outcome: str
    reason: str
    attestation: Attestation | None = None


@dataclasses.dataclass(frozen=True)
class VerifierSignature:
    """One verifier's signature over a certificate body."""

    verifier_id: str
    public_key: bytes
    signature: bytes


@dataclasses.dataclass(frozen=True)
class Certificate:
    """Evidence that ``digest`` is the accepted answer of ``task_id``.

    Attributes:
        version: Format version.
        mode: ``"trusted"`` (one verifier) or ``"bft"``.
        task_id: The verified call.
        function: The function (or method) that was called.
        args_digest: Digest of the call's arguments.
        kind: ``"value"``, or ``"error"`` when the replicas agreed that user code raised.
        digest: Digest of the accepted answer (the representative's).
        tolerance: Tolerance the outputs were compared under (described).
        quorum: Agreeing outputs that were required.
        compared: Outputs that could count when the verdict was reached.
        representative: Executor whose answer is the accepted value.
        tiebreak: Key that chose the value among agreeing outputs (revealed after commitment).
        agreeing: Signed attestations of the executors that agreed with the value.
        dissenting: Every other replica known at verdict time, with its outcome.
        executor_keys: Registry: executor id -> registered public key, for every executor named.
        signatures: Verifier signatures over :meth:`body`.
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

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def unsigned(cls, **fields: Any) -> Certificate:
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
        return [s.verifier_id for s in self.signatures]

    def body(self) -> bytes:
        """The signed bytes: every field except the signatures, unambiguously encoded."""
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
            fields += [a.message(), a.signature]
        fields.append(len(self.dissenting))
        for d in self.dissenting:
            fields += [d.executor_id, d.outcome, d.reason, int(d.attestation is not None)]
            if d.attestation is not None:
                fields += [d.attestation.message(), d.attestation.signature]
        fields.append(len(self.executor_keys))
        for eid, key in self.executor_keys:
            fields += [eid, key]
        return encode_fields(_DOMAIN, *fields)

    def summary(self) -> str:
        lines = [
            f"certificate for {self.function.qualname} task {self.task_id} ({self.mode} mode)",
            f"  {self.kind:<11} {self.digest.hex()}",
            f"  tolerance   {self.tolerance}",
            f"  quorum      {len(self.agreeing)}/{self.compared} agreeing (needed {self.quorum})",
            f"  signers     {', '.join(f'{a.executor_id}@{a.slot}' for a in self.agreeing)}",
            f"  value from  {self.representative} (chosen with key {self.tiebreak.hex()[:16]}...)",
        ]
        for d in self.dissenting:
            lines.append(f"  dissent     {d.executor_id}: {d.outcome} ({d.reason})")
        for s in self.signatures:
            lines.append(f"  verifier    {s.verifier_id} {s.public_key.hex()[:16]}... signed")
        return "\n".join(lines)

    # -- JSON -------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The certificate as JSON text (bytes as hex)."""
        data = {
            "version": self.version,
            "mode": self.mode,
            "task_id": self.task_id,
            "function": dataclasses.asdict(self.function),
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

        Raises:
            CertificateError: For anything that is not a well-formed certificate.
        """
        try:
            data = json.loads(text)
            return _from_data(data)
        except CertificateError:
            raise
        except Exception as exc:
            raise CertificateError(f"not a certificate: {type(exc).__name__}: {exc}") from None


def _need(data: Any, keys: Iterable[str], what: str) -> dict:
    keys = set(keys)
    if not isinstance(data, dict) or set(data) != keys:
        raise CertificateError(f"{what} needs exactly the fields {sorted(keys)}")
    return data


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise CertificateError(f"{what} must be text")
    return v


def _int(v: Any, what: str) -> int:
    if type(v) is not int:
        raise CertificateError(f"{what} must be an integer")
    return v


def _hex(v: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(_text(v, what))
    except ValueError:
        raise CertificateError(f"{what} is not hex") from None


def _from_data(data: Any) -> Certificate:
    names = [f.name for f in dataclasses.fields(Certificate)]
    d = _need(data, names, "a certificate")
    fn = _need(d["function"], ("module", "qualname", "code_digest"), "function")
    if not isinstance(d["agreeing"], list) or not isinstance(d["dissenting"], list):
        raise CertificateError("agreeing and dissenting must be lists")
    agreeing = []
    for a in d["agreeing"]:
        try:
            agreeing.append(Attestation.from_dict(a))
        except ValueError as exc:
            raise CertificateError(f"bad attestation: {exc}") from None
    dissenting = []
    for x in d["dissenting"]:
        x = _need(x, ("executor_id", "outcome", "reason", "attestation"), "a dissent")
        att = None
        if x["attestation"] is not None:
            try:
                att = Attestation.from_dict(x["attestation"])
            except ValueError as exc:
                raise CertificateError(f"bad dissent attestation: {exc}") from None
        dissenting.append(
            Dissent(
                _text(x["executor_id"], "dissent executor_id"),
                _text(x["outcome"], "dissent outcome"),
                _text(x["reason"], "dissent reason"),
                att,
            )
        )
    if not isinstance(d["executor_keys"], list) or not isinstance(d["signatures"], list):
        raise CertificateError("executor_keys and signatures must be lists")
    keys = []
    for entry in d["executor_keys"]:
        if not isinstance(entry, list) or len(entry) != 2:
            raise CertificateError("an executor_keys entry is [executor_id, key]")
        keys.append((_text(entry[0], "executor id"), _hex(entry[1], "executor key")))
    sigs = []
    for s in d["signatures"]:
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
    )


# -- checking --------------------------------------------------------------------------------


def _shape(cert: Any) -> None:
    """Types and sizes of every field (so the checks below cannot raise)."""
    if not isinstance(cert, Certificate):
        raise CertificateError(f"not a Certificate: {type(cert).__name__}")
    for name in ("task_id", "kind", "tolerance", "representative", "mode"):
        _text(getattr(cert, name), name)
    for name in ("quorum", "compared", "version"):
        _int(getattr(cert, name), name)
    if cert.version != VERSION or cert.mode not in MODES or cert.kind not in KINDS:
        raise CertificateError("unknown version, mode or kind")
    for name, size in (("args_digest", 32), ("digest", 32), ("tiebreak", 32)):
        v = getattr(cert, name)
        if type(v) is not bytes or len(v) != size:
            raise CertificateError(f"{name} must be {size} bytes")
    f = cert.function
    if not isinstance(f, FunctionId) or not all(
        isinstance(x, str) for x in (f.module, f.qualname, f.code_digest)
    ):
        raise CertificateError("function must be a FunctionId of text fields")
    for seq in ("agreeing", "dissenting", "executor_keys", "signatures"):
        if not isinstance(getattr(cert, seq), tuple):
            raise CertificateError(f"{seq} must be a tuple")
    for a in cert.agreeing:
        if not isinstance(a, Attestation) or not a.well_formed():
            raise CertificateError("malformed agreeing attestation")
    for d in cert.dissenting:
        if not isinstance(d, Dissent) or not all(
            isinstance(x, str) for x in (d.executor_id, d.outcome, d.reason)
        ):
            raise CertificateError("malformed dissent")
        if d.attestation is not None and (
            not isinstance(d.attestation, Attestation) or not d.attestation.well_formed()
        ):
            raise CertificateError("malformed dissent attestation")
    for entry in cert.executor_keys:
        if (
            not isinstance(entry, tuple)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or type(entry[1]) is not bytes
            or len(entry[1]) != 32
        ):
            raise CertificateError("malformed executor_keys entry")
    for s in cert.signatures:
        if (
            not isinstance(s, VerifierSignature)
            or not isinstance(s.verifier_id, str)
            or type(s.public_key) is not bytes
            or type(s.signature) is not bytes
        ):
            raise CertificateError("malformed verifier signature")


def _known_keys(executor_keys: Any) -> set[bytes]:
    if isinstance(executor_keys, Mapping):
        return {bytes(k) for k in executor_keys.values()}
    return {bytes(k) for k in executor_keys}


def _check(
    cert: Any,
    verifier_keys: Iterable[bytes],
    task_id: str | None,
    value: Any,
    has_value: bool,
    value_digest: bytes | None,
    executor_keys: Any,
    min_verifier_signatures: int,
) -> None:
    _shape(cert)
    trusted = {bytes(k) for k in verifier_keys}
    body = cert.body()
    good = {
        s.public_key
        for s in cert.signatures
        if s.public_key in trusted and verify_signature(s.public_key, body, s.signature)
    }
    if len(good) < max(1, min_verifier_signatures):
        raise CertificateError(
            f"{len(good)} valid signatures by known verifier keys, "
            f"{max(1, min_verifier_signatures)} needed (tampered, or signed by unknown keys?)"
        )
    if task_id is not None and cert.task_id != task_id:
        raise CertificateError(f"certificate is for task {cert.task_id!r}, not {task_id!r}")
    registry: dict[str, bytes] = {}
    for eid, key in cert.executor_keys:
        if eid in registry:
            raise CertificateError(f"executor {eid} appears twice in the key registry")
        registry[eid] = key
    if executor_keys is not None:
        allowed = _known_keys(executor_keys)
        if any(k not in allowed for k in registry.values()):
            raise CertificateError("the registry names a key that is not a known executor key")
    ids = [a.executor_id for a in cert.agreeing]
    if len(set(ids)) != len(ids) or len({a.slot for a in cert.agreeing}) != len(ids):
        raise CertificateError(f"duplicate agreeing executors or slots: {ids}")
    if len({a.public_key for a in cert.agreeing}) != len(ids):
        raise CertificateError("two agreeing attestations share a key")
    if len(ids) < cert.quorum or 2 * cert.quorum <= cert.compared or cert.compared < len(ids):
        raise CertificateError(
            f"{len(ids)} agreeing for quorum {cert.quorum} of {cert.compared} compared: "
            "not a strict-majority quorum"
        )
    if cert.representative not in ids:
        raise CertificateError(f"representative {cert.representative} is not among the agreeing")
    for a in cert.agreeing:
        # Agreeing outputs agree within the tolerance, so only the representative's digest must
        # be the certified one; every agreeing attestation is for this task and kind.
        if a.task_id != cert.task_id or a.kind != cert.kind:
            raise CertificateError(f"attestation of {a.executor_id} is not for this task")
        if a.executor_id == cert.representative and a.digest != cert.digest:
            raise CertificateError("the representative's attested digest is not the certified one")
        if registry.get(a.executor_id) != a.public_key or not a.verify():
            raise CertificateError(f"attestation of {a.executor_id} is not validly signed")
    dissenters = [d.executor_id for d in cert.dissenting]
    if set(dissenters) & set(ids) or len(set(dissenters)) != len(dissenters):
        raise CertificateError("an executor is both agreeing and dissenting, or dissents twice")
    for d in cert.dissenting:
        if d.outcome not in OUTCOMES:
            raise CertificateError(f"unknown dissent outcome {d.outcome!r}")
        a = d.attestation
        if a is None:
            continue
        if a.executor_id != d.executor_id or a.task_id != cert.task_id:
            raise CertificateError(f"dissent of {d.executor_id} carries another's attestation")
        if registry.get(a.executor_id) != a.public_key or not a.verify():
            raise CertificateError(f"dissent attestation of {d.executor_id} is not validly signed")
        if d.outcome == "disagreed" and a.digest == cert.digest and a.kind == cert.kind:
            raise CertificateError(f"{d.executor_id} 'disagreed' with the very digest accepted")
    named = set(ids) | set(dissenters)
    if set(registry) != named:
        raise CertificateError("the key registry does not match the executors named")
    if value_digest is not None and value_digest != cert.digest:
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
    verifier_keys: Iterable[bytes],
    *,
    task_id: str | None = None,
    value: Any = dataclasses.MISSING,
    value_digest: bytes | None = None,
    executor_keys: Mapping[str, bytes] | Iterable[bytes] | None = None,
    min_verifier_signatures: int = 1,
    raise_on_failure: bool = False,
) -> bool:
    """Check a certificate offline. Never raises for a malformed certificate (returns ``False``).

    Args:
        cert: The certificate.
        verifier_keys: Public keys of the verifiers you trust (``cluster.verifier_keys()``).
        task_id: If given, the certificate must be for this task (no replay of another task's).
        value: If given, the value must be the certified one (its digest is recomputed).
        value_digest: If given, must equal the certified digest.
        executor_keys: If given (id -> key, or keys), every registered key must be among these.
        min_verifier_signatures: Distinct known verifier keys that must have signed (``2f + 1``
            for a BFT group).
        raise_on_failure: Raise :class:`CertificateError` with the reason instead of
            returning ``False``.

    Returns:
        ``True`` when every check passes.
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
