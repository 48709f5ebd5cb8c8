"""Attack 5: certificates rewritten, replayed, malformed.

One real certificate (four executors, replicas=4, quorum=3; slot 3 lies and answers first, so
its signed dissent is in the certificate) is rewritten field by field: every rewrite of the
body, of an agreeing attestation or of the dissent must fail ``verify_certificate``. A
certificate of another task with the same output must not verify for this task. Malformed
certificates (junk objects, fields of the wrong type, truncated bytes) give ``False``, never an
exception. The JSON form round-trips and verifies in a process that never started Ray; a JSON
text with a modified digest fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from adversarial._util import by_value, start, stop

import bft_ray
from bft_ray import faults

pytestmark = pytest.mark.ray
by_value(__name__)

N = 4
LIAR = 3
VALUE = 7


@bft_ray.verified_remote(replicas=N, quorum=3)
def seven(k):
    return VALUE


@pytest.fixture(scope="module")
def cluster():
    c = start(N)
    yield c
    stop(c)


@pytest.fixture(scope="module")
def certs(cluster):
    """Two certificates of the same output for two tasks, each with the liar's signed dissent."""
    for i in range(N):
        if i != LIAR:
            cluster.inject_fault(i, faults.slow(0.3))  # honest, but the liar answers first
    cluster.inject_fault(LIAR, lambda out: out + 1)
    try:
        ref_a, ref_b = seven.remote(0), seven.remote(0)
        assert bft_ray.get([ref_a, ref_b], timeout=60) == [VALUE, VALUE]
        a, b = bft_ray.certificate(ref_a), bft_ray.certificate(ref_b)
    finally:
        for i in range(N):
            cluster.inject_fault(i, "honest")
    for cert in (a, b):
        assert any(d.attestation is not None for d in cert.dissenting), cert.dissenting
    return types.SimpleNamespace(
        a=a, b=b, ref_a=ref_a, ref_b=ref_b, keys=cluster.verifier_keys(), value=VALUE
    )


def _verify(cert, keys, **kw) -> bool:
    try:
        return bft_ray.verify_certificate(cert, keys, **kw)
    except Exception as exc:  # the claim: checking never raises
        pytest.fail(f"verify_certificate raised {type(exc).__name__}: {exc}")


def test_the_real_certificates_verify(certs, cluster):
    assert _verify(certs.a, certs.keys, value=VALUE)
    assert _verify(certs.b, certs.keys, value=VALUE)
    assert _verify(certs.a, certs.keys, task_id=bft_ray.task_id(certs.ref_a), value=VALUE)
    assert _verify(certs.a, certs.keys, executor_keys=cluster.executor_keys())


# -- rewrites ---------------------------------------------------------------------------------


def _dissent(cert):
    return next(d for d in cert.dissenting if d.attestation is not None)


def _set_dissent(cert, new):
    old = _dissent(cert)
    rest = tuple(d for d in cert.dissenting if d is not old)
    return dataclasses.replace(cert, dissenting=rest if new is None else (new, *rest))


def _dissent_att(cert, **changes):
    d = _dissent(cert)
    return _set_dissent(
        cert, dataclasses.replace(d, attestation=dataclasses.replace(d.attestation, **changes))
    )


def _other(cert):
    """An agreeing attestation that is not the representative's (index, attestation)."""
    return next((i, a) for i, a in enumerate(cert.agreeing) if a.executor_id != cert.representative)


def _set_agreeing(cert, i, att):
    agreeing = list(cert.agreeing)
    agreeing[i] = att
    return dataclasses.replace(cert, agreeing=tuple(agreeing))


def _agreeing_att(cert, **changes):
    i, a = _other(cert)
    return _set_agreeing(cert, i, dataclasses.replace(a, **changes))


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def _liar_agrees(cert):
    d = _dissent(cert)
    return dataclasses.replace(_set_dissent(cert, None), agreeing=(*cert.agreeing, d.attestation))


def _same_executor_other_task(cert, other):
    i, a = _other(cert)
    replay = next(x for x in other.agreeing if x.executor_id == a.executor_id)
    return _set_agreeing(cert, i, replay)


def _dissent_from_other_task(cert, other):
    d = _dissent(cert)
    replay = next(x for x in other.dissenting if x.executor_id == d.executor_id)
    return _set_dissent(cert, replay)


def _resigned(cert, keep_real: bool):
    from bft_ray.crypto import SigningKey

    forged = _set_dissent(cert, dataclasses.replace(_dissent(cert), outcome="unaligned"))
    real = cert.signatures if keep_real else ()
    return dataclasses.replace(forged, signatures=real).signed_by(
        SigningKey.generate(), "verifier0"
    )


