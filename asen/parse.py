"""Reading untrusted text and structures one way, bounded: whole numbers (ASCII digits only;
`"²".isdigit()` is true but `int("²")` raises), reprs for error messages that cannot
expand a shared-reference structure, and a depth/size check on loaded data."""

from __future__ import annotations

import reprlib
from typing import Any

from asen import AsenError

MAX_DIGITS = 18  # a whole number's digits: below 2**63, and far below int()'s own limit
MAX_DEPTH = 32  # nesting of loaded config-like data (asen's own needs 4)
MAX_NODES = 100_000  # containers and values visited in loaded config-like data

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple = 3, 6, 6, 6


def whole_number(text: str) -> int | None:
    """`text` as a non-negative int when it is 1 to MAX_DIGITS ASCII digits, else None."""
    if 0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def short_repr(value: Any) -> str:
    """repr(value) cut to about 80 characters, built without expanding the whole value."""
    return _REPR.repr(value)


def check_structure(
    value: Any, source: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES
) -> None:
    """Refuse data nested deeper than `max_depth` or holding more than `max_nodes` items
    (a shared-reference list counts each time it is reached), as one line naming `source`.
    The walk stops at the first excess, so its cost is bounded too."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > max_nodes:
            raise AsenError(f"{source}: too large (more than {max_nodes:,} values)")
        if depth > max_depth:
            raise AsenError(f"{source}: nested more than {max_depth} levels deep")
        if not isinstance(item, (dict, list, tuple, set, frozenset)):
            continue
        count = 2 * len(item) if isinstance(item, dict) else len(item)
        if seen + len(stack) + count > max_nodes:  # before copying a huge container
            raise AsenError(f"{source}: too large (more than {max_nodes:,} values)")
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in children)
