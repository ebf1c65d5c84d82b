"""The audit record of operator actions: one entry schema for every audit stream (a machine's
`vm:{id}:audit`, the fleet's `fleet:{fleet}:audit`), written in the caller's MULTI.

An entry: actor (`cli:NAME`, `console:NAME`), action, target, before and after (JSON), at
(unix s). Secrets never go in it: the callers pass what an operator may see.
"""

from __future__ import annotations

import json
from typing import Any, cast

from cores.console_errors import InvalidInput


def check_actor(actor: str) -> None:
    """Every operator action names who did it (InvalidInput otherwise)."""
    if not actor.strip():
        raise InvalidInput("actor", "every operator action names who did it")


def append(
    pipe: Any, key: str, actor: str, action: str, target: str, before: Any, after: Any, at: float
) -> None:
    """Queue one entry on `pipe` (a pipeline in MULTI, or a client)."""
    pipe.xadd(
        key,
        {
            "actor": actor,
            "action": action,
            "target": target,
            "before": json.dumps(before, sort_keys=True),
            "after": json.dumps(after, sort_keys=True),
            "at": at,
        },
    )


def read(client: Any, key: str, count: int = 100) -> list[dict[str, Any]]:
    """The newest `count` entries, newest first; before and after parsed."""
    found = cast(list[tuple[str, dict[str, str]]], client.xrevrange(key, count=count))
    out = []
    for entry_id, fields in found:
        entry: dict[str, Any] = dict(fields)
        for name in ("before", "after"):
            entry[name] = json.loads(entry.get(name) or "null")
        out.append({"id": entry_id, **entry, "at": float(entry["at"])})
    return out
