"""Typed tables from TOML: a dataclass per table, every problem collected with its key path.

``build(cls, data, path, problems)`` makes a dataclass instance from a parsed TOML table:
each field's type (bool, int, float, str, lists of them, nested dataclasses) and its
``metadata`` (``rng(lo, hi)``, ``choice(...)``, a ``pattern``, ``required``, ``secret``)
are checked, unknown keys are reported with the nearest known one, and each problem is
appended to ``problems`` as ``key.path: what is wrong, got what`` (a secret's value is
never shown) while building goes on with defaults, so one run finds them all.
``substitute_env`` replaces ``${NAME}`` in strings with environment variables first. The
gateway's config (config.py) and the simulator's scenarios (tools/sim_scenario.py) are
both read this way.
"""

from __future__ import annotations

import difflib
import re
import types
from dataclasses import fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def rng(lo: int | float, hi: int | float) -> dict[str, Any]:
    return {"range": (lo, hi)}


def choice(*options: str) -> dict[str, Any]:
    return {"choices": options}



def substitute_env(value: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    """Replace ${NAME} in every string with the environment variable NAME."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                problems.append(f"{path}: environment variable {name} is not set")
                return ""
            return env[name]

        return ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, f"{path}.{k}" if path else k, env, problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def _describe(value: Any) -> str:
    if isinstance(value, str) and len(value) >= 40:
        return repr(value[:37] + "...")
    return repr(value)


def _check_scalar(tp: Any, value: Any, meta: dict[str, Any], path: str,
                  problems: list[str]) -> Any:
    shown = "(secret)" if meta.get("secret") else _describe(value)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: must be true or false, got {shown}")
        return value
    if tp is int or tp is float:
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok or (tp is float and isinstance(value, float))
        kind = "an integer" if tp is int else "a number"
        lo, hi = meta.get("range", (None, None))
        if not ok:
            where = f" {lo}..{hi}" if lo is not None else ""
            problems.append(f"{path}: must be {kind}{where}, got {shown}")
        elif lo is not None and not lo <= value <= hi:
            problems.append(f"{path}: must be {kind} {lo}..{hi}, got {shown}")
        return float(value) if tp is float and ok else value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: must be a string, got {shown}")
            return value
        if "choices" in meta and value not in meta["choices"]:
            problems.append(f"{path}: must be one of {', '.join(meta['choices'])}, got {shown}")
        pattern = meta.get("pattern")
        if pattern is not None and value and not pattern.fullmatch(value):
            problems.append(f"{path}: {shown} does not match {pattern.pattern}")
        return value
    return value


def build(cls: Any, data: Any, path: str, problems: list[str]) -> Any:
    """An instance of dataclass cls from a TOML table, recording every problem."""
    if not isinstance(data, dict):
        problems.append(f"{path or '(top level)'}: must be a table")
        return cls()
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{path + '.' if path else ''}{key}: unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        fpath = f"{path}.{name}" if path else name
        tp = hints[name]
        if name not in data:
            if f.metadata.get("required"):
                problems.append(f"{fpath}: required")
            continue
        value = data[name]
        if isinstance(tp, types.UnionType):  # "X | None": TOML has no null, so it is an X
            tp = next(a for a in get_args(tp) if a is not type(None))
        if is_dataclass(tp):
            kwargs[name] = build(tp, value, fpath, problems)
        elif get_origin(tp) is list:
            (item,) = get_args(tp)
            if not isinstance(value, list):
                problems.append(f"{fpath}: must be a list")
                continue
            if is_dataclass(item):
                kwargs[name] = [build(item, v, f"{fpath}[{i}]", problems)
                                for i, v in enumerate(value)]
            else:
                secret = {"secret": True} if f.metadata.get("secret") else {}
                kwargs[name] = [_check_scalar(item, v, secret, f"{fpath}[{i}]", problems)
                                for i, v in enumerate(value)]
        else:
            kwargs[name] = _check_scalar(tp, value, dict(f.metadata), fpath, problems)
    try:
        return cls(**kwargs)
    except TypeError:  # a problem is already recorded; keep going with defaults
        return cls()
