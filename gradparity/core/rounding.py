"""Numbers as report files write them: a stated number of significant digits, strict JSON.

report.json and table.csv round every derived statistic to ``SIGNIFICANT_DIGITS`` significant
digits. Together with the noise floor of ``metrics.tensor_diff`` (errors below a thousandth
of the allowed error count as 0), this makes a float64 report identical on any machine and
thread count: BLAS kernels differ in the last bits of a sum, at the 16th digit, and a rounded
figure only moves when a value sits within that distance of a rounding boundary.
"""

from __future__ import annotations

import math

SIGNIFICANT_DIGITS = 6
_FORMAT = f".{SIGNIFICANT_DIGITS}g"
_PLAIN = (str, int, bool, type(None))


def round_sig(value: float) -> float:
    """``value`` rounded to ``SIGNIFICANT_DIGITS`` significant digits (finite values only)."""
    return float(format(value, _FORMAT))


def json_value(value, *, rounded: bool = True):
    """A strict-JSON copy of ``value``: floats rounded (unless ``rounded`` is False),
    non-finite floats as the strings "inf", "-inf" and "nan", tuples as lists, NumPy scalars
    as Python numbers, dict keys as strings."""
    kind = type(value)
    if kind in _PLAIN:  # the common case first: reports hold 10^5 scalars
        return value
    if kind is float:
        if math.isfinite(value):
            return round_sig(value) if rounded else value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_value(v, rounded=rounded) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v, rounded=rounded) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return json_value(value.item(), rounded=rounded)
    if isinstance(value, float):  # float subclasses
        return json_value(float(value), rounded=rounded)
    return value


def round_row(row: dict, float_keys: tuple[str, ...]) -> dict:
    """``row`` with the floats under ``float_keys`` rounded (a copy; non-finite kept as is)."""
    out = dict(row)
    for key in float_keys:
        value = out.get(key)
        if type(value) is float and math.isfinite(value):
            out[key] = round_sig(value)
    return out
