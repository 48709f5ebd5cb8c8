"""Certificates and attestations, checked offline: pure, no Ray, milliseconds.

Every field a certificate carries is bound: rewriting any one of them (with or without the
verifier re-signing the body) makes :func:`verify_certificate` fail, and no input, however
malformed, makes it raise.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft_ray.compare.digest import digest
from bft_ray.crypto import SigningKey
from bft_ray.errors import CertificateError
from bft_ray.executor.attestation import Attestation
from bft_ray.verifier.certificate import (
    Certificate,
    Dissent,
    FunctionId,
    VerifierSignature,
    verify_certificate,
)

EX = [SigningKey.generate() for _ in range(6)]  # ex0..ex4 are registered, EX[5] is a rogue
VK = [SigningKey.generate() for _ in range(4)]
VKEYS = [k.public_bytes for k in VK]
ROGUE = SigningKey.generate()
VALUE = np.arange(3.0)
D = digest(VALUE)
OTHER = digest(VALUE + 1)
THIRD = digest(VALUE + 2)
FN = FunctionId("pkg.mod", "train_step", "ab" * 32)
replace = dataclasses.replace


def att(
    i: int,
    *,
    task: str = "t1",
    dig: bytes = D,
    kind: str = "value",
    slot: str | None = None,
    eid: str | None = None,
    key: SigningKey | None = None,
    attempt: int = 0,
) -> Attestation:
    return Attestation.create(
        key or EX[i], task, attempt, eid or f"ex{i}", slot or f"slot{i}", kind, dig
    )


def fields(**over: Any) -> dict[str, Any]:
    f: dict[str, Any] = dict(
        task_id="t1",
        function=FN,
        args_digest=b"a" * 32,
        kind="value",
        digest=D,
        tolerance="exact",
        quorum=3,
        compared=4,
        representative="ex1",
        tiebreak=b"k" * 32,
        agreeing=(att(0), att(1), att(2)),
        dissenting=(
            Dissent("ex3", "disagreed", "differs from the value", att(3, dig=OTHER)),
            Dissent("ex4", "crashed", "actor died", None),
        ),
        executor_keys=tuple((f"ex{i}", EX[i].public_bytes) for i in range(5)),
    )
    f.update(over)
    return f


def make(signers: tuple[int, ...] = (0,), mode: str = "trusted", **over: Any) -> Certificate:
    if mode == "bft":
        over = {"block_round": 5, "block_id": b"B" * 32, **over}
    cert = Certificate.unsigned(mode=mode, **fields(**over))
    for i in signers:
        cert = cert.signed_by(VK[i], f"verifier{i}")
    return cert


def resign(cert: Certificate) -> Certificate:
    """The same body signed afresh by verifier 0 (a verifier vouching for a forged body)."""
    return replace(cert, signatures=()).signed_by(VK[0], "verifier0")


def ok(cert: Any, **kw: Any) -> bool:
    return verify_certificate(cert, VKEYS[:1], **kw)


BASE = make()
DISSENT = BASE.dissenting[0]


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


# -- a valid certificate ---------------------------------------------------------------------


def test_valid_certificate_verifies_with_every_optional_check():
    assert ok(BASE)
    assert ok(
        BASE,
        task_id="t1",
        value=VALUE,
        value_digest=D,
        executor_keys={f"ex{i}": EX[i].public_bytes for i in range(5)},
    )
    assert ok(BASE, executor_keys=[k.public_bytes for k in EX[:5]])
    assert ok(BASE, executor_keys={f"ex{i}": EX[i].public_bytes for i in range(6)}.values())
    assert verify_certificate(BASE, {"v0": VKEYS[0]})  # a mapping of verifier keys
    assert BASE.signers == ["ex0", "ex1", "ex2"] and BASE.verifier_ids == ["verifier0"]
    text = BASE.summary()
    assert "t1" in text and "ex3: disagreed" in text and D.hex() in text


def test_json_round_trip_is_exact():
    text = BASE.to_json()
    back = Certificate.from_json(text)
    assert back == BASE and back.body() == BASE.body() and back.to_json() == text
    assert ok(back, task_id="t1", value=VALUE)
    assert Certificate.from_json(text.encode()) == BASE
    bft = make(signers=(0, 1, 2), mode="bft")
    assert Certificate.from_json(bft.to_json()) == bft


def test_issue_is_unsigned_then_signed_by():
    f = fields()
    issued = Certificate.issue(VK[0], "verifier0", **f)
    assert issued == Certificate.unsigned(**f).signed_by(VK[0], "verifier0") == BASE
    assert Certificate.unsigned(**f).signatures == () and not ok(Certificate.unsigned(**f))


def test_value_and_digest_checks():
    assert not ok(BASE, value=VALUE + 1)
    assert not ok(BASE, value=VALUE.astype(np.float32))
    assert not ok(BASE, value=object())  # no canonical form: not valid, no exception
    assert not ok(BASE, value_digest=OTHER)
    assert not ok(BASE, value_digest="not bytes")
    assert ok(BASE, value_digest=bytearray(D))


# -- every field is bound --------------------------------------------------------------------


def _att_field(where: str, name: str, value: Any) -> Callable[[Certificate], Certificate]:
    def mutate(c: Certificate) -> Certificate:
        if where == "agreeing":
            a = replace(c.agreeing[1], **{name: value})
            return replace(c, agreeing=(c.agreeing[0], a, *c.agreeing[2:]))
        d = replace(DISSENT, attestation=replace(DISSENT.attestation, **{name: value}))
        return replace(c, dissenting=(d, *c.dissenting[1:]))

    return mutate


ATT_VALUES = {
    "task_id": "t2",
    "attempt": 1,
    "executor_id": "ex9",
    "slot": "slot9",
    "kind": "error",
    "digest": THIRD,
    "public_key": EX[5].public_bytes,
    "signature": flip(BASE.agreeing[1].signature),
}

# Rewrites that the body signature alone catches, and that still fail when the verifier re-signs
# the forged body (the cross-checks catch them).
CROSS_CHECKED: dict[str, Callable[[Certificate], Certificate]] = {
    "task_id": lambda c: replace(c, task_id="t2"),
    "kind": lambda c: replace(c, kind="error"),
    "digest": lambda c: replace(c, digest=OTHER),
    "quorum down": lambda c: replace(c, quorum=2),
    "quorum up": lambda c: replace(c, quorum=4),
    "compared up": lambda c: replace(c, compared=6),
    "compared down": lambda c: replace(c, compared=2),
    "representative": lambda c: replace(c, representative="ex3"),
    "agreeing dropped": lambda c: replace(c, agreeing=c.agreeing[:2]),
    "agreeing added": lambda c: replace(c, agreeing=(*c.agreeing, att(3))),
    "dissent executor id": lambda c: replace(
        c, dissenting=(replace(DISSENT, executor_id="ex4"), *c.dissenting[1:])
    ),
    "dissent names an agreeing executor": lambda c: replace(
        c, dissenting=(replace(DISSENT, executor_id="ex0"), *c.dissenting[1:])
    ),
    "dissent dropped (registry then names an unknown)": lambda c: replace(
        c, dissenting=c.dissenting[1:]
    ),
    "dissent twice": lambda c: replace(c, dissenting=(DISSENT, *c.dissenting)),
    "registry key": lambda c: replace(
        c, executor_keys=(("ex0", EX[5].public_bytes), *c.executor_keys[1:])
    ),
    "registry dissent key": lambda c: replace(
        c,
        executor_keys=(*c.executor_keys[:3], ("ex3", EX[5].public_bytes), c.executor_keys[4]),
    ),
    "registry dropped": lambda c: replace(c, executor_keys=c.executor_keys[1:]),
    "registry added": lambda c: replace(
        c, executor_keys=(*c.executor_keys, ("ex9", EX[5].public_bytes))
    ),
    "registry duplicated": lambda c: replace(
        c, executor_keys=(*c.executor_keys, c.executor_keys[0])
    ),
    "version": lambda c: replace(c, version=3),
    "mode": lambda c: replace(c, mode="other"),
    **{f"agreeing {n}": _att_field("agreeing", n, v) for n, v in ATT_VALUES.items()},
    **{f"dissent attestation {n}": _att_field("dissent", n, v) for n, v in ATT_VALUES.items()},
}

# Rewrites only the body signature catches (the verifier vouches for these fields).
SIGNED_ONLY: dict[str, Callable[[Certificate], Certificate]] = {
    "function module": lambda c: replace(c, function=replace(FN, module="other")),
    "function qualname": lambda c: replace(c, function=replace(FN, qualname="other")),
    "function code": lambda c: replace(c, function=replace(FN, code_digest="cd" * 32)),
    "args digest": lambda c: replace(c, args_digest=b"b" * 32),
    "tolerance": lambda c: replace(c, tolerance="allclose(rtol=1, atol=1)"),
    "tiebreak": lambda c: replace(c, tiebreak=b"j" * 32),
    "compared (still a majority)": lambda c: replace(c, compared=5),
    "representative (another agreeing)": lambda c: replace(c, representative="ex0"),
    "mode bft": lambda c: replace(c, mode="bft", block_round=3, block_id=b"B" * 32),
    "agreeing reordered": lambda c: replace(c, agreeing=c.agreeing[::-1]),
    "dissent outcome": lambda c: replace(
        c, dissenting=(replace(DISSENT, outcome="unaligned"), *c.dissenting[1:])
    ),
    "dissent reason": lambda c: replace(
        c, dissenting=(replace(DISSENT, reason="fine"), *c.dissenting[1:])
    ),
    "dissent evidence dropped": lambda c: replace(
        c, dissenting=(replace(DISSENT, attestation=None), *c.dissenting[1:])
    ),
    "dissents reordered": lambda c: replace(c, dissenting=c.dissenting[::-1]),
    "registry reordered": lambda c: replace(c, executor_keys=c.executor_keys[::-1]),
}


@pytest.mark.parametrize("what", sorted({**CROSS_CHECKED, **SIGNED_ONLY}))
def test_rewriting_any_field_fails(what):
    bad = {**CROSS_CHECKED, **SIGNED_ONLY}[what](BASE)
    assert bad != BASE
    assert not ok(bad), what
    assert not verify_certificate(bad, VKEYS, raise_on_failure=False)
    with pytest.raises(CertificateError):
        verify_certificate(bad, VKEYS[:1], raise_on_failure=True)
    try:
        back = Certificate.from_json(bad.to_json())
    except CertificateError:
        return  # refused at parse time (an unknown mode or version)
    assert back == bad and not ok(back), what


@pytest.mark.parametrize("what", sorted(CROSS_CHECKED))
def test_rewrites_fail_even_when_the_verifier_re_signs(what):
    assert not ok(resign(CROSS_CHECKED[what](BASE))), what


@pytest.mark.parametrize("what", sorted(SIGNED_ONLY))
def test_verifier_vouched_fields_verify_when_re_signed(what):
    # Not a weakness: these are the verifier's own statements; the point is that the tests
    # above fail because of the signature, not by accident.
    assert ok(resign(SIGNED_ONLY[what](BASE))), what


def test_bft_certificate_binds_its_committed_block():
    cert = make(signers=(0, 1, 2), mode="bft")
    assert verify_certificate(cert, VKEYS)
    assert not verify_certificate(replace(cert, block_round=6), VKEYS)
    assert not verify_certificate(replace(cert, block_id=b"C" * 32), VKEYS)
    assert not verify_certificate(replace(cert, block_id=b""), VKEYS)  # malformed, never raises
    # A trusted certificate names no block.
    assert not ok(replace(BASE, block_round=1))
    assert Certificate.from_json(cert.to_json()) == cert


def test_tampered_verifier_signatures_fail():
    s = BASE.signatures[0]
    assert not ok(replace(BASE, signatures=(replace(s, signature=flip(s.signature)),)))
    assert not ok(replace(BASE, signatures=(replace(s, public_key=VKEYS[1]),)))
    assert not ok(replace(BASE, signatures=()))
    # The verifier id is a label; the key is what is checked.
    assert ok(replace(BASE, signatures=(replace(s, verifier_id="renamed"),)))


def test_json_text_rewrites_fail():
    text = BASE.to_json()
    for old, new in [
        (D.hex(), OTHER.hex()),
        ('"t1"', '"t2"'),
        ("train_step", "other_step"),
        ('"quorum": 3', '"quorum": 2'),
        ('"attempt": 0', '"attempt": 1'),
    ]:
        assert old in text, old
        bad = text.replace(old, new, 1)
        assert not ok(Certificate.from_json(bad)), old


# -- replay, keys and quorum -----------------------------------------------------------------


def test_another_tasks_certificate_with_the_same_output_fails():
    other = make(
        task_id="t2",
        agreeing=(att(0, task="t2"), att(1, task="t2"), att(2, task="t2")),
        dissenting=(Dissent("ex3", "disagreed", "x", att(3, task="t2", dig=OTHER)),),
        executor_keys=tuple((f"ex{i}", EX[i].public_bytes) for i in range(4)),
    )
    assert other.digest == BASE.digest
    assert ok(other, task_id="t2", value=VALUE)
    assert not ok(other, task_id="t1", value=VALUE)
    assert not ok(BASE, task_id="t2")
    assert not ok(BASE, task_id=b"t1")  # not text


def test_attestations_of_another_task_fail_even_when_signed():
    assert not ok(make(agreeing=(att(0), att(1, task="t2"), att(2))))
    d = Dissent("ex3", "disagreed", "x", att(3, task="t2", dig=OTHER))
    assert not ok(make(dissenting=(d, BASE.dissenting[1])))


def test_unknown_verifier_key_fails():
    assert not verify_certificate(BASE, [ROGUE.public_bytes])
    assert not verify_certificate(BASE, [])
    rogue = replace(BASE, signatures=()).signed_by(ROGUE, "verifier0")
    assert not ok(rogue)
    assert verify_certificate(BASE, [ROGUE.public_bytes, VKEYS[0]])  # unknown keys ignored


def test_min_verifier_signatures_needs_distinct_known_keys():
    three = make(signers=(0, 1, 2), mode="bft")
    assert verify_certificate(three, VKEYS[:3], min_verifier_signatures=3)
    assert verify_certificate(three, VKEYS, min_verifier_signatures=3)
    assert not verify_certificate(three, VKEYS[:2], min_verifier_signatures=3)  # one unknown
    assert not verify_certificate(
        make(signers=(0, 1), mode="bft"), VKEYS, min_verifier_signatures=3
    )
    dup = make(signers=(0, 1, 1, 1), mode="bft")  # four signatures, two distinct keys
    assert len(dup.signatures) == 4
    assert not verify_certificate(dup, VKEYS, min_verifier_signatures=3)
    # A group certificate always needs 2f + 1 of the keys given, whatever the caller asks.
    assert not verify_certificate(dup, VKEYS, min_verifier_signatures=2)
    assert verify_certificate(dup, VKEYS[:2], min_verifier_signatures=2)
    with_rogue = make(signers=(0, 1), mode="bft").signed_by(ROGUE, "verifier2")
    assert not verify_certificate(with_rogue, [*VKEYS, b"x" * 32], min_verifier_signatures=3)
    one_bad = replace(
        three,
        signatures=(*three.signatures[:2], replace(three.signatures[2], signature=bytes(64))),
    )
    assert not verify_certificate(one_bad, VKEYS, min_verifier_signatures=3)
    assert not verify_certificate(three, VKEYS, min_verifier_signatures="3")


def test_duplicate_agreeing_executors_slots_and_keys_fail():
    keys = tuple((f"ex{i}", EX[i].public_bytes) for i in range(5))
    same_id = (att(0), att(0, slot="slot7"), att(2))
    assert not ok(make(agreeing=same_id, representative="ex0"))
    same_slot = (att(0), att(1, slot="slot0"), att(2))
    assert not ok(make(agreeing=same_slot))
    shared = (("ex1", EX[0].public_bytes), *(k for k in keys if k[0] != "ex1"))
    same_key = (att(0), att(1, key=EX[0]), att(2))
    assert not ok(make(agreeing=same_key, executor_keys=shared))


def test_attestation_signed_by_another_key_than_the_registrys_fails():
    forged = (att(0), att(1, key=EX[5]), att(2))  # validly signed, but not by ex1's key
    assert all(a.verify() for a in forged)
    assert not ok(make(agreeing=forged))
    # A registry rewritten to the forger's key is caught against the known executor keys.
    keys = tuple((e, EX[5].public_bytes if e == "ex1" else k) for e, k in BASE.executor_keys)
    rewritten = make(agreeing=forged, executor_keys=keys)
    assert ok(rewritten)  # self-consistent, so only the known keys can tell
    assert not ok(rewritten, executor_keys={f"ex{i}": EX[i].public_bytes for i in range(5)})
    assert not ok(rewritten, executor_keys=[k.public_bytes for k in EX[:5]])
    # A mapping binds ids: ex1's key registered under ex1 only.
    swapped = {f"ex{i}": EX[i].public_bytes for i in range(5)} | {"ex1": EX[2].public_bytes}
    assert not ok(BASE, executor_keys=swapped)
    assert not ok(BASE, executor_keys={"ex0": EX[0].public_bytes})  # others unknown


def test_dissent_attestation_relabelled_to_another_executor_fails():
    moved = Dissent("ex4", "disagreed", "x", DISSENT.attestation)  # ex3's evidence under ex4
    assert not ok(make(dissenting=(moved, Dissent("ex3", "crashed", "", None))))
    relabelled = Dissent("ex4", "disagreed", "x", replace(DISSENT.attestation, executor_id="ex4"))
    assert not ok(make(dissenting=(relabelled, Dissent("ex3", "crashed", "", None))))
    # Evidence forged for ex4 by someone else's key.
    forged = Dissent("ex4", "disagreed", "x", att(4, key=EX[5], dig=OTHER))
    assert not ok(make(dissenting=(DISSENT, forged)))


def test_disagreed_with_the_accepted_digest_fails():
    d = Dissent("ex3", "disagreed", "x", att(3))
    assert not ok(make(dissenting=(d, BASE.dissenting[1])))
    assert ok(make(dissenting=(replace(d, outcome="late"), BASE.dissenting[1])))
    # The same bytes as an error record are a different answer.
    err = Dissent("ex3", "disagreed", "x", att(3, kind="error"))
    assert ok(make(dissenting=(err, BASE.dissenting[1])))


def test_quorum_must_be_a_strict_majority():
    keys = tuple(k for k in BASE.executor_keys if k[0] != "ex2")
    two = (att(0), att(1))
    assert not ok(make(quorum=2, compared=4, agreeing=two, executor_keys=keys))
    assert ok(make(quorum=2, compared=3, agreeing=two, executor_keys=keys))
    assert not ok(make(quorum=3, compared=3, agreeing=two, executor_keys=keys))
    assert not ok(make(quorum=0, compared=0, agreeing=()))
    assert not ok(make(quorum=-1, compared=-3))


def test_tolerance_allows_differing_digests_except_the_representatives():
    tol = "allclose(rtol=1e-05, atol=1e-08)"
    near = (att(0, dig=OTHER), att(1), att(2))
    assert ok(make(tolerance=tol, agreeing=near))
    assert not ok(make(tolerance="exact", agreeing=near))
    assert not ok(make(tolerance=tol, agreeing=near, representative="ex0"))
    assert not ok(make(tolerance=tol, agreeing=(att(0), att(1, kind="error"), att(2))))


def test_spoofing_subclasses_are_rejected():
    class Always(str):
        def __eq__(self, other):
            return True

        def __ne__(self, other):
            return False

        __hash__ = str.__hash__

    other = make(
        task_id=Always("t2"),
        agreeing=tuple(att(i, task="t2") for i in range(3)),
        dissenting=(),
        executor_keys=tuple((f"ex{i}", EX[i].public_bytes) for i in range(3)),
        compared=3,
    )
    assert not ok(other, task_id="t1")

    class Sub(Certificate):
        pass

    assert not ok(Sub(**dataclasses.asdict(BASE) | {"function": FN}))
    assert not ok(replace(BASE, agreeing=list(BASE.agreeing)))


# -- malformed input never raises ------------------------------------------------------------


@pytest.mark.parametrize(
    "junk", [None, {}, "certificate", 42, [1, 2], b"\x00" * 64, 3.5, object(), Certificate]
)
def test_non_certificates_return_false(junk):
    assert verify_certificate(junk, VKEYS) is False
    with pytest.raises(CertificateError):
        verify_certificate(junk, VKEYS, raise_on_failure=True)


def test_as_a_dict_returns_false():
    assert verify_certificate(json.loads(BASE.to_json()), VKEYS) is False
    assert verify_certificate(dataclasses.asdict(BASE), VKEYS) is False


@pytest.mark.parametrize("name", ["args_digest", "digest", "tiebreak"])
def test_truncated_bytes_return_false(name):
    v = getattr(BASE, name)
    for bad in (v[:-1], v + b"\x00", b"", bytearray(v), memoryview(v), v.hex()):
        assert ok(replace(BASE, **{name: bad})) is False


def test_bad_verifier_keys_arguments_return_false():
    for keys in (None, 5, "abc", VKEYS[0], [None], [1, 2], [10**12], {"v": 3}, [[VKEYS[0]]]):
        assert verify_certificate(BASE, keys) is False
    assert verify_certificate(BASE, iter(VKEYS[:1])) is True
    assert verify_certificate(BASE, [bytearray(VKEYS[0])]) is True


def test_one_verifier_of_a_group_cannot_certify_alone_by_calling_it_trusted():
    """The mode is the signers' word: checked against a group's keys, any certificate needs
    2f + 1 of them. One Byzantine verifier of four signed a "trusted" certificate alone; it
    verified against the group's keys (found by an adversarial review)."""
    assert BASE.mode == "trusted" and len(BASE.signatures) == 1
    assert verify_certificate(BASE, VKEYS[:1])
    assert not verify_certificate(BASE, VKEYS)
    with pytest.raises(CertificateError, match=r"1 valid signatures .* 3 needed"):
        verify_certificate(BASE, VKEYS, raise_on_failure=True)
    three = make(signers=(0, 1, 2))  # trusted-mode label, 2f + 1 signatures: the count decides
    assert verify_certificate(three, VKEYS)
    with pytest.raises(CertificateError, match="has no commit proof"):
        verify_certificate(three, VKEYS, require_commit_proof=True, raise_on_failure=True)


