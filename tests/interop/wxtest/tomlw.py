"""A small TOML writer (Python 3.11 only ships a reader, ``tomllib``).

Covers what a Waxwing config needs: strings, ints, floats, bools, lists of
scalars, nested tables and arrays of tables.
"""

from __future__ import annotations

import json
from typing import Any


def merge(base: dict, override: dict | None) -> dict:
    """Deep-merge ``override`` into a copy of ``base``; tables merge, values replace."""
    out = {k: (merge(v, None) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dumps(data: dict, _prefix: str = "") -> str:
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) or _is_table_array(value):
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_scalar(value)}")
    for key, value in tables:
        name = f"{_prefix}.{_key(key)}" if _prefix else _key(key)
        if isinstance(value, dict):
            lines.append("")
            lines.append(f"[{name}]")
            body = dumps(value, name)
            if body:
                lines.append(body)
        else:
            for item in value:
                lines.append("")
                lines.append(f"[[{name}]]")
                body = dumps(item, name)
                if body:
                    lines.append(body)
    return "\n".join(lines).strip("\n")


def _key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key)
