"""Fleet mode's registry of machines and their tokens (shared/DESIGN.md, "Fleet mode").

An operator registers a machine (`main.py fleet add ID`) and gets its token once; the agent on
that machine presents the id and token to the backend's gateway, once per connection. Only a
SHA-256 digest of the token is kept (constants.keys.FLEET_MACHINES); `revoke` drops it, so a
revoked machine's token is refused from then on. A token is not a password: it is 32 random
bytes (`secrets.token_urlsafe`), so no guess or dictionary can find it from its digest, and a
slow hash (argon2id, as for the operators' passwords) would add nothing against a copy of
Redis while it would cost the gateway about 30 ms of CPU a handshake: a fleet of 1,000
reconnecting at once after a restart would wait 15 s on two cores. Every add and revoke is
written in one MULTI with its entry in FLEET_AUDIT {actor, action, target, before, after, at},
whose records never carry the token or its digest.

`authenticate` spends one digest whether the machine exists, is revoked or not, and compares
in constant time (hmac.compare_digest): the answer's time tells nothing of which. Refused
actions raise cores.console_errors and change nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from constants import keys
from cores import audit
from cores.config import MACHINE_ID, MACHINE_ID_RULE
from cores.console_errors import ActionRefused, InvalidInput, NotFound
from cores.logs import kv

log = logging.getLogger(__name__)

#: Random bytes of a token (43 URL-safe characters).
TOKEN_BYTES = 32
#: A presented token longer than this is refused (after the same hash as any other).
TOKEN_MAX_CHARS = 256

#: How a token's digest is stored: `sha256:` and 64 hex digits.
DIGEST_PREFIX = "sha256:"


def digest(token: str) -> str:
    """The stored form of a token."""
    return DIGEST_PREFIX + hashlib.sha256(token.encode()).hexdigest()


#: What `authenticate` compares against for an unusable machine, so that it costs the same.
_NO_MACHINE = digest(secrets.token_urlsafe(TOKEN_BYTES))


def check_machine_id(machine_id: Any) -> str:
    """A machine id as VENDING_MACHINE_ID takes it (cores/config.py), else InvalidInput."""
    if not isinstance(machine_id, str) or not MACHINE_ID.fullmatch(machine_id):
        raise InvalidInput("machine_id", f"a machine id has {MACHINE_ID_RULE}")
    return machine_id


@dataclass(frozen=True)
class MachineRecord:
    """A registered machine as an operator sees it (never its token or hash)."""

    id: str
    added_at: float
    revoked_at: float | None
    last_seen: float | None
    version: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": "active" if self.active else "revoked",
            "added_at": self.added_at,
            "revoked_at": self.revoked_at,
            "last_seen": self.last_seen,
            "version": self.version,
        }


def _public(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A registry entry as the audit shows it: without the token's hash."""
    if entry is None:
        return None
    return {"added_at": entry.get("added_at"), "revoked_at": entry.get("revoked_at")}


class Fleet:
    """The machines of a fleet. The client and the clock are passed in (fakeredis in tests)."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.clock = clock

    # --- operator actions -------------------------------------------------------------------

    def add(self, machine_id: str, actor: str) -> str:
        """Register `machine_id` and return its new token, which is stored only as a hash and
        cannot be read again. A revoked id may be added again (a new token); an active one
        is refused."""
        check_machine_id(machine_id)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        hashed = digest(token)

        def edit(before: dict[str, Any] | None, now: float) -> dict[str, Any]:
            if before is not None and before.get("revoked_at") is None:
                raise ActionRefused(f"machine {machine_id} is registered already")
            return {"added_at": now, "revoked_at": None, "token_hash": hashed}

        self._change("machine_add", machine_id, edit, actor)
        return token

    def revoke(self, machine_id: str, actor: str) -> None:
        """Refuse `machine_id`'s token from now on (its hash is dropped)."""
        check_machine_id(machine_id)

        def edit(before: dict[str, Any] | None, now: float) -> dict[str, Any]:
            if before is None:
                raise NotFound("machine_id", f"no machine {machine_id} is registered")
            if before.get("revoked_at") is not None:
                raise ActionRefused(f"machine {machine_id} is revoked already")
            return {**before, "revoked_at": now, "token_hash": None}

        self._change("machine_revoke", machine_id, edit, actor)

    # --- the gateway's side -----------------------------------------------------------------

    def authenticate(self, machine_id: Any, token: Any) -> bool:
        """Whether `token` is the token of the active machine `machine_id`: one digest spent
        and a constant-time comparison whatever the answer."""
        entry = None
        if isinstance(machine_id, str) and MACHINE_ID.fullmatch(machine_id):
            entry = self._entry(self.redis.hget(keys.FLEET_MACHINES, machine_id))
        hashed = entry.get("token_hash") if entry and entry.get("revoked_at") is None else None
        presented = token if isinstance(token, str) and len(token) <= TOKEN_MAX_CHARS else ""
        stored = hashed if isinstance(hashed, str) else _NO_MACHINE
        same = hmac.compare_digest(stored.encode(), digest(presented).encode())
        return bool(same and hashed and presented)

    def seen(self, machine_id: str, version: str | None, now: float | None = None) -> None:
        """The gateway heard from the agent of `machine_id`, running `version`. An unknown or
        revoked machine is not recorded."""
        entry = self._entry(self.redis.hget(keys.FLEET_MACHINES, machine_id))
        if entry is None or entry.get("revoked_at") is not None:
            return
        at = self.clock() if now is None else now
        self.redis.hset(
            keys.FLEET_SEEN, machine_id, json.dumps({"last_seen": at, "version": version})
        )

    # --- reading ----------------------------------------------------------------------------

    def machines(self) -> list[MachineRecord]:
        """Every registered machine, revoked ones too, by id."""
        registry = cast(dict[str, str], self.redis.hgetall(keys.FLEET_MACHINES))
        seen = cast(dict[str, str], self.redis.hgetall(keys.FLEET_SEEN))
        out = []
        for machine_id in sorted(registry):
            entry = json.loads(registry[machine_id])
            last = json.loads(seen.get(machine_id) or "{}")
            out.append(
                MachineRecord(
                    id=machine_id,
                    added_at=float(entry["added_at"]),
                    revoked_at=entry.get("revoked_at"),
                    last_seen=last.get("last_seen"),
                    version=last.get("version"),
                )
            )
        return out

    def audit(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest `count` registry changes, newest first; before/after parsed."""
        return audit.read(self.redis, keys.FLEET_AUDIT, count)

    # --- writing ----------------------------------------------------------------------------

    def _change(
        self,
        action: str,
        machine_id: str,
        edit: Callable[[dict[str, Any] | None, float], dict[str, Any]],
        actor: str,
    ) -> None:
        """Read the entry under WATCH, let `edit` judge it, write it with its audit entry in
        one MULTI (one slot: the `{fleet}` hash tag); again if another change came between."""
        audit.check_actor(actor)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys.FLEET_MACHINES)
                    before = self._entry(pipe.hget(keys.FLEET_MACHINES, machine_id))
                    now = self.clock()
                    after = edit(before, now)
                    pipe.multi()
                    pipe.hset(keys.FLEET_MACHINES, machine_id, json.dumps(after, sort_keys=True))
                    audit.append(
                        pipe,
                        keys.FLEET_AUDIT,
                        actor,
                        action,
                        machine_id,
                        _public(before),
                        _public(after),
                        now,
                    )
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        log.info("fleet action", extra=kv(action=action, machine_id=machine_id, actor=actor))

    @staticmethod
    def _entry(raw: Any) -> dict[str, Any] | None:
        return json.loads(raw) if raw else None