REWRITES = {
    # the liar's dissent: hide it, soften it, or move its evidence onto someone else
    "dissent.removed": lambda c, o: _set_dissent(c, None),
    "dissent.outcome": lambda c, o: _set_dissent(
        c, dataclasses.replace(_dissent(c), outcome="unaligned")
    ),
    "dissent.reason": lambda c, o: _set_dissent(
        c, dataclasses.replace(_dissent(c), reason="agreed after all")
    ),
    "dissent.executor_id": lambda c, o: _set_dissent(
        c, dataclasses.replace(_dissent(c), executor_id=c.agreeing[0].executor_id)
    ),
    "dissent.attestation-dropped": lambda c, o: _set_dissent(
        c, dataclasses.replace(_dissent(c), attestation=None)
    ),
    "dissent.att.executor_id": lambda c, o: _dissent_att(c, executor_id=c.agreeing[0].executor_id),
    "dissent.att.task_id": lambda c, o: _dissent_att(c, task_id=o.task_id),
    "dissent.att.attempt": lambda c, o: _dissent_att(
        c, attempt=_dissent(c).attestation.attempt + 1
    ),
    "dissent.att.slot": lambda c, o: _dissent_att(c, slot=c.agreeing[0].slot),
    "dissent.att.kind": lambda c, o: _dissent_att(c, kind="error"),
    "dissent.att.digest": lambda c, o: _dissent_att(c, digest=c.digest),
    "dissent.att.public_key": lambda c, o: _dissent_att(c, public_key=c.agreeing[0].public_key),
    "dissent.att.signature": lambda c, o: _dissent_att(
        c, signature=_flip(_dissent(c).attestation.signature)
    ),
    "dissent.att-of-another-task": _dissent_from_other_task,
    # the agreeing attestations
    "agreeing.executor_id": lambda c, o: _agreeing_att(c, executor_id=_dissent(c).executor_id),
    "agreeing.task_id": lambda c, o: _agreeing_att(c, task_id=o.task_id),
    "agreeing.attempt": lambda c, o: _agreeing_att(c, attempt=_other(c)[1].attempt + 1),
    "agreeing.slot": lambda c, o: _agreeing_att(
        c, slot=c.agreeing[0].slot if _other(c)[0] else c.agreeing[1].slot
    ),
    "agreeing.kind": lambda c, o: _agreeing_att(c, kind="error"),
    "agreeing.digest": lambda c, o: _agreeing_att(c, digest=_dissent(c).attestation.digest),
    "agreeing.public_key": lambda c, o: _agreeing_att(
        c, public_key=_dissent(c).attestation.public_key
    ),
    "agreeing.signature": lambda c, o: _agreeing_att(c, signature=_flip(_other(c)[1].signature)),
    "agreeing.removed": lambda c, o: dataclasses.replace(c, agreeing=c.agreeing[:-1]),
    "agreeing.duplicated": lambda c, o: dataclasses.replace(
        c, agreeing=(*c.agreeing[:-1], c.agreeing[0])
    ),
    "agreeing.liar-moved-in": lambda c, o: _liar_agrees(c),
    "agreeing.att-of-another-task": _same_executor_other_task,
    # the body
    "task_id": lambda c, o: dataclasses.replace(c, task_id=o.task_id),
    "function.module": lambda c, o: dataclasses.replace(
        c, function=dataclasses.replace(c.function, module="elsewhere")
    ),
    "function.qualname": lambda c, o: dataclasses.replace(
        c, function=dataclasses.replace(c.function, qualname="other_function")
    ),
    "function.code_digest": lambda c, o: dataclasses.replace(
        c, function=dataclasses.replace(c.function, code_digest="00" * 32)
    ),
    "args_digest": lambda c, o: dataclasses.replace(c, args_digest=bytes(32)),
    "kind": lambda c, o: dataclasses.replace(c, kind="error"),
    "digest": lambda c, o: dataclasses.replace(c, digest=_dissent(c).attestation.digest),
    "tolerance": lambda c, o: dataclasses.replace(c, tolerance="allclose(rtol=1, atol=1)"),
    "quorum": lambda c, o: dataclasses.replace(c, quorum=1),
    "compared": lambda c, o: dataclasses.replace(c, compared=c.compared - 1),
    "representative": lambda c, o: dataclasses.replace(c, representative=_other(c)[1].executor_id),
    "tiebreak": lambda c, o: dataclasses.replace(c, tiebreak=bytes(32)),
    "executor_keys.swapped": lambda c, o: dataclasses.replace(
        c,
        executor_keys=tuple(
            (e, _dissent(c).attestation.public_key if e == c.agreeing[0].executor_id else k)
            for e, k in c.executor_keys
        ),
    ),
    "executor_keys.entry-dropped": lambda c, o: dataclasses.replace(
        c, executor_keys=c.executor_keys[1:]
    ),
    "mode": lambda c, o: dataclasses.replace(c, mode="bft"),
    "version": lambda c, o: dataclasses.replace(c, version=1),
    "signatures.none": lambda c, o: dataclasses.replace(c, signatures=()),
    "signatures.flipped": lambda c, o: dataclasses.replace(
        c,
        signatures=tuple(
            dataclasses.replace(s, signature=_flip(s.signature)) for s in c.signatures
        ),
    ),
    "re-signed-by-an-unknown-key": lambda c, o: _resigned(c, keep_real=False),
    "re-signed-beside-the-real-signature": lambda c, o: _resigned(c, keep_real=True),
}


