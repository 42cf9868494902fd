"""Reading back JSON state that a ``to_dict`` wrote: every damage names its field.

Model directories are read from disk and manifests arrive from the other side of the trust
boundary, so none of that JSON is trusted. Each reader checks the shape it expects and reports
the dotted path of the first wrong field as ARTIFACT_CORRUPT, which tells an operator which file
to regenerate rather than where a KeyError happened.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TypeVar

import numpy as np

from fair4free.common.errors import ErrorCode, Fair4FreeError

_T = TypeVar("_T")


def corrupt(where: str, detail: str) -> Fair4FreeError:
    """The error for a damaged field at the dotted path ``where``."""
    return Fair4FreeError(ErrorCode.ARTIFACT_CORRUPT, f"{where}: {detail}")


def fields(data: object, where: str, keys: Collection[str]) -> Mapping[str, object]:
    """``data`` as an object holding exactly ``keys``; the first missing one is named first.

    A sequence of keys is checked in its order (the one a reader would fix first), a set in
    sorted order, so the same damage always gives the same message.
    """
    if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
        raise corrupt(where, "must be an object with string keys")
    ordered = keys if isinstance(keys, Sequence) else sorted(keys)
    missing = [key for key in ordered if key not in data]
    extra = sorted(key for key in data if key not in keys)
    if missing:
        raise corrupt(f"{where}.{missing[0]}", "is missing")
    if extra:
        raise corrupt(f"{where}.{extra[0]}", "is not a known field")
    return data


def typed(obj: Mapping[str, object], key: str, kind: type[_T], where: str) -> _T:
    """``obj[key]`` if it is a ``kind``; a JSON true never passes for a number."""
    value = obj[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise corrupt(f"{where}.{key}", f"must be {kind.__name__}, found {type(value).__name__}")
    return value


def float_list(data: object, where: str) -> list[float]:
    """A list of finite numbers (booleans are not numbers here)."""
    if not isinstance(data, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in data
    ):
        raise corrupt(where, "must be a list of numbers")
    values = [float(v) for v in data]
    if not all(np.isfinite(values)):
        raise corrupt(where, "must hold finite numbers")
    return values
