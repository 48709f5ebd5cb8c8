"""Verdict rules, replica assignment, reputation and certificates (pure, no Ray)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bft_ray.compare import canonicalize, digest
from bft_ray.config import Policy, Tolerance
from bft_ray.crypto import SigningKey
from bft_ray.errors import CertificateError
from bft_ray.executor.attestation import Attestation
from bft_ray.executor.placement import Candidate, assign
from bft_ray.trust.reputation import ExecutorRecord, QuarantinePolicy, Reputation
from bft_ray.verifier.certificate import Certificate, verify_certificate
from bft_ray.verifier.verdict import escalation_size, evaluate


def _eval(values: dict[str, float], pending: int, policy: Policy):
    outs = {k: canonicalize(np.array([v])) for k, v in values.items()}
    return evaluate(outs, {k: digest(c) for k, c in zip(outs, outs.values())}, pending, policy)


def test_accepts_a_strict_majority_of_everything_that_can_still_arrive():
    p = Policy(replicas=5, quorum=3, tolerance=Tolerance.exact())
    assert _eval({"a": 1, "b": 1}, pending=3, policy=p).accepted is None
    ev = _eval({"a": 1, "b": 1, "c": 1}, pending=2, policy=p)
    assert ev.accepted is not None and set(ev.accepted.members) == {"a", "b", "c"}


def test_quorum_grows_with_escalation():
    p = Policy(replicas=3, quorum=2, max_replicas=5, tolerance=Tolerance.exact())
    # Four outputs split 2-1-1: two is not a majority of four.
    assert _eval({"a": 1, "b": 1, "c": 2, "d": 3}, 0, p).accepted is None
    assert _eval({"a": 1, "b": 1, "c": 1, "d": 3}, 0, p).accepted is not None


@pytest.mark.parametrize(
    "best, compared, max_replicas, expected",
    [(1, 3, 5, 2), (1, 3, 4, None), (2, 4, 5, 1), (1, 2, 3, 1), (0, 3, 9, 4)],
)
def test_escalation_size(best, compared, max_replicas, expected):
    assert (
        escalation_size(best, compared, Policy(replicas=3, max_replicas=max_replicas)) == expected
    )


def test_assignment_is_deterministic_distinct_and_spreads_nodes():
    cands = [Candidate(f"e{i}", f"n{i % 3}") for i in range(9)]
    a = assign("task-1", cands, 3)
    assert a == assign("task-1", list(reversed(cands)), 3)
    assert len({c.executor_id for c in a}) == 3 and len({c.node_id for c in a}) == 3
    # More replicas than nodes: nodes repeat only once every node is used.
    b = assign("task-1", cands, 5)
    assert len({c.node_id for c in b}) == 3
    assert not {
        c.executor_id for c in assign("task-1", cands, 3, exclude={c.executor_id for c in a})
    } & {c.executor_id for c in a}


def test_assignment_spreads_load():
    cands = [Candidate(f"e{i}", "n") for i in range(6)]
    counts = {c.executor_id: 0 for c in cands}
    for t in range(3000):
        for c in assign(f"t{t}", cands, 3):
            counts[c.executor_id] += 1
    assert max(counts.values()) / min(counts.values()) < 1.15


def test_reputation_trust_and_quarantine():
    rep = Reputation()
    rep.register("e", 0, "n")
    for i in range(5):
        rep.record("e", "disagreed", f"t{i}", "values", evidence="sig")
    r = rep.get("e")
    assert r.flagged == 5 and r.trust == pytest.approx(1 / 7) and r.flags[-1].evidence == "sig"
    q = QuarantinePolicy(below=0.3, min_tasks=4, keep=3)
    assert q.should_quarantine(r, in_service=4)
    assert not q.should_quarantine(r, in_service=3)  # never below `keep` in service
    assert not QuarantinePolicy(below=0.0).should_quarantine(r, 10)  # disabled
    assert not q.should_quarantine(ExecutorRecord("x", 1, "n", tasks=3, disagreed=3), 10)  # too new


def _cert():
    value = np.arange(4.0)
    keys = [SigningKey.generate() for _ in range(3)]
    atts = tuple(Attestation.create(k, "t", 0, f"e{i}", digest(value)) for i, k in enumerate(keys))
    vkey = SigningKey.generate()
    cert = Certificate.issue(
        vkey,
        "v0",
        task_id="t",
        name="f",
        digest=digest(value),
        tolerance="exact",
        quorum=2,
        compared=3,
        representative="e0",
        agreeing=atts[:2],
        dissenting=(),
    )
    return value, keys, vkey, cert


def test_certificate_round_trip_and_each_tamper_is_caught():
    value, keys, vkey, cert = _cert()
    vk = [vkey.public_bytes]
    assert verify_certificate(cert, vk, value=value, executor_keys=[k.public_bytes for k in keys])
    tampered = {
        "quorum lowered": dataclasses.replace(cert, quorum=1),
        "signer dropped": dataclasses.replace(cert, agreeing=cert.agreeing[:1]),
        "duplicate signer": dataclasses.replace(
            cert, agreeing=(cert.agreeing[0], cert.agreeing[0])
        ),
        "other task": dataclasses.replace(cert, task_id="t2"),
    }
    for name, bad in tampered.items():
        assert not verify_certificate(bad, vk), name
    # Re-signed by the verifier but with a non-majority quorum: still refused.
    resigned = Certificate.issue(
        vkey,
        "v0",
        task_id="t",
        name="f",
        digest=cert.digest,
        tolerance="exact",
        quorum=1,
        compared=3,
        representative="e0",
        agreeing=cert.agreeing[:1],
        dissenting=(),
    )
    with pytest.raises(CertificateError, match="not a strict-majority quorum"):
        verify_certificate(resigned, vk, raise_on_failure=True)
    # An attestation by an unknown executor key is refused when keys are given.
    with pytest.raises(CertificateError, match="not a known executor key"):
        verify_certificate(cert, vk, executor_keys=[keys[0].public_bytes], raise_on_failure=True)
    with pytest.raises(CertificateError, match="value's digest differs"):
        verify_certificate(cert, vk, value=value + 1, raise_on_failure=True)


def test_attestation_binds_every_field():
    key = SigningKey.generate()
    att = Attestation.create(key, "t", 1, "e0", b"d" * 32)
    assert att.verify(expected_key=key.public_bytes)
    for change in (
        dict(task_id="u"),
        dict(attempt=2),
        dict(executor_id="e1"),
        dict(digest=b"x" * 32),
    ):
        assert not dataclasses.replace(att, **change).verify()
