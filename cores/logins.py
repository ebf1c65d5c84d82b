"""Failed console log-ins back off per client address and per account.

After n failed log-ins in a row (from one address, or for one user name, whether or not an
account has that name) the next try is refused until `delay_s(n)` seconds after the last
failure: 1 s, 2 s, 4 s ... up to 60 s. The counters live in Redis with a TTL, so every console
process sees them and they fade after LOGIN_FAILS_KEEP_S without failures.

    delay_s(failures) -> seconds       the rule, a plain function
    LoginBackoff(redis, clock)
        .attempt(client, account)       the wait left, or 0 and the try counted as failed
        .succeeded(account, client)     forget the account's failures, take back the try
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import redis

from constants.console import (
    LOGIN_BACKOFF_FIRST_S,
    LOGIN_BACKOFF_MAX_S,
    LOGIN_FAILS_ACCOUNT,
    LOGIN_FAILS_CLIENT,
    LOGIN_FAILS_KEEP_S,
)


def delay_s(failures: int) -> float:
    """How long after the last of `failures` failed log-ins in a row the next one is heard."""
    if failures <= 0:
        return 0.0
    return min(LOGIN_BACKOFF_MAX_S, LOGIN_BACKOFF_FIRST_S * 2 ** min(failures - 1, 32))


def wait_left(failures: int, last: float, now: float) -> float:
    """Seconds still to wait at `now`, the last failure having been at `last`."""
    return max(0.0, last + delay_s(failures) - now)


class LoginBackoff:
    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.clock = clock

    def _keys(self, client: str, account: str) -> tuple[str, str]:
        # A user name is whatever was typed: fold case and cap it, so that neither variants
        # of one name nor a huge one make keys of their own.
        name = account.strip().lower()[:64]
        return (LOGIN_FAILS_CLIENT.format(client=client), LOGIN_FAILS_ACCOUNT.format(account=name))

    def attempt(self, client: str, account: str) -> float:
        """Seconds to wait before a try is heard (refused, nothing counted), or 0: the try is
        counted as a failure at once, before its password is checked, so that tries sent
        together back off like tries sent one after another; `succeeded` takes it back."""
        keys = self._keys(client, account)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    now = self.clock()
                    left = 0.0
                    for key in keys:
                        failures, last = cast(list[str | None], pipe.hmget(key, "failures", "last"))
                        if failures is not None and last is not None:
                            left = max(left, wait_left(int(failures), float(last), now))
                    if left > 0:
                        pipe.unwatch()
                        return left
                    pipe.multi()
                    for key in keys:
                        pipe.hincrby(key, "failures", 1)
                        pipe.hset(key, "last", now)
                        pipe.expire(key, LOGIN_FAILS_KEEP_S)
                    pipe.execute()
                    return 0.0
                except redis.WatchError:
                    continue

    def succeeded(self, account: str, client: str | None = None) -> None:
        """Forget the account's failures; with `client`, take back the try `attempt` counted
        against the address."""
        client_key, account_key = self._keys(client or "", account)
        with self.redis.pipeline() as pipe:
            pipe.delete(account_key)
            if client is not None:
                pipe.hincrby(client_key, "failures", -1)
            pipe.execute()
