"""Seasonal anomaly scores: a robust z-score of a day against the same weekday of past weeks.

Method (the *modified z-score* of Iglewicz & Hoaglin, "How to Detect and Handle Outliers",
ASQC Quality Press, 1993, §3): for a day's value ``x`` and a history ``h`` of the same
weekday in the previous ``weeks`` weeks,

    z = (x − median(h)) / max(1.4826 · MAD(h), min_scale),   MAD(h) = median(|h − median(h)|)

1.4826 = 1 / Φ⁻¹(0.75) makes the MAD estimate the standard deviation of normal data, so the
threshold reads like Elementary's z-score anomaly tests (``anomaly_sensitivity`` 3, over a
``day_of_week`` seasonal training set). Median and MAD are not moved by the outliers they
look for (breakdown point 50 %): a multi-week incident stays out of an 8-week baseline until
it lasts 4 weeks. Comparing the same weekday removes the weekly cycle. A day is judged only
with at least ``min_weeks`` weeks of history, so the method works from 4 weeks on.

``min_scale`` floors the scale: with 4 to 8 points the MAD can be 0 (or far below the true
spread of counts that arrive in session-sized clumps), which would flag any change at all.
Volumes are scored on ``ln(1 + count)`` (growth and weekly cycles are multiplicative; a floor
of 0.3 then means |z| ≥ 3 needs a factor of ~2.5); conversion rates on the rate itself.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

MAD_TO_SD = 1.4826  # 1 / Φ⁻¹(3/4): MAD → standard deviation of a normal distribution


@dataclass(frozen=True)
class Score:
    """A day's score: ``value`` (in the scored units), the baseline ``median`` and ``scale``
    (same units), ``z`` and the ``history`` size (weeks) it was judged on."""

    value: float
    median: float
    scale: float
    z: float
    history: int


def robust_z(value: float, history: list[float], min_scale: float) -> Score:
    """The modified z-score of ``value`` against ``history`` (non-empty), with the scale
    floored at ``min_scale`` (> 0)."""
    med = statistics.median(history)
    mad = statistics.median(abs(h - med) for h in history)
    scale = max(MAD_TO_SD * mad, min_scale)
    return Score(value, med, scale, (value - med) / scale, len(history))


def same_weekday(day: dt.date, weeks: int) -> list[dt.date]:
    """The ``weeks`` days 7, 14, … days before ``day``, most recent first."""
    return [day - dt.timedelta(weeks=k) for k in range(1, weeks + 1)]


def seasonal_score(
    day: dt.date,
    value_of: Callable[[dt.date], float | None],
    *,
    first_day: dt.date,
    weeks: int,
    min_weeks: int,
    min_scale: float,
) -> Score | None:
    """:func:`robust_z` of ``value_of(day)`` against ``value_of`` of the same weekday in up
    to ``weeks`` previous weeks that are not before ``first_day`` (the first day with data)
    and have a value (``None``: undefined that day, e.g. a rate without entries). ``None``
    when the day has no value or fewer than ``min_weeks`` history points remain."""
    value = value_of(day)
    if value is None:
        return None
    history = [v for d in same_weekday(day, weeks) if d >= first_day and (v := value_of(d)) is not None]
    if len(history) < min_weeks:
        return None
    return robust_z(value, history, min_scale)


def log_count(n: int) -> float:
    """The scored form of a count: ``ln(1 + n)``."""
    return math.log1p(n)
