"""When a replica's time limit starts (bft_ray.executor.lanes): pure, no Ray."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bft_ray.executor.lanes import Lanes


def test_work_sent_to_an_idle_executor_starts_at_once():
    lanes = Lanes()
    assert lanes.enqueue("ex0", "a", now=1.0) is True
    assert lanes.started_at("ex0", "a") == 1.0


def test_queued_work_starts_when_everything_before_it_answered():
    lanes = Lanes()
    lanes.enqueue("ex0", "a", now=0.0)
    lanes.enqueue("ex0", "b", now=0.1)
    lanes.enqueue("ex0", "c", now=0.2)
    assert lanes.started_at("ex0", "b") is None and lanes.started_at("ex0", "c") is None
    assert lanes.finish("ex0", "a", now=10.0) == ["b"]
    assert lanes.started_at("ex0", "b") == 10.0 and lanes.started_at("ex0", "c") is None
    assert lanes.finish("ex0", "b", now=12.0) == ["c"]
    assert lanes.started_at("ex0", "c") == 12.0


def test_lanes_of_different_executors_are_independent():
    lanes = Lanes()
    lanes.enqueue("ex0", "a", now=0.0)
    assert lanes.enqueue("ex1", "b", now=5.0) is True  # ex1 is idle: no wait behind ex0's work
    assert lanes.load() == {"ex0": 1, "ex1": 1}


def test_an_answer_out_of_order_does_not_start_anything():
    # A lying executor answering a later call first must not make the earlier one look idle.
    lanes = Lanes()
    lanes.enqueue("ex0", "a", now=0.0)
    lanes.enqueue("ex0", "b", now=0.0)
    lanes.enqueue("ex0", "c", now=0.0)
    assert lanes.finish("ex0", "c", now=1.0) == []
    assert lanes.started_at("ex0", "a") == 0.0 and lanes.started_at("ex0", "b") is None
    assert lanes.finish("ex0", "a", now=2.0) == ["b"]


def test_unknown_and_repeated_finishes_are_ignored_and_duplicates_refused():
    lanes = Lanes()
    assert lanes.finish("ex0", "nothing", now=0.0) == []
    lanes.enqueue("ex0", "a", now=0.0)
    try:
        lanes.enqueue("ex0", "a", now=0.0)
    except ValueError:
        pass
    else:
        raise AssertionError("a token queued twice must be refused")
    assert lanes.finish("ex0", "a", now=1.0) == []
    assert lanes.finish("ex0", "a", now=1.0) == []
    assert lanes.depth("ex0") == 0 and lanes.load() == {}


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=60))
def test_exactly_the_head_of_each_lane_is_timed(ops):
    """Whatever the order of sends and answers, only the oldest outstanding item is running."""
    lanes = Lanes()
    outstanding: list[int] = []
    started: dict[int, float] = {}
    token = 0
    for step, (send, pick) in enumerate(ops):
        now = float(step)
        if send or not outstanding:
            if lanes.enqueue("ex", token, now):
                started[token] = now
            outstanding.append(token)
            token += 1
        else:
            victim = outstanding[pick % len(outstanding)]
            outstanding.remove(victim)
            for t in lanes.finish("ex", victim, now):
                started[t] = now
        if outstanding:
            head = outstanding[0]
            assert lanes.started_at("ex", head) is not None
            # A clock never starts before the item was at the head.
            assert lanes.started_at("ex", head) == started[head]
        # Items behind the head may have started only if they were the head once, which an
        # in-order lane never allows: only answers of the head advance it.
        timed = [t for t in outstanding if lanes.started_at("ex", t) is not None]
        assert timed[:1] == outstanding[:1]
        assert lanes.depth("ex") == len(outstanding)