@pytest.mark.parametrize("rewrite", list(REWRITES))
def test_every_rewrite_of_a_certificate_is_detected(certs, rewrite):
    assert _verify(certs.a, certs.keys, value=VALUE)  # the original is good
    forged = REWRITES[rewrite](certs.a, certs.b)
    assert forged != certs.a
    assert _verify(forged, certs.keys) is False, rewrite
    assert _verify(forged, certs.keys, value=VALUE) is False, rewrite


def test_a_certificate_of_another_task_with_the_same_output_is_not_a_proof(certs):
    a, b = certs.a, certs.b
    assert a.digest == b.digest and a.task_id != b.task_id
    assert _verify(b, certs.keys, task_id=bft_ray.task_id(certs.ref_b), value=VALUE)
    assert _verify(b, certs.keys, task_id=bft_ray.task_id(certs.ref_a)) is False
    assert _verify(b, certs.keys, task_id=bft_ray.task_id(certs.ref_a), value=VALUE) is False
    assert _verify(a, certs.keys, task_id=bft_ray.task_id(certs.ref_a))


@pytest.mark.parametrize("other", [8, 7.0, np.int64(7), True, "7", [7], None], ids=repr)
def test_a_certificate_vouches_for_its_value_only(certs, other):
    assert _verify(certs.a, certs.keys, value=VALUE)
    assert _verify(certs.a, certs.keys, value=other) is False


def test_a_certificate_binds_the_executor_key_registry(certs, cluster):
    known = dict(cluster.executor_keys())
    assert _verify(certs.a, certs.keys, executor_keys=known)
    liar_key = _dissent(certs.a).attestation.public_key
    honest = certs.a.agreeing[0].executor_id
    assert _verify(certs.a, certs.keys, executor_keys={**known, honest: liar_key}) is False
    assert _verify(certs.a, certs.keys, executor_keys=[liar_key]) is False


# -- malformed ----------------------------------------------------------------------------------


def _fields_of(cert):
    return {f.name: getattr(cert, f.name) for f in dataclasses.fields(cert)}


JUNK_OBJECTS = {
    "None": lambda c: None,
    "empty-dict": lambda c: {},
    "dict-of-its-fields": lambda c: _fields_of(c),
    "duck-typed-namespace": lambda c: types.SimpleNamespace(**_fields_of(c)),
    "empty-list": lambda c: [],
    "string": lambda c: "certificate",
    "json-text": lambda c: c.to_json(),
    "int": lambda c: 42,
    "bytes": lambda c: b"\x00" * 64,
    "object": lambda c: object(),
    "an-attestation": lambda c: c.agreeing[0],
    "a-dissent": lambda c: c.dissenting[0],
}


@pytest.mark.parametrize("junk", list(JUNK_OBJECTS))
def test_junk_is_not_a_certificate(certs, junk):
    assert _verify(JUNK_OBJECTS[junk](certs.a), certs.keys) is False


def _att0(c, **changes):
    return dataclasses.replace(
        c, agreeing=(dataclasses.replace(c.agreeing[0], **changes), *c.agreeing[1:])
    )


