"""Checkers: audits cheaper than re-execution, for functions whose results can be checked.

A checker is ``checker(value, *args, **kwargs) -> bool``: True when ``value`` is a correct
result of the call on those arguments. Pass it to a spot check
(``bft_ray.spot_check(rate, checker=..., checker_cost=...)``); an audit then runs the checker
on an executor other than the one that produced the value, and a refusal escalates to full
replication, whose majority decides who was wrong.

Example:
    >>> import numpy as np
    >>> a, b = np.ones((3, 4)), np.ones((4, 2))
    >>> check = freivalds()  # 20 rounds: a wrong product passes with probability < 1e-6
    >>> check(a @ b, a, b), check(a @ b + np.eye(3, 2), a, b)
    (True, False)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["Freivalds", "freivalds"]


class Freivalds:
    """Freivalds' check of a matrix product ``value == a @ b`` in ``O(n^2)`` per round.

    Each round draws a random ``r`` in ``{0, 1}^k`` and tests ``a @ (b @ r) == value @ r``
    (all rounds together, as thin matrix products)
    within ``rtol``/``atol`` (scaled by ``|a| @ (|b| @ r)``, a bound on the rounding of the
    products). A wrong product passes one round with probability at most 1/2, so ``rounds``
    rounds miss it with probability at most ``2 ** -rounds``. The randomness is drawn on the
    auditing executor, after the producer committed to its value.

    Args:
        rounds: Independent rounds (default 20: a miss chance below ``1e-6``).
        rtol: Relative tolerance of each comparison.
        atol: Absolute tolerance of each comparison.
    """

    def __init__(self, rounds: int = 20, rtol: float = 1e-5, atol: float = 1e-8) -> None:
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        self.rounds, self.rtol, self.atol = rounds, rtol, atol
        self.__qualname__ = f"freivalds(rounds={rounds})"

    def __call__(self, value: Any, a: Any, b: Any) -> bool:
        a, b, c = np.asarray(a), np.asarray(b), np.asarray(value)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            return False
        if c.shape != (a.shape[0], b.shape[1]) or not np.all(np.isfinite(c)):
            return False
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        work = np.result_type(a.dtype, b.dtype, np.float64)
        a64, b64 = a.astype(work, copy=False), b.astype(work, copy=False)
        c64 = c.astype(work, copy=False)
        # All rounds at once: k x rounds random 0/1 vectors, three thin products.
        r = rng.integers(0, 2, size=(b.shape[1], self.rounds)).astype(work)
        lhs = a64 @ (b64 @ r)
        rhs = c64 @ r
        scale = np.abs(a64) @ (np.abs(b64) @ r)  # bounds the rounding of both sides
        return bool(np.all(np.abs(lhs - rhs) <= self.atol + self.rtol * scale))


def freivalds(rounds: int = 20, rtol: float = 1e-5, atol: float = 1e-8) -> Freivalds:
    """A :class:`Freivalds` checker for ``matmul(a, b) -> a @ b``."""
    return Freivalds(rounds, rtol, atol)
