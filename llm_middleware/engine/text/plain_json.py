"""Free-form values a caller sends (template variables, JSON Schemas): plain JSON data, of bounded depth and size."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidRequestError

_SCALARS = (str, int, float, bool, type(None))


def check_plain_json(value: Any, param: str, *, max_depth: int, max_size: int | None = None) -> int:
    """Raise :class:`InvalidRequestError` naming ``param`` unless ``value`` is JSON data (dicts with string
    keys, lists, strings, numbers, booleans, None) whose containers nest at most ``max_depth`` levels,
    and, with ``max_size``, whose strings and keys hold at most that many characters in all (other
    values count one each).  Returns that size.

    The walk stops at the first excess, so checking a huge value costs no more than ``max_size`` allows.
    """
    size = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, _SCALARS):
            size += 1
        elif isinstance(item, dict | list | tuple):
            if depth > max_depth:
                raise InvalidRequestError(f"'{param}' is nested more than {max_depth} levels deep.", param=param)
            for key, child in item.items() if isinstance(item, dict) else enumerate(item):
                if isinstance(item, dict):
                    if not isinstance(key, str):
                        raise InvalidRequestError(f"'{param}' must have string keys only.", param=param)
                    size += len(key)
                size += 1
                if max_size is not None and size > max_size:
                    break
                stack.append((child, depth + 1))
        else:
            raise InvalidRequestError(
                f"'{param}' must be plain JSON data (objects, arrays, strings, numbers, booleans, null), "
                f"not {type(item).__name__}.",
                param=param,
            )
        if max_size is not None and size > max_size:
            raise InvalidRequestError(f"'{param}' is larger than {max_size} characters.", param=param)
    return size
