"""Per-executor reports, as data and as a table.

Example:
    >>> r = Report([{"executor": "ex0", "tasks": 3, "agreed": 3, "flagged": 0, "trust": 0.8}], {})
    >>> r.row("ex0")["agreed"]
    3
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

__all__ = ["Report"]

_COLUMNS = [
    ("executor", "executor"),
    ("slot", "slot"),
    ("node", "node"),
    ("status", "status"),
    ("fault", "injected fault"),
    ("tasks", "tasks"),
    ("agreed", "agreed"),
    ("disagreed", "disagreed"),
    ("invalid", "invalid"),
    ("crashed", "crashed"),
    ("timeouts", "timeouts"),
    ("disputed", "disputed"),
    ("unaligned", "unaligned"),
    ("flagged", "flagged"),
    ("trust", "trust"),
    ("standing", "standing"),
    ("group", "group"),
    ("credit", "credit"),
    ("tainted", "tainted"),
]

_OPTIONAL = {
    "invalid",
    "crashed",
    "timeouts",
    "disputed",
    "unaligned",
    "fault",
    "slot",
    "group",
    "tainted",
}


@dataclasses.dataclass(frozen=True)
class Report:
    """What the verifier knows about every executor.

    Attributes:
        executors: One dict per executor incarnation with its counters, status and trust.
        counters: Verifier-wide counters (calls, accepted, failed, escalations, replacements).
        recent: The last verdicts (newest last): task, function, verdict (``accepted``,
            ``alone`` for an unaudited spot-checked result, ``failed``), agreeing executors,
            flagged ones, replicas run and seconds.
    """

    executors: list[dict[str, Any]]
    counters: dict[str, int]
    recent: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def row(self, executor_id: str) -> dict[str, Any]:
        """The row of one executor."""
        for r in self.executors:
            if r["executor"] == executor_id:
                return r
        raise KeyError(f"no executor {executor_id!r} in the report")

    def by_index(self, index: int) -> list[dict[str, Any]]:
        """Rows of every incarnation of pool slot ``index``."""
        return [r for r in self.executors if r.get("index") == index]

    def table(self) -> Any:
        """A ``rich.table.Table`` of the report."""
        from rich.table import Table

        table = Table(title="bft-ray executors", title_justify="left")
        # Rare failure columns only appear when something happened in them.
        present = [
            (k, h)
            for k, h in _COLUMNS
            if any(k in r for r in self.executors)
            and (k not in _OPTIONAL or any(r.get(k) for r in self.executors))
        ]
        if len({r.get("node") for r in self.executors}) <= 1:
            present = [(k, h) for k, h in present if k != "node"]  # one node: nothing to tell apart
        for key, header in present:
            table.add_column(
                header,
                justify="left"
                if key in ("executor", "slot", "node", "status", "fault")
                else "right",
            )
        for r in self.executors:
            style = "red" if r.get("flagged") else None
            table.add_row(*(str(r.get(k, "")) for k, _ in present), style=style)
        if self.counters:
            table.caption = ", ".join(f"{k}={v}" for k, v in self.counters.items())
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=140, force_terminal=False, color_system=None).print(self.table())
        return buf.getvalue().rstrip()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython / Jupyter
        p.text(str(self))
