"""The cost book (``bft_ray.trust.cost``): executions per call with checkers at a measured price."""

from __future__ import annotations

import pytest

from bft_ray.trust.cost import CostBook


def test_declared_price_until_both_are_timed_then_measured():
    book = CostBook()
    for _ in range(4):
        book.call("f", declared_checker_price=0.3)
    book.execution("f", None)  # never reached its lane's head: counted, not timed
    book.check("f", 0.01)
    row = book.rows()["f"]
    assert row["checker_price_source"] == "declared" and row["checker_price"] == 0.3
    assert row["executions_per_call"] == pytest.approx((1 + 1 * 0.3) / 4)
    for seconds in (0.1, 0.3):
        book.execution("f", seconds)
    book.check("f", 0.03)
    row = book.rows()["f"]
    # mean checker 0.02 s over mean execution 0.2 s
    assert row["checker_price_source"] == "measured"
    assert row["checker_price"] == pytest.approx(0.1)
    assert row["executions_per_call"] == pytest.approx((3 + 2 * 0.1) / 4)


def test_functions_are_kept_apart_and_no_checker_means_no_price():
    book = CostBook()
    book.call("a")
    book.execution("a", 0.1)
    book.execution("a", 0.1)
    book.call("b", declared_checker_price=2.0)
    book.execution("b", 0.1)
    rows = book.rows()
    assert rows["a"]["checker_price"] is None and rows["a"]["executions_per_call"] == 2.0
    assert rows["b"]["checker_runs"] == 0 and rows["b"]["executions_per_call"] == 1.0
    assert CostBook().rows() == {}
