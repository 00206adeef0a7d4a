"""One line of the results table: a measured figure against its baseline and target."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    measured: float
    baseline: float
    unit: str
    compare: str  # "ratio" (measured / baseline) or "delta" (measured - baseline)
    target: float | None  # the ratio or delta bound; None for rows given for comparison
    higher_is_better: bool = False
    note: str = ""
    # Set when the figure moved by more than a third between its rounds: reported as noise,
    # neither met nor missed.
    noise: bool = False

    @property
    def value(self) -> float:
        """The ratio or the delta."""
        if self.compare == "ratio":
            return self.measured / self.baseline if self.baseline else math.nan
        return self.measured - self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None: no target)."""
        if self.target is None or self.noise or math.isnan(self.value):
            return None
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target

    def target_text(self) -> str:
        """The target as the table shows it."""
        if self.target is None:
            return "(info)"
        op = ">=" if self.higher_is_better else "<="
        if self.compare == "ratio":
            return f"{op} {self.target:g}x"
        return f"{op} +{self.target:g} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "scenario": self.scenario,
            "measured": self.measured,
            "baseline": self.baseline,
            "unit": self.unit,
            "compare": self.compare,
            "value": self.value,
            "target": self.target_text(),
            "met": self.met,
            "noise": self.noise,
            "note": self.note,
        }
