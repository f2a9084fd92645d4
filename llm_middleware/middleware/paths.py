"""Matching request paths against the base path at a segment boundary."""

from __future__ import annotations


def normalize_base_path(base_path: str) -> str:
    """Return ``base_path`` with one leading slash and no trailing slash (``"ai/"`` -> ``"/ai"``).

    The root (``"/"`` or ``""``) is refused: the wrapped app would never see a request.
    """
    normalized = "/" + base_path.strip("/")
    if normalized == "/":
        raise ValueError("base_path must name a path prefix such as '/ai', not the root")
    return normalized


def relative_path(path: str, root_path: str) -> str:
    """``path`` without the server's ``root_path`` in front (ASGI puts it there; some servers do not)."""
    if root_path and (path == root_path or path.startswith(root_path.rstrip("/") + "/")):
        return path[len(root_path.rstrip("/")) :] or "/"
    return path


def match_prefix(path: str, base_path: str) -> str | None:
    """The part of ``path`` under ``base_path`` (always starting with ``/``), or None if outside it.

    ``/ai`` and ``/ai/...`` are under ``/ai``; ``/aix`` is not.
    """
    if path == base_path:
        return "/"
    if path.startswith(base_path) and path[len(base_path)] == "/":
        return path[len(base_path) :]
    return None
