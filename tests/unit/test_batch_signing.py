"""One signature per batch of answers: the Merkle tree, batched attestations, envelopes, admission
and certificates. Pure, no Ray, milliseconds.

An executor that answers a batch signs the batch's Merkle root once; each answer carries its
leaf's position and path. These tests try what an adversary holding one batch could do with
it: move an attestation to another task, swap paths or positions, present the padding or an
inner node as a leaf, or rewrite a batched attestation inside a certificate.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft_ray import merkle
from bft_ray.compare.digest import digest, digest_wire
from bft_ray.compare.wire import encode
from bft_ray.crypto import SigningKey
from bft_ray.errors import CertificateError
from bft_ray.executor import envelope
from bft_ray.executor.actor import ExecutorActor, TaskSpec, capability_commitment
from bft_ray.executor.attestation import SALT_BYTES, Attestation
from bft_ray.verifier.admission import Expected, Status, admit, own_object
from bft_ray.verifier.certificate import Certificate, FunctionId, verify_certificate

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
replace = dataclasses.replace


def _records(n: int, task: str = "t") -> list[tuple]:
    return [(f"{task}{i}", 0, "ex0", "slot0", "value", bytes([i]) * 32) for i in range(n)]


# -- the tree -------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=70, unique=True))
def test_every_leaf_climbs_to_the_root_and_no_other_leaf_does(records):
    leaves = [merkle.leaf_hash(r) for r in records]
    root, paths = merkle.merkle_paths(leaves)
    assert root == merkle.merkle_root(leaves)
    for i, (leaf, path) in enumerate(zip(leaves, paths)):
        assert merkle.climb(leaf, i, path) == root
        assert merkle.merkle_path(leaves, i) == path
        assert len(path) == (len(leaves) - 1).bit_length()
        if len(leaves) > 1:
            forged = b"\xff" * 41  # longer than any generated record: not among them
            assert merkle.climb(merkle.leaf_hash(forged), i, path) != root
            assert merkle.climb(leaf, i ^ 1, path) != root  # sides are bound


def test_an_inner_node_or_the_padding_is_not_a_leaf():
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(3)]  # padded to 4
    root, paths = merkle.merkle_paths(leaves)
    # The padding sits at position 3 with leaf 2 as its sibling: climbing from the pad's value
    # reaches the root, but a leaf is always leaf_hash(record), and no record hashes to it.
    assert merkle.climb(bytes(32), 3, (leaves[2], paths[2][1])) == root
    assert all(merkle.leaf_hash(bytes([i])) != bytes(32) for i in range(256))
    # An inner node is hashed under another context than a leaf of the same bytes.
    inner = merkle.climb(leaves[0], 0, paths[0][:1])
    assert merkle.leaf_hash(leaves[0] + leaves[1]) != inner


def test_a_position_must_fit_its_path():
    with pytest.raises(ValueError):
        merkle.climb(bytes(32), 2, (bytes(32),))
    with pytest.raises(ValueError):
        merkle.climb(bytes(32), 0, (bytes(32),) * (merkle.MAX_DEPTH + 1))
    with pytest.raises(ValueError):
        merkle.merkle_root([])


# -- batched attestations -------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 64])
def test_a_batch_is_signed_once_and_every_attestation_verifies(n):
    batch = Attestation.create_batch(KEY, _records(n))
    assert len({a.signature for a in batch}) == 1
    assert all(a.batched and a.verify(expected_key=KEY.public_bytes) for a in batch)
    assert [a.position for a in batch] == list(range(n))
    assert not any(a.verify(expected_key=OTHER_KEY.public_bytes) for a in batch)
    for a in batch:
        assert Attestation.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_a_batch_of_one_is_a_single_attestation():
    (single,) = Attestation.create_batch(KEY, _records(1))
    assert not single.batched and single.verify()
    assert single == Attestation.create(KEY, *_records(1)[0])
    assert set(single.to_dict()) == {f.name for f in dataclasses.fields(Attestation)} - {
        "position",
        "salt",
        "path",
    }


@pytest.mark.parametrize(
    "change",
    [
        {"task_id": "t1"},  # another task of the same batch
        {"task_id": "elsewhere"},
        {"attempt": 1},
        {"executor_id": "ex1"},
        {"slot": "slot1"},
        {"kind": "error"},
        {"digest": bytes(32)},
        {"position": 1},
        {"salt": bytes(SALT_BYTES)},
        {"signature": bytes(64)},
    ],
)
def test_every_field_of_a_batched_attestation_is_bound(change):
    a = Attestation.create_batch(KEY, _records(5))[2]
    assert not replace(a, **change).verify()


def test_an_attestation_cannot_borrow_another_leafs_path_or_become_single():
    batch = Attestation.create_batch(KEY, _records(4))
    a, b = batch[0], batch[1]
    assert not replace(a, path=b.path, position=b.position).verify()
    assert not replace(a, path=(), position=0).verify()  # the root's signature is not a's
    assert not replace(a, path=a.path[:-1], position=0).verify()
    # The root signature is over the key and root under its own domain: it is no single
    # attestation's signature, whatever the fields.
    single = Attestation.create(KEY, *_records(1)[0])
    assert not replace(single, path=a.path, position=a.position).verify()


@pytest.mark.parametrize(
    "over",
    [
        {"position": -1},
        {"position": 8, "path": (bytes(32),) * 3},
        {"path": (b"short",)},
        {"path": [bytes(32)]},  # a list, not a tuple
        {"path": (bytes(32),) * (merkle.MAX_DEPTH + 1)},
        {"position": True},
        {"salt": b""},
        {"salt": bytes(SALT_BYTES + 1)},
    ],
)
def test_malformed_batch_fields_never_verify_and_never_raise(over):
    a = replace(Attestation.create_batch(KEY, _records(3))[1], **over)
    assert not a.well_formed() and not a.verify()


def test_from_dict_is_strict_about_batch_fields():
    d = Attestation.create_batch(KEY, _records(3))[1].to_dict()
    for bad in (
        {k: v for k, v in d.items() if k != "path"},  # position without path
        {**d, "path": []},
        {**d, "path": ["AB" * 32]},
        {**d, "position": "1"},
        {**d, "salt": "AB" * SALT_BYTES},
        {**d, "path": ["00" * 32] * (merkle.MAX_DEPTH + 1)},
        {k: v for k, v in d.items() if k != "salt"},
        {**d, "extra": 1},
    ):
        with pytest.raises(ValueError):
            Attestation.from_dict(bad)


def test_a_batch_that_repeats_a_record_has_one_valid_position_per_leaf():
    # A Byzantine dispatcher may put one replica into a batch twice; its leaves still differ
    # (position and salt are hashed in), so no position can be flipped onto the other's path.
    record = _records(1)[0]
    a, b = Attestation.create_batch(KEY, [record, record])
    assert a.verify() and b.verify() and a.path != b.path
    assert not replace(a, position=1).verify() and not replace(b, position=0).verify()
    assert not replace(a, position=1, salt=b.salt).verify()


def test_sibling_hashes_reveal_nothing_about_other_answers_without_their_salts():
    # A certificate of one call carries its batch siblings' leaf hashes; someone who knows
    # another call's task id and guesses its output cannot check the guess against them.
    batch = Attestation.create_batch(KEY, _records(2))
    again = Attestation.create_batch(KEY, _records(2))  # the very same records
    assert batch[0].path != again[0].path  # leaves are salted afresh
    guess = Attestation.create(KEY, *_records(2)[1])  # t1's record, its output guessed right
    assert merkle.leaf_hash(guess.message()) not in batch[0].path


def test_a_batched_record_never_reads_like_a_single_one():
    a = Attestation.create_batch(KEY, _records(2))[0]
    single = Attestation.create(KEY, *_records(2)[0])
    assert a.message() == single.message()  # the same claim...
    assert a.signed_record() != single.signed_record()  # ...identified apart in digests


# -- envelopes and admission ----------------------------------------------------------------


def _batch_envelopes(n: int, task: str = "t", key: SigningKey = KEY) -> list[bytes]:
    return envelope.build_batch(
        key,
        [
            (envelope.VALUE, f"{task}{i}", 0, "ex0", "slot0", encode(np.full(3, float(i))), "")
            for i in range(n)
        ],
    )


def test_batched_envelopes_round_trip_and_are_admitted():
    raws = _batch_envelopes(5)
    for i, raw in enumerate(raws):
        env = envelope.parse(raw)
        assert env.position == i and len(env.path) == 3
        out = admit(raw, Expected(f"t{i}", 0, "ex0", "slot0", KEY.public_bytes))
        assert out.status is Status.OK, out.reason
        assert out.attestation.batched and out.digest == digest_wire(encode(np.full(3, float(i))))


def test_a_batched_answer_moved_to_another_call_or_rewritten_is_refused():
    raws = _batch_envelopes(4)
    # The answer to t1 presented for t2: it names t1, so it is not t2's answer.
    moved = own_object(admit(raws[1], Expected("t2", 0, "ex0", "slot0", KEY.public_bytes)))
    assert moved.status is Status.INVALID and "names task" in moved.reason
    # Its payload rewritten: the digest no longer climbs to the signed root.
    env = envelope.parse(raws[1])
    head = bytes(raws[1])[: len(raws[1]) - len(env.payload)]
    forged = head + encode(np.full(3, 9.0))
    out = own_object(admit(forged, Expected("t1", 0, "ex0", "slot0", KEY.public_bytes)))
    assert out.status is Status.INVALID and "signature" in out.reason
    # Signed by another key than the one registered for ex0.
    other = _batch_envelopes(2, key=OTHER_KEY)[1]
    out = own_object(admit(other, Expected("t1", 0, "ex0", "slot0", KEY.public_bytes)))
    assert out.status is Status.INVALID


def test_truncated_or_out_of_range_batch_envelopes_are_malformed():
    raw = _batch_envelopes(3)[2]
    env = envelope.parse(raw)
    # Where the depth byte starts: before the path, the salt, the u32 position and the u8 depth.
    note_at = len(raw) - len(env.payload) - 4 - len(env.note.encode())
    pre = note_at - 32 * len(env.path) - SALT_BYTES - 5
    assert raw[pre] == len(env.path) == 2
    for cut in (pre + 1, pre + 4, pre + 5 + 31, pre + 5 + 32 + 10):
        with pytest.raises(envelope.EnvelopeError):
            envelope.parse(raw[:cut])
    for depth_and_position in (
        bytes([0]) + (0).to_bytes(4, "little"),  # a version-2 envelope without a path
        bytes([2]) + (4).to_bytes(4, "little"),  # a position past its path
        bytes([merkle.MAX_DEPTH + 1]) + (0).to_bytes(4, "little"),
    ):
        with pytest.raises(envelope.EnvelopeError):
            envelope.parse(raw[:pre] + depth_and_position + raw[pre + 5 :])


def test_an_executor_signs_its_batch_once_and_each_answer_stands_alone():
    cap = b"c" * 32
    actor = ExecutorActor(0, "ex0", "slot0", capability_commitment(cap))  # in process, no Ray
    actor._functions["inc"] = lambda x: x + 1
    items = [(TaskSpec(f"t{i}", 0, "inc"), "inc", (i,), {}) for i in range(3)]
    raws = actor.run_batch(cap, items)
    envs = [envelope.parse(r) for r in raws]
    assert len({e.signature for e in envs}) == 1
    for i, raw in enumerate(raws):
        out = admit(raw, Expected(f"t{i}", 0, "ex0", "slot0", envs[0].public_key))
        assert out.status is Status.OK and out.canonical is not None


# -- certificates ---------------------------------------------------------------------------


def _batched_certificate() -> Certificate:
    keys = [SigningKey.generate() for _ in range(3)]
    value = np.arange(3.0)
    d = digest(value)
    agreeing = tuple(
        Attestation.create_batch(
            k,
            [
                ("other", 0, f"ex{i}", f"slot{i}", "value", bytes(32)),
                ("t1", 0, f"ex{i}", f"slot{i}", "value", d),
            ],
        )[1]
        for i, k in enumerate(keys)
    )
    cert = Certificate.unsigned(
        mode="trusted",
        task_id="t1",
        function=FunctionId("m", "f", "ab" * 32),
        args_digest=b"a" * 32,
        kind="value",
        digest=d,
        tolerance="exact",
        quorum=2,
        compared=3,
        representative="ex0",
        tiebreak=b"k" * 32,
        agreeing=agreeing,
        dissenting=(),
        executor_keys=tuple((f"ex{i}", k.public_bytes) for i, k in enumerate(keys)),
    )
    return cert.signed_by(VERIFIER, "verifier0")


VERIFIER = SigningKey.generate()


def test_a_certificate_of_batched_attestations_verifies_offline_through_json():
    cert = _batched_certificate()
    back = Certificate.from_json(cert.to_json())
    assert back == cert and back.body() == cert.body()
    assert verify_certificate(back, [VERIFIER.public_bytes], task_id="t1", value=np.arange(3.0))


def test_a_rewritten_path_in_a_certificate_is_detected():
    cert = _batched_certificate()
    a = cert.agreeing[0]
    sibling = Attestation.create_batch(KEY, _records(2))[0]
    for forged in (
        replace(a, position=0),
        replace(a, path=(bytes(32),)),
        replace(a, path=sibling.path),
    ):
        body = replace(cert, agreeing=(forged, *cert.agreeing[1:]))
        assert body.body() != cert.body()  # the verifier's signature no longer covers it
        assert not verify_certificate(body, [VERIFIER.public_bytes])
        resigned = replace(body, signatures=()).signed_by(VERIFIER, "verifier0")
        with pytest.raises(CertificateError, match="not validly signed"):
            verify_certificate(resigned, [VERIFIER.public_bytes], raise_on_failure=True)
