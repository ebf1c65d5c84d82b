"""The console's operators: names and argon2id password hashes, fleet-wide in Redis.

`constants.keys.OPERATORS` is a hash name -> argon2id hash (argon2-cffi's PasswordHasher, its
RFC 9106 low-memory profile). Only hashes are stored (shared/DESIGN.md, "Operator console").
`verify` spends one hash whether the name exists or not, so its time does not tell names.
"""

from __future__ import annotations

import logging
import re
from typing import cast

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from constants import keys
from cores.console_errors import ActionRefused, InvalidInput, NotFound
from cores.logs import kv

log = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z0-9_.-]{1,32}$")
PASSWORD_MIN_CHARS = 10
PASSWORD_MAX_CHARS = 1024

_hasher = PasswordHasher()  # argon2id, argon2-cffi's defaults (RFC 9106 low memory)
#: What `verify` checks a missing name against, so that it costs what a real check costs.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput("name", "a name has 1 to 32 characters: a-z, 0-9, '_', '.' or '-'")
    return name


def check_password(password: str) -> str:
    if (
        not isinstance(password, str)
        or not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS
    ):
        raise InvalidInput("password", f"a password has at least {PASSWORD_MIN_CHARS} characters")
    return password


class Accounts:
    """Operators of the console. The client is passed in (fakeredis in tests)."""

    def __init__(self, client: redis.Redis, key: str = keys.OPERATORS) -> None:
        self.redis = client
        self.key = key

    def add(self, name: str, password: str, replace: bool = False) -> None:
        """A new operator (ActionRefused when the name is taken, unless `replace`: a new
        password for an existing one)."""
        check_name(name)
        hashed = _hasher.hash(check_password(password))
        if replace:
            self.redis.hset(self.key, name, hashed)
        elif not self.redis.hsetnx(self.key, name, hashed):
            raise ActionRefused(f"an operator named {name!r} exists already")
        log.info("operator added", extra=kv(name=name, replaced=replace))

    def verify(self, name: str, password: str) -> bool:
        """Whether `password` is `name`'s: constant-time, one hash spent either way."""
        hashed = (
            self.redis.hget(self.key, name) if isinstance(name, str) and NAME.match(name) else None
        )
        try:
            ok = _hasher.verify(cast(str, hashed) if hashed else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False
        if ok and hashed and _hasher.check_needs_rehash(cast(str, hashed)):
            self.redis.hset(self.key, name, _hasher.hash(password))
        return bool(ok and hashed)

    def remove(self, name: str) -> None:
        check_name(name)
        if not self.redis.hdel(self.key, name):
            raise NotFound("name", f"no operator named {name!r}")
        log.info("operator removed", extra=kv(name=name))

    def exists(self, name: str) -> bool:
        return bool(self.redis.hexists(self.key, name))

    def names(self) -> list[str]:
        return sorted(cast(list[str], self.redis.hkeys(self.key)))
