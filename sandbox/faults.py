"""Fault injection and the Idempotency-Key memory: how the sandbox plays the real gateway's
troubles, and how it makes a repeated POST safe.

Faults: the SANDBOX_FAULT_* switches of shared/midtrans.md (names without the prefix), read
from the environment at start and changed at run time (`POST /simulator/faults`). They apply
to the Midtrans API paths (`/v2/...`), never to the simulator. Where the table leaves room:

- DROP_RATE: the call is carried out, then the connection is closed with no answer (the case
  an Idempotency-Key exists for). ERROR_RATE: the call is not carried out.
- LATENCY_MS: slept after an Idempotency-Key is claimed, so a repeat arriving meanwhile sees it
  in flight (HTTP 202).
- PENDING_AFTER_PAY_S: GET /status says pending; cancel / expire answer 412 (it is paid);
  notifications and the simulator's ledger tell the truth.
- NOTIFY_REORDER: a transaction's pending notification is held back until its next change
  and sent right after that one.
- BAD_QR: new charges get a qr_string with a wrong CRC, the real sandbox's "unparsable QR".

Idempotency-Key (shared/midtrans.md, "Hosts, auth, headers"): the same key on the same path
within 5 minutes gets the stored successful answer, whatever the body; a failed answer is
not stored; a repeat while the first is in flight gets HTTP 202. Kept in memory only: a
restarted sandbox has forgotten its keys (its ledger it has not).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cores.config import SANDBOX_FAULTS
from cores.logs import kv
from cores.midtrans_wire import IDEMPOTENCY_KEY_MAX_LEN, STATUS_READ_CODES
from sandbox.messages import invalid

log = logging.getLogger(__name__)

#: Fault switches and their types: the SANDBOX_FAULT_* names of shared/midtrans.md.
FAULTS: Mapping[str, type] = SANDBOX_FAULTS
RATE_FAULTS = frozenset({"ERROR_RATE", "DROP_RATE", "NOTIFY_DUPLICATE_RATE"})
FAULT_ENV_PREFIX = "SANDBOX_FAULT_"
#: What ERROR_RATE answers: one of these codes, at random.
FAULT_ANSWERS = {
    "500": "Sorry. Our system is recovering from unexpected issues. Please retry.",
    "503": "Sorry, the service is temporarily unavailable. Please try again later.",
    "429": "Too many requests. Rate limit exceeded, please try again later.",
}
#: How long an Idempotency-Key's successful answer is remembered.
IDEMPOTENCY_TTL_S = 5 * 60
IN_FLIGHT = {
    "status_code": "202",
    "status_message": "Request with this Idempotency-Key is being processed",
}


def check_faults(faults: Mapping[str, object]) -> dict[str, float]:
    """Validated fault settings; names with or without the SANDBOX_FAULT_ prefix.

    Raises ValueError naming the first bad entry: an unknown name, a value that is not a
    number >= 0, a rate above 1, or a fraction where a whole number is expected.
    """
    clean: dict[str, float] = {}
    for raw_name, value in faults.items():
        name = str(raw_name).upper().removeprefix(FAULT_ENV_PREFIX)
        if name not in FAULTS:
            raise ValueError(f"unknown fault {raw_name!r}; known: {', '.join(FAULTS)}")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"fault {name} must be a number >= 0, not {value!r}")
        if name in RATE_FAULTS and value > 1:
            raise ValueError(f"fault {name} is a share from 0 to 1, not {value!r}")
        if FAULTS[name] is int:
            if value != int(value):
                raise ValueError(f"fault {name} must be a whole number, not {value!r}")
            clean[name] = int(value)
        else:
            clean[name] = float(value)
    return clean


@dataclass(frozen=True)
class ApiRoll:
    """The faults drawn for one API call."""

    drop: bool  # carry the call out, then close the connection unanswered
    fail_code: str  # "500" / "503" / "429": answer that instead; "" for none
    latency_s: float


class FaultSwitches:
    """The current fault settings (every name, 0 when off) and their random draws.
    `seed` makes the draws repeatable. Thread-safe."""

    def __init__(self, initial: Mapping[str, object] | None = None, seed: int | None = None):
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._values: dict[str, float] = dict.fromkeys(FAULTS, 0)
        self._values.update(check_faults(initial or {}))

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def __getitem__(self, name: str) -> float:
        with self._lock:
            return self._values[name]

    def update(self, faults: Mapping[str, object]) -> dict[str, float]:
        """Change some settings (ValueError on a bad one; nothing changes then); all of them."""
        clean = check_faults(faults)
        with self._lock:
            self._values.update(clean)
            result = dict(self._values)
        log.info("sandbox faults", extra=kv(**clean))
        return result

    def active(self) -> str:
        """ "LATENCY_MS=5,BAD_QR=1", or "none"."""
        values = self.snapshot()
        return ",".join(f"{k}={v}" for k, v in values.items() if v) or "none"

    def roll_api(self) -> ApiRoll:
        """Draw DROP_RATE and ERROR_RATE for one API call."""
        with self._lock:
            drop_rate, error_rate = self._values["DROP_RATE"], self._values["ERROR_RATE"]
            drop = bool(drop_rate) and self._rng.random() < drop_rate
            fail = bool(error_rate) and self._rng.random() < error_rate
            fail_code = self._rng.choice(sorted(FAULT_ANSWERS)) if fail else ""
            return ApiRoll(drop, fail_code, self._values["LATENCY_MS"] / 1000)

    def roll(self, rate: str) -> bool:
        """True with the probability of the rate fault `rate` (never when it is 0)."""
        with self._lock:
            share = self._values[rate]
            return bool(share) and self._rng.random() < share


@dataclass
class _Entry:
    in_flight: bool
    at: float
    http: int = 0
    body: dict[str, Any] | None = None


class IdempotencyKeys:
    """Idempotency-Keys seen in the last 5 minutes (by `clock`, Unix seconds), per path."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def claim(self, path: str, key: str) -> tuple[int, dict[str, Any]] | None:
        """Mark `key` in flight on `path` (None); or, for a repeat, what to answer: the
        stored (HTTP status, body), or (202, in flight). SandboxError 400 for a key that is
        empty or longer than Midtrans allows."""
        if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX_LEN:
            raise invalid(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LEN} characters")
        with self._lock:
            now = self._clock()
            for slot, old in list(self._entries.items()):
                if now - old.at >= IDEMPOTENCY_TTL_S and not old.in_flight:
                    del self._entries[slot]
            entry = self._entries.get((path, key))
            if entry is None:
                self._entries[(path, key)] = _Entry(in_flight=True, at=now)
                return None
            if entry.in_flight:
                return 202, dict(IN_FLIGHT)
            assert entry.body is not None
            return entry.http, entry.body

    def release(self, path: str, key: str, http: int, code: str, body: bytes) -> None:
        """Store a successful answer (HTTP 200 with a success status_code `code`, its JSON
        `body`) for the key; forget the key after any other answer, or none."""
        with self._lock:
            if http == 200 and code in STATUS_READ_CODES:
                self._entries[(path, key)] = _Entry(False, self._clock(), http, json.loads(body))
            else:
                self._entries.pop((path, key), None)