def test_bad_executor_keys_arguments_return_false():
    for keys in (5, "abc", EX[0].public_bytes, [None], [10**12], {"ex0": 3}, {"ex0": None}):
        assert ok(BASE, executor_keys=keys) is False


JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["00" * 32, "ab" * 64, "AB" * 32, "value", "exact", "t1", "ex0"])
)
JSON_LIKE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
CERT_FIELDS = [f.name for f in dataclasses.fields(Certificate)]
BASE_DATA = json.loads(BASE.to_json())


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


JSON_PATHS = _paths(BASE_DATA)[1:]


def _set(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _set(node[path[0]], path[1:], value)
    return copy


def _parse_then_verify(text: Any) -> bool | None:
    """``None`` when from_json refuses (only ever with CertificateError), else verify's answer."""
    try:
        cert = Certificate.from_json(text)
    except CertificateError:
        return None
    result = verify_certificate(cert, VKEYS)
    assert isinstance(result, bool)
    return result


@given(JSON_LIKE)
def test_random_json_never_raises(data):
    assert verify_certificate(data, VKEYS) is False
    assert not _parse_then_verify(json.dumps(data))


@given(st.fixed_dictionaries({name: JSON_LIKE for name in CERT_FIELDS}))
def test_random_json_with_certificate_keys_never_raises(data):
    assert verify_certificate(data, VKEYS) is False
    assert not _parse_then_verify(json.dumps(data))


@given(st.sampled_from(JSON_PATHS), JSON_LIKE)
def test_json_with_one_value_replaced_never_verifies(path, value):
    data = _set(BASE_DATA, path, value)
    result = _parse_then_verify(json.dumps(data))
    if data == BASE_DATA or (path[0] == "signatures" and path[-1] == "verifier_id"):
        return  # unchanged, or only the (unsigned) verifier label changed
    assert not result, path


@given(st.sampled_from(JSON_PATHS), st.sampled_from(["drop", "extra"]))
def test_json_with_a_field_dropped_or_added_is_refused(path, how):
    parent_path, key = path[:-1], path[-1]
    parent = BASE_DATA
    for p in parent_path:
        parent = parent[p]
    if not isinstance(parent, dict):
        return
    changed = dict(parent)
    if how == "drop":
        del changed[key]
    else:
        changed["extra"] = None
    with pytest.raises(CertificateError):
        Certificate.from_json(json.dumps(_set(BASE_DATA, parent_path, changed)))


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_text_never_raises(text):
    assert verify_certificate(text, VKEYS) is False
    assert not _parse_then_verify(text)


@given(JSON_LIKE)
def test_non_text_from_json_raises_certificate_error(data):
    with pytest.raises(CertificateError):
        Certificate.from_json(data if not isinstance(data, str) else [data])


GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=70),
    st.sampled_from([b"\x00" * 32, b"\x00" * 64, "00" * 32, (), [], {}, FN]),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.binary(max_size=33)),
    st.tuples(st.text(max_size=3), st.binary(max_size=33)),
    st.tuples(st.none(), st.integers()),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _setters() -> list[tuple[str, Callable[[Certificate, Any], Certificate]]]:
    out: list[tuple[str, Callable[[Certificate, Any], Certificate]]] = []
    for name in CERT_FIELDS:
        out.append((name, lambda c, v, n=name: replace(c, **{n: v})))
    for name in ("module", "qualname", "code_digest"):
        out.append(
            (f"function.{name}", lambda c, v, n=name: replace(c, function=replace(FN, **{n: v})))
        )
    for name in ATT_VALUES:
        out.append((f"agreeing.{name}", lambda c, v, n=name: _att_field("agreeing", n, v)(c)))
        out.append((f"dissent.att.{name}", lambda c, v, n=name: _att_field("dissent", n, v)(c)))
    for name in ("executor_id", "outcome", "reason", "attestation"):
        out.append(
            (
                f"dissent.{name}",
                lambda c, v, n=name: replace(
                    c, dissenting=(replace(DISSENT, **{n: v}), *c.dissenting[1:])
                ),
            )
        )
    for name in ("verifier_id", "public_key", "signature"):
        out.append(
            (
                f"signature.{name}",
                lambda c, v, n=name: replace(c, signatures=(replace(c.signatures[0], **{n: v}),)),
            )
        )
    out += [
        ("agreeing[1]", lambda c, v: replace(c, agreeing=(c.agreeing[0], v, c.agreeing[2]))),
        ("dissenting[0]", lambda c, v: replace(c, dissenting=(v, c.dissenting[1]))),
        ("executor_keys[0]", lambda c, v: replace(c, executor_keys=(v, *c.executor_keys[1:]))),
        ("signatures[0]", lambda c, v: replace(c, signatures=(v,))),
    ]
    return out