BAD_FIELDS = {
    "task_id=None": lambda c: dataclasses.replace(c, task_id=None),
    "task_id=int": lambda c: dataclasses.replace(c, task_id=7),
    "task_id=bytes": lambda c: dataclasses.replace(c, task_id=c.task_id.encode()),
    "digest=None": lambda c: dataclasses.replace(c, digest=None),
    "digest=hex-str": lambda c: dataclasses.replace(c, digest=c.digest.hex()),
    "digest=truncated": lambda c: dataclasses.replace(c, digest=c.digest[:-1]),
    "digest=extended": lambda c: dataclasses.replace(c, digest=c.digest + b"\x00"),
    "quorum=None": lambda c: dataclasses.replace(c, quorum=None),
    "quorum=str": lambda c: dataclasses.replace(c, quorum="3"),
    "quorum=float": lambda c: dataclasses.replace(c, quorum=3.0),
    "quorum=huge": lambda c: dataclasses.replace(c, quorum=2**70),
    "compared=negative": lambda c: dataclasses.replace(c, compared=-1),
    "representative=None": lambda c: dataclasses.replace(c, representative=None),
    "tolerance=None": lambda c: dataclasses.replace(c, tolerance=None),
    "mode=None": lambda c: dataclasses.replace(c, mode=None),
    "agreeing=None": lambda c: dataclasses.replace(c, agreeing=None),
    "agreeing=list": lambda c: dataclasses.replace(c, agreeing=list(c.agreeing)),
    "agreeing=(None,)": lambda c: dataclasses.replace(c, agreeing=(None, *c.agreeing[1:])),
    "agreeing=(str,)": lambda c: dataclasses.replace(c, agreeing=("ex0", *c.agreeing[1:])),
    "agreeing=()": lambda c: dataclasses.replace(c, agreeing=()),
    "dissenting=None": lambda c: dataclasses.replace(c, dissenting=None),
    "dissenting=(None,)": lambda c: dataclasses.replace(c, dissenting=(None,)),
    "agreeing[0].attempt=str": lambda c: _att0(c, attempt="0"),
    "agreeing[0].attempt=None": lambda c: _att0(c, attempt=None),
    "agreeing[0].attempt=huge": lambda c: _att0(c, attempt=2**64),
    "agreeing[0].task_id=None": lambda c: _att0(c, task_id=None),
    "agreeing[0].digest=None": lambda c: _att0(c, digest=None),
    "agreeing[0].digest=truncated": lambda c: _att0(c, digest=c.agreeing[0].digest[:-1]),
    "agreeing[0].public_key=truncated": lambda c: _att0(
        c, public_key=c.agreeing[0].public_key[:-1]
    ),
    "agreeing[0].signature=truncated": lambda c: _att0(c, signature=c.agreeing[0].signature[:-1]),
    "agreeing[0].signature=None": lambda c: _att0(c, signature=None),
    "dissent.outcome=None": lambda c: _set_dissent(
        c, dataclasses.replace(_dissent(c), outcome=None)
    ),
    "dissent.attestation=str": lambda c: _set_dissent(
        c, dataclasses.replace(_dissent(c), attestation="evidence")
    ),
    "dissent.att.digest=None": lambda c: _dissent_att(c, digest=None),
    # fields of the new format
    "kind=None": lambda c: dataclasses.replace(c, kind=None),
    "version=str": lambda c: dataclasses.replace(c, version="2"),
    "function=None": lambda c: dataclasses.replace(c, function=None),
    "function=tuple": lambda c: dataclasses.replace(c, function=tuple(vars(c.function).values())),
    "function.qualname=None": lambda c: dataclasses.replace(
        c, function=dataclasses.replace(c.function, qualname=None)
    ),
    "args_digest=None": lambda c: dataclasses.replace(c, args_digest=None),
    "args_digest=truncated": lambda c: dataclasses.replace(c, args_digest=c.args_digest[:-1]),
    "tiebreak=truncated": lambda c: dataclasses.replace(c, tiebreak=c.tiebreak[:7]),
    "executor_keys=None": lambda c: dataclasses.replace(c, executor_keys=None),
    "executor_keys=dict": lambda c: dataclasses.replace(c, executor_keys=dict(c.executor_keys)),
    "executor_keys=short-entry": lambda c: dataclasses.replace(
        c, executor_keys=((c.executor_keys[0][0],), *c.executor_keys[1:])
    ),
    "executor_keys=truncated-key": lambda c: dataclasses.replace(
        c, executor_keys=((c.executor_keys[0][0], c.executor_keys[0][1][:-1]), *c.executor_keys[1:])
    ),
    "signatures=None": lambda c: dataclasses.replace(c, signatures=None),
    "signatures=(None,)": lambda c: dataclasses.replace(c, signatures=(None,)),
    "signatures[0].signature=truncated": lambda c: dataclasses.replace(
        c,
        signatures=(
            dataclasses.replace(c.signatures[0], signature=c.signatures[0].signature[:-1]),
        ),
    ),
}


