"""Paired differences over seeds with a 95 % interval (Student's t), for the benchmark tables.

Runs of one seed are paired: the same initial student weights and the same student batches in
every row (engine/setup.py), so row − baseline of one seed removes the seed's own luck, and the
interval of the mean paired difference is what says whether a row is better. A row is called
better (``resolved``) only when its interval excludes 0. scipy is not a dependency: the t
quantiles come from the table below (two-sided 95 %, i.e. the 0.975 quantile).
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

# t_{0.975, df} for df = 1..30, then 40, 60, 120 and the normal limit.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
NORMAL_975 = 1.960


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom; between table entries the
    next smaller df's (the wider, conservative interval)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 pairs), got {df}")
    if df > 120:
        return NORMAL_975
    return T975[max(k for k in T975 if k <= df)]


def paired_interval(row: Sequence[float], reference: Sequence[float]) -> dict[str, float | int | bool | None]:
    """Mean of ``row[i] - reference[i]`` over the pairs both have (None values dropped), its 95 %
    interval (paired t) and whether the interval excludes 0.

    Returns ``{"n", "mean", "low", "high", "resolved"}``; with fewer than two pairs ``low`` /
    ``high`` are None and ``resolved`` False (one pair says nothing about the noise).
    """
    diffs = [a - b for a, b in zip(row, reference) if a is not None and b is not None]
    if not diffs:
        return {"n": 0, "mean": None, "low": None, "high": None, "resolved": False}
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None, "resolved": False}
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    return {"n": len(diffs), "mean": mean, "low": low, "high": high, "resolved": low > 0 or high < 0}


def describe_interval(result: dict[str, float | int | bool | None]) -> str:
    """``+3.0 [+1.0, +5.0] resolved`` / ``not resolved``; ``n/a`` without pairs."""
    if result["mean"] is None:
        return "n/a"
    if result["low"] is None:
        return f"{result['mean']:+.1f} (1 seed: not resolved)"
    verdict = "resolved" if result["resolved"] else "not resolved"
    return f"{result['mean']:+.1f} [{result['low']:+.1f}, {result['high']:+.1f}] {verdict}"