SETTERS = _setters()


@given(st.sampled_from(SETTERS), GARBAGE)
def test_garbage_in_any_field_returns_false(setter, value):
    name, put = setter
    bad = put(BASE, value)
    result = verify_certificate(bad, VKEYS[:1], task_id="t1", value=VALUE)
    assert isinstance(result, bool)
    if name == "signature.verifier_id" and type(value) is str:
        assert result  # the label is not signed
    elif bad != BASE:
        assert result is False, (name, value)
    try:
        text = bad.to_json()
    except Exception:
        return  # not serialisable: a malformed object, which verify refused above
    assert not _parse_then_verify(text) or bad == BASE or name == "signature.verifier_id"


@given(GARBAGE, GARBAGE, GARBAGE, GARBAGE)
def test_garbage_arguments_never_raise(keys, task_id, executor_keys, minimum):
    for cert in (BASE, None):
        result = verify_certificate(
            cert,
            keys,
            task_id=task_id,
            value_digest=keys if isinstance(keys, bytes) else None,
            executor_keys=executor_keys,
            min_verifier_signatures=minimum,
        )
        assert isinstance(result, bool)


# -- strict JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new",
    [
        (D.hex(), D.hex().upper()),  # hex must be lowercase (one text per certificate)
        (D.hex(), D.hex()[:-2]),  # wrong length
        (D.hex(), D.hex()[:-1]),  # odd length
        (D.hex(), " " + D.hex()[1:]),  # whitespace
        ('"quorum": 3', '"quorum": true'),
        ('"quorum": 3', '"quorum": 3.0'),
        ('"quorum": 3', '"quorum": NaN'),
        ('"quorum": 3', f'"quorum": {2**63}'),
        ('"attempt": 0', '"attempt": "0"'),
        ('"kind": "value"', '"kind": "answer"'),
        ('"mode": "trusted"', '"mode": "other"'),
        ('"version": 2', '"version": 1'),
        ('"outcome": "disagreed"', '"outcome": "wrong"'),
        ('"task_id": "t1"', '"task_id": "t1", "task_id": "t2"'),  # duplicated key
        ('"task_id": "t1"', '"task_id": null'),
        ('"task_id": "t1"', '"task_id": "t1", "extra": 1'),
        ('"agreeing": [', '"agreeing": [1, '),
    ],
)
def test_from_json_is_strict(old, new):
    text = BASE.to_json()
    assert old in text, old
    with pytest.raises(CertificateError):
        Certificate.from_json(text.replace(old, new, 1))


