"""Exact float summation: window sums that do not depend on arrival order or tiling.

A window's sum is defined as the correctly rounded value of the *exact* sum of its values
(IEEE special values follow IEEE rules: any NaN, or +inf with -inf, gives NaN). Every finite
double is an integer multiple of 2**-1074, so the exact sum of any set of doubles is an
integer `S` on that scale: partial sums of tiles add up exactly, in any order and under any
tiling, and the final `S / 2**1074` is correctly rounded by Python's integer true division.
The training-set path sums a window's values directly, the online path adds the partial sums
of pre-aggregated tiles; both end at the same integer, hence at the same bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCALE_BITS = 1074
_ONE = 1 << SCALE_BITS


def scaled(value: float) -> int:
    """`value * 2**1074` as an exact integer (value finite)."""
    numerator, denominator = value.as_integer_ratio()
    return numerator * (_ONE // denominator)


@dataclass
class ExactSum:
    """An exact running sum: the scaled integer plus counts of the IEEE special values."""

    total: int = 0
    nan: int = 0
    pos_inf: int = 0
    neg_inf: int = 0

    def add(self, value: float) -> None:
        if math.isfinite(value):
            if value:
                self.total += scaled(value)
        elif value != value:
            self.nan += 1
        elif value > 0:
            self.pos_inf += 1
        else:
            self.neg_inf += 1

    def merge(self, other: ExactSum) -> None:
        self.total += other.total
        self.nan += other.nan
        self.pos_inf += other.pos_inf
        self.neg_inf += other.neg_inf

    def value(self) -> float:
        """The correctly rounded sum; +0.0 for an exact zero (the sign of a zero sum is not kept)."""
        if self.nan or (self.pos_inf and self.neg_inf):
            return math.nan
        if self.pos_inf:
            return math.inf
        if self.neg_inf:
            return -math.inf
        try:
            return self.total / _ONE + 0.0
        except OverflowError:
            return math.inf if self.total > 0 else -math.inf

    def to_list(self) -> list[str | int]:
        return [format(self.total, "x"), self.nan, self.pos_inf, self.neg_inf]

    @classmethod
    def from_list(cls, raw: list) -> ExactSum:
        return cls(int(raw[0], 16), raw[1], raw[2], raw[3])


def exact_sum(values: list[float]) -> float:
    """The correctly rounded exact sum of `values` (the training-set side of the contract).

    `math.fsum` is also correctly rounded (so it equals `ExactSum.value()` bit for bit) and
    runs in C; IEEE specials and overflow take the integer path, which defines them."""
    try:
        total = math.fsum(values)
        if math.isfinite(total):  # then no input was NaN or infinite either
            return total + 0.0
    except (OverflowError, ValueError):
        pass
    acc = ExactSum()
    for value in values:
        acc.add(value)
    return acc.value()
