"""Certificates: the evidence for an accepted result, checkable offline.

A certificate names the task, the accepted output's digest, the tolerance and quorum it was
judged under, the signed attestations of the executors that agreed (and of those that did
not), and the verifier's signature over all of it. :func:`verify_certificate` checks it with
nothing but public keys; pass the value too and it checks that the value is the certified one.

In the trusted-verifier mode (``verifiers=1``) one verifier signs. The BFT verifier group adds a
quorum certificate of ``2f + 1`` verifier signatures over the same body.

Example:
    >>> import numpy as np
    >>> from bft_ray.crypto import SigningKey
    >>> from bft_ray.compare.digest import digest
    >>> from bft_ray.executor.attestation import Attestation
    >>> value = np.arange(3.0)
    >>> ex = [SigningKey.generate() for _ in range(2)]
    >>> atts = tuple(Attestation.create(k, "t1", 0, f"ex{i}", digest(value)) for i, k in enumerate(ex))
    >>> vkey = SigningKey.generate()
    >>> cert = Certificate.issue(vkey, "verifier0", task_id="t1", name="f", digest=digest(value),
    ...     tolerance="exact", quorum=2, compared=2, representative="ex0", agreeing=atts, dissenting=())
    >>> verify_certificate(cert, [vkey.public_bytes], value=value)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from bft_ray.compare.digest import digest as digest_of
from bft_ray.crypto import SigningKey, encode_fields, verify_signature
from bft_ray.errors import CertificateError
from bft_ray.executor.attestation import Attestation

__all__ = ["Certificate", "Dissent", "verify_certificate"]

_DOMAIN = b"bft-ray/certificate/v1"


@dataclasses.dataclass(frozen=True)
class Dissent:
    """An executor whose answer was not accepted, with why and (when signed) its attestation."""

    executor_id: str
    outcome: str
    reason: str
    attestation: Attestation | None = None


@dataclasses.dataclass(frozen=True)
class Certificate:
    """Evidence that ``digest`` is the accepted answer of ``task_id``.

    Attributes:
        task_id: The verified call.
        name: Function or method name.
        digest: Digest of the accepted output (the representative's).
        tolerance: Tolerance the outputs were compared under (described).
        quorum: Agreeing outputs that were required.
        compared: Valid outputs compared when the verdict was reached.
        representative: Executor whose output is the accepted value.
        agreeing: Signed attestations of the executors in the accepted cluster.
        dissenting: Executors that disagreed, failed or were invalid at verdict time.
        mode: ``trusted`` (one verifier) or ``bft``.
        verifier_id: Who signed.
        verifier_key: The signer's public key.
        signature: Verifier signature over :meth:`body`.
    """

    task_id: str
    name: str
    digest: bytes
    tolerance: str
    quorum: int
    compared: int
    representative: str
    agreeing: tuple[Attestation, ...]
    dissenting: tuple[Dissent, ...]
    mode: str
    verifier_id: str
    verifier_key: bytes
    signature: bytes

    @property
    def signers(self) -> list[str]:
        """Executors whose signed outputs agreed."""
        return [a.executor_id for a in self.agreeing]

    def body(self) -> bytes:
        """The signed bytes: every field except the signature."""
        fields: list[bytes | str | int] = [
            self.task_id,
            self.name,
            self.digest,
            self.tolerance,
            self.quorum,
            self.compared,
            self.representative,
            self.mode,
            self.verifier_id,
            self.verifier_key,
            len(self.agreeing),
        ]
        for a in self.agreeing:
            fields += [a.executor_id, a.attempt, a.digest, a.public_key, a.signature]
        fields.append(len(self.dissenting))
        for d in self.dissenting:
            fields += [d.executor_id, d.outcome, d.reason]
            if d.attestation is not None:
                fields += [d.attestation.digest, d.attestation.signature]
        return encode_fields(_DOMAIN, *fields)

    @classmethod
    def issue(
        cls, key: SigningKey, verifier_id: str, *, mode: str = "trusted", **fields: Any
    ) -> Certificate:
        unsigned = cls(
            mode=mode,
            verifier_id=verifier_id,
            verifier_key=key.public_bytes,
            signature=b"",
            **fields,
        )
        return dataclasses.replace(unsigned, signature=key.sign(unsigned.body()))

    def summary(self) -> str:
        lines = [
            f"certificate for {self.name} task {self.task_id} ({self.mode} mode)",
            f"  digest      {self.digest.hex()}",
            f"  tolerance   {self.tolerance}",
            f"  quorum      {len(self.agreeing)}/{self.compared} agreeing (needed {self.quorum})",
            f"  signers     {', '.join(self.signers)}",
        ]
        for d in self.dissenting:
            lines.append(f"  dissent     {d.executor_id}: {d.outcome} ({d.reason})")
        lines.append(f"  verifier    {self.verifier_id} {self.verifier_key.hex()[:16]}... signed")
        return "\n".join(lines)


def _check(
    cert: Certificate,
    verifier_keys: Iterable[bytes],
    executor_keys: Iterable[bytes] | None,
    value: Any,
    has_value: bool,
) -> None:
    keys = set(verifier_keys)
    if cert.verifier_key not in keys:
        raise CertificateError(
            f"certificate signed by an unknown verifier key {cert.verifier_key.hex()[:16]}"
        )
    if not verify_signature(cert.verifier_key, cert.body(), cert.signature):
        raise CertificateError("verifier signature does not match the certificate body (tampered?)")
    signers = [a.executor_id for a in cert.agreeing]
    if len(set(signers)) != len(signers) or len({a.public_key for a in cert.agreeing}) != len(
        signers
    ):
        raise CertificateError(f"duplicate signers in certificate: {signers}")
    if len(signers) < cert.quorum or cert.quorum * 2 <= cert.compared:
        raise CertificateError(
            f"{len(signers)} agreeing signers for quorum {cert.quorum} of {cert.compared} compared: "
            "not a strict-majority quorum"
        )
    allowed = set(executor_keys) if executor_keys is not None else None
    rep_seen = False
    for a in cert.agreeing:
        if a.task_id != cert.task_id:
            raise CertificateError(
                f"attestation of {a.executor_id} is for task {a.task_id}, not {cert.task_id}"
            )
        if not a.verify():
            raise CertificateError(f"attestation signature of {a.executor_id} is invalid")
        if allowed is not None and a.public_key not in allowed:
            raise CertificateError(
                f"{a.executor_id} signed with a key that is not a known executor key"
            )
        if a.executor_id == cert.representative:
            rep_seen = True
            if a.digest != cert.digest:
                raise CertificateError(
                    "representative's attested digest differs from the certified digest"
                )
    if not rep_seen:
        raise CertificateError(
            f"representative {cert.representative} has no attestation in the certificate"
        )
    if has_value and digest_of(value) != cert.digest:
        raise CertificateError("the value's digest differs from the certified digest")


def verify_certificate(
    cert: Certificate,
    verifier_keys: Iterable[bytes],
    *,
    executor_keys: Iterable[bytes] | None = None,
    value: Any = dataclasses.MISSING,
    raise_on_failure: bool = False,
) -> bool:
    """Check a certificate offline.

    Args:
        cert: The certificate.
        verifier_keys: Public keys of the verifiers you trust (``cluster.verifier_keys()``).
        executor_keys: If given, every agreeing attestation must be signed by one of these.
        value: If given, the value must be the certified one (its digest is recomputed).
        raise_on_failure: Raise :class:`CertificateError` with the reason instead of
            returning ``False``.

    Returns:
        ``True`` when every check passes.
    """
    try:
        _check(cert, verifier_keys, executor_keys, value, value is not dataclasses.MISSING)
    except CertificateError:
        if raise_on_failure:
            raise
        return False
    return True
