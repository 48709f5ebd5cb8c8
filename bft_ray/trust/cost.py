"""What verification cost, per function, priced by what the verifier measured (pure).

The cost of a verified call is the number of executions of the function it took (replicas,
audit re-executions) plus its checker runs, each counted at the checker's price in executions
of the function. A checker's price is *measured*: the verifier times every replica and every
checker run on its own clock, from the moment the work reached the head of its executor's lane
(idle executor, arguments ready) to its answer, so neither a backlog nor an executor's claims
about itself enter it. The price the user declared (``spot_check(..., checker_cost=...)``)
is used only until both have been timed, and is reported beside the measured one.

For trivial functions the measured times are mostly Ray's own per-call cost, so a checker that
is asymptotically cheaper (Freivalds: O(n^2) against O(n^3)) still prices near 1 there; the
price falls towards its asymptotic value as the function grows (``make bench-checker``).

Example:
    >>> book = CostBook()
    >>> book.call("matmul", declared_checker_price=0.5)
    >>> book.execution("matmul", 0.040)
    >>> book.check("matmul", 0.004)
    >>> row = book.rows()["matmul"]
    >>> round(row["checker_price"], 3), row["checker_price_source"]
    (0.1, 'measured')
    >>> row["executions_per_call"]
    1.1
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["CostBook", "FunctionCost"]


@dataclasses.dataclass
class FunctionCost:
    """Counters of one function (all times in seconds, on the verifier's clock).

    Attributes:
        calls: Verified calls.
        executions: Runs of the function (replicas, audits by re-execution), answered or not.
        checker_runs: Runs of the function's checker.
        timed_executions: Executions with a measured time.
        execution_s: Their total time.
        timed_checks: Checker runs with a measured time.
        checker_s: Their total time.
        declared_checker_price: What the plan said a checker run costs (``None``: no checker).
    """

    calls: int = 0
    executions: int = 0
    checker_runs: int = 0
    timed_executions: int = 0
    execution_s: float = 0.0
    timed_checks: int = 0
    checker_s: float = 0.0
    declared_checker_price: float | None = None

    @property
    def measured_checker_price(self) -> float | None:
        """Mean checker time over mean execution time, once both were measured."""
        if not self.timed_checks or not self.timed_executions or self.execution_s <= 0:
            return None
        return (self.checker_s / self.timed_checks) / (self.execution_s / self.timed_executions)

    @property
    def checker_price(self) -> float:
        """The price the cost counts checker runs at: measured, else declared, else 1."""
        measured = self.measured_checker_price
        if measured is not None:
            return measured
        return 1.0 if self.declared_checker_price is None else self.declared_checker_price

    @property
    def executions_per_call(self) -> float:
        """Executions of the function per verified call, checker runs at their price."""
        if not self.calls:
            return 0.0
        return (self.executions + self.checker_runs * self.checker_price) / self.calls

    def row(self) -> dict[str, Any]:
        measured = self.measured_checker_price
        return {
            "calls": self.calls,
            "executions": self.executions,
            "checker_runs": self.checker_runs,
            "mean_execution_s": self.execution_s / self.timed_executions
            if self.timed_executions
            else None,
            "mean_checker_s": self.checker_s / self.timed_checks if self.timed_checks else None,
            "checker_price": self.checker_price if self.checker_runs else None,
            "checker_price_source": (
                None
                if not self.checker_runs
                else "measured"
                if measured is not None
                else "declared"
            ),
            "declared_checker_price": self.declared_checker_price,
            "executions_per_call": self.executions_per_call,
        }


class CostBook:
    """Per-function :class:`FunctionCost`; the verifier feeds it as work completes.

    When to call: :meth:`call` once per verified call when it starts; :meth:`execution` when
    a replica of the function answers (or fails); :meth:`check` when a checker run answers.
    Pass ``seconds=None`` when the work never reached its lane's head (no time to count).
    """

    def __init__(self) -> None:
        self.functions: dict[str, FunctionCost] = {}

    def _fn(self, name: str) -> FunctionCost:
        return self.functions.setdefault(name, FunctionCost())

    def call(self, name: str, declared_checker_price: float | None = None) -> None:
        fc = self._fn(name)
        fc.calls += 1
        if declared_checker_price is not None:
            fc.declared_checker_price = declared_checker_price

    def execution(self, name: str, seconds: float | None) -> None:
        fc = self._fn(name)
        fc.executions += 1
        if seconds is not None and seconds >= 0:
            fc.timed_executions += 1
            fc.execution_s += seconds

    def check(self, name: str, seconds: float | None) -> None:
        fc = self._fn(name)
        fc.checker_runs += 1
        if seconds is not None and seconds >= 0:
            fc.timed_checks += 1
            fc.checker_s += seconds

    def rows(self) -> dict[str, dict[str, Any]]:
        """One :meth:`FunctionCost.row` per function, by name."""
        return {name: fc.row() for name, fc in sorted(self.functions.items())}
