"""Names a user types: `td3bc`, `TD3+BC`, `td3-bc` and `TD3_BC` all mean `td3_bc`.

Every lookup by name (algorithms, dataset cards, sequence methods and extension points, suites) goes through
`resolve`, which ignores case and the characters `-`, `_`, `+` (and spaces), and answers an unknown name with the
closest registered names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_SEPARATORS = re.compile(r"[-_+\s]")


def name_key(name: str) -> str:
    """The comparison key of a name: lower case, without `-`, `_`, `+` or spaces."""
    return _SEPARATORS.sub("", str(name)).lower()


def find(name: str, names: Iterable[str]) -> str | None:
    """The registered name that `name` means, or None. An exact match wins over a normalised one."""
    names = list(names)
    if name in names:
        return name
    key = name_key(name)
    matches = [n for n in names if name_key(n) == key]
    return matches[0] if len(matches) == 1 else None


def suggest(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` registered names closest to `name` (compared on their keys)."""
    by_key: dict[str, str] = {}
    for candidate in names:
        by_key.setdefault(name_key(candidate), candidate)
    close = difflib.get_close_matches(name_key(name), list(by_key), n=n, cutoff=0.5)
    return [by_key[k] for k in close]


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`"; did you mean 'td3_bc'?"` (or an empty string when nothing is close)."""
    close = suggest(name, names)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def resolve(name: str, names: Iterable[str], kind: str, error: type[Exception]) -> str:
    """The registered name `name` means; otherwise raise `error` naming the closest names and all of them."""
    names = sorted(names)
    found = find(name, names)
    if found is None:
        raise error(f"unknown {kind} '{name}'{did_you_mean(name, names)} (available: {', '.join(names) or 'none'})")
    return found