def test_from_json_refuses_non_json():
    for bad in ("", "{", "null", "[]", '{"version": 2}', BASE.to_json()[:-1], None, 5):
        with pytest.raises(CertificateError):
            Certificate.from_json(bad)


# -- attestations ------------------------------------------------------------------------------


def test_attestation_binds_every_field():
    a = att(0)
    assert a.verify() and a.verify(expected_key=EX[0].public_bytes)
    assert not a.verify(expected_key=EX[1].public_bytes)
    assert not a.verify(expected_key="not bytes")
    for name, value in ATT_VALUES.items():
        if name == "signature":
            value = flip(a.signature)
        assert not replace(a, **{name: value}).verify(), name


@pytest.mark.parametrize(
    "name, value",
    [
        ("task_id", None),
        ("attempt", True),
        ("attempt", 2**63),
        ("attempt", "0"),
        ("kind", "other"),
        ("digest", b"\x00" * 31),
        ("digest", bytearray(32)),
        ("public_key", "00" * 32),
        ("signature", b""),
        ("slot", 3),
    ],
)
def test_malformed_attestation_is_invalid_and_never_raises(name, value):
    bad = replace(att(0), **{name: value})
    assert bad.verify() is False and not bad.well_formed()


def test_attestation_dict_round_trip_is_strict():
    a = att(0)
    assert Attestation.from_dict(a.to_dict()) == a
    assert json.loads(json.dumps(a.to_dict())) == a.to_dict()
    d = a.to_dict()
    for bad in (
        d | {"digest": d["digest"].upper()},
        d | {"digest": d["digest"][:-2]},
        d | {"kind": "other"},
        d | {"attempt": False},
        d | {"extra": 1},
        {k: v for k, v in d.items() if k != "slot"},
        [d],
        None,
    ):
        with pytest.raises(ValueError):
            Attestation.from_dict(bad)


def test_attestation_create_refuses_fields_that_could_never_verify():
    for args in [
        ("t", 0, "e", "s", "other", D),
        ("t", 0, "e", "s", "value", D[:31]),
        ("t", "0", "e", "s", "value", D),
        (None, 0, "e", "s", "value", D),
    ]:
        with pytest.raises(ValueError):
            Attestation.create(EX[0], *args)
    assert Attestation.create(EX[0], "t", 0, "e", "s", "value", bytearray(D)).verify()


def test_verifier_signature_shape():
    s = BASE.signatures[0]
    assert isinstance(s, VerifierSignature) and len(s.public_key) == 32 and len(s.signature) == 64
