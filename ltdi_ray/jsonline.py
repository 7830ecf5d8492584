"""JSON that every parser reads: a non-finite float (a diverged method's score) is written as null, never as
the ``NaN`` / ``Infinity`` tokens that Python emits and JSON forbids."""

import json
import math


def finite_or_null(obj):
    """``obj`` with every non-finite float inside dicts, lists and tuples replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """:func:`json.dumps` of :func:`finite_or_null` ``(obj)``; refuses anything else JSON cannot hold."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)