@pytest.mark.parametrize("bad", list(BAD_FIELDS))
def test_a_malformed_certificate_is_false_never_an_exception(certs, bad):
    forged = BAD_FIELDS[bad](certs.a)
    assert _verify(forged, certs.keys) is False
    assert _verify(forged, certs.keys, task_id=bft_ray.task_id(certs.ref_a), value=VALUE) is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"verifier_keys": None},
        {"verifier_keys": "key"},
        {"verifier_keys": b"\x00" * 32},
        {"verifier_keys": [None, 3]},
        {"task_id": 5},
        {"value": object()},
        {"value": {1, 2}},
        {"executor_keys": "x"},
        {"executor_keys": {"ex0": None}},
        {"min_verifier_signatures": "1"},
    ],
    ids=lambda kw: ",".join(f"{k}={v!r}"[:40] for k, v in kw.items()),
)
def test_malformed_arguments_give_false_never_an_exception(certs, kwargs):
    kw = dict(kwargs)
    keys = kw.pop("verifier_keys", certs.keys)
    assert _verify(certs.a, keys, **kw) is False


# -- JSON -----------------------------------------------------------------------------------


def test_the_json_form_round_trips_and_verifies(certs):
    text = certs.a.to_json()
    json.loads(text)  # plain JSON
    again = bft_ray.Certificate.from_json(text)
    assert again == certs.a
    assert _verify(again, certs.keys, task_id=bft_ray.task_id(certs.ref_a), value=VALUE)


def _edit(text, fn):
    data = json.loads(text)
    fn(data)
    return json.dumps(data)


JSON_EDITS = {
    "digest": lambda d: d.update(digest="00" * 32),
    "digest-everywhere": None,  # every occurrence of the digest's hex, attestations included
    "quorum": lambda d: d.update(quorum=1),
    "task_id": lambda d: d.update(task_id="another-task"),
    "dissent-removed": lambda d: d.update(
        dissenting=[x for x in d["dissenting"] if x["attestation"] is None]
    ),
}


@pytest.mark.parametrize("edit", list(JSON_EDITS))
def test_an_edited_json_certificate_fails(certs, edit):
    text = certs.a.to_json()
    if JSON_EDITS[edit] is None:
        forged = text.replace(certs.a.digest.hex(), _dissent(certs.a).attestation.digest.hex())
    else:
        forged = _edit(text, JSON_EDITS[edit])
    assert forged != text
    try:
        cert = bft_ray.Certificate.from_json(forged)
    except bft_ray.CertificateError:
        return  # refused as malformed: also a failure to verify
    assert _verify(cert, certs.keys) is False


@pytest.mark.parametrize(
    "text",
    ["", "null", "[]", "{}", "{", '{"version": 2}', "TRUNCATED", "EXTRA-FIELD", "UPPER-HEX"],
)
def test_malformed_json_is_refused_with_a_certificate_error(certs, text):
    real = certs.a.to_json()
    if text == "TRUNCATED":
        text = real[: len(real) // 2]
    elif text == "EXTRA-FIELD":
        text = _edit(real, lambda d: d.update(extra=1))
    elif text == "UPPER-HEX":
        text = real.replace(certs.a.digest.hex(), certs.a.digest.hex().upper())
    with pytest.raises(bft_ray.CertificateError):
        bft_ray.Certificate.from_json(text)


OFFLINE = """
import json, sys
from bft_ray.verifier.certificate import Certificate, verify_certificate
data = json.load(sys.stdin)
keys = [bytes.fromhex(k) for k in data["keys"]]
good = verify_certificate(Certificate.from_json(data["cert"]), keys, task_id=data["task"], value=7)
bad = verify_certificate(Certificate.from_json(data["forged"]), keys)
import ray
print(json.dumps([good, bad, ray.is_initialized()]))
"""


def test_a_process_that_never_ran_ray_checks_the_json(certs):
    text = certs.a.to_json()
    forged = _edit(text, JSON_EDITS["digest"])
    root = pathlib.Path(bft_ray.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("RAY_ADDRESS", None)
    payload = json.dumps(
        {
            "cert": text,
            "forged": forged,
            "task": bft_ray.task_id(certs.ref_a),
            "keys": [k.hex() for k in certs.keys],
        }
    )
    out = subprocess.run(
        [sys.executable, "-c", OFFLINE],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, False, False]
