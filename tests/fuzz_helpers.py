"""What the fuzz tests (tests/test_fuzz_*.py) share: their hypothesis profiles, the count of
cases run, a check that no server logged an error, and raw HTTP over a socket.

Profiles: "fuzz", the default, runs a few dozen cases per test (the three files in well under
a minute); `HYPOTHESIS_PROFILE=long` runs more than ten thousand cases in all. The number of
cases run is printed in the terminal summary (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, settings

#: Servers over real sockets: no per-example deadline; the fixtures are per test, not per case.
_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("fuzz", max_examples=25, **_COMMON)
#: 11 generated tests x 1,000 = 11,000 cases at least, before the regression tests.
settings.register_profile("long", max_examples=1000, **_COMMON)
PROFILE = "long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "fuzz"
#: Applied per test rather than loaded globally: the other modules' hypothesis tests keep theirs.
FUZZ = settings.get_profile(PROFILE)
#: pytest-timeout per test: the long profile runs for minutes.
TIMEOUT_S = 1800 if PROFILE == "long" else 300


def fuzz_test(test: Callable) -> Callable:
    """A fuzz test's marks: its timeout, and `slow` under the long profile."""
    test = pytest.mark.timeout(TIMEOUT_S)(test)
    return pytest.mark.slow(test) if PROFILE == "long" else test


#: Settings of the regression tests: their explicit examples first, then a few more.
PINNED = settings(FUZZ, max_examples=10, phases=[Phase.explicit, Phase.generate])

#: How long a server may stay silent before the test fails.
WAIT_S = 5.0

#: Cases run, per test (printed at the end of the run by tests/conftest.py).
CASES: Counter[str] = Counter()


def count(name: str) -> None:
    CASES[name] += 1


def summary() -> str | None:
    """The terminal summary's line: how many cases ran, under which profile."""
    if not CASES:
        return None
    return f"fuzz ({PROFILE} profile): {sum(CASES.values())} cases run: " + ", ".join(
        f"{name}={n}" for name, n in sorted(CASES.items())
    )


class ErrorRecords(logging.Handler):
    """Collects ERROR records of any logger: a server that logs one has crashed somewhere."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        if self.records:
            records, self.records = self.records, []
            lines = [f"{r.name}: {r.getMessage()}" for r in records]
            raise AssertionError("the server logged errors:\n" + "\n".join(lines))


# --- raw HTTP --------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def exchange(port: int, raw: bytes) -> Answer | None:
    """Send raw bytes; the first final answer, or None when the server closed without one.

    The client's side is shut after sending, so that a server waiting for more body sees the
    end at once. Silence longer than WAIT_S fails the test.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        with contextlib.suppress(OSError):  # a server may close before reading everything
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + WAIT_S
        data = b""
        while True:
            answer, complete = _parse_answer(data)
            if complete:
                return answer
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer within {WAIT_S} s to {raw[:120]!r}")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer within {WAIT_S} s to {raw[:120]!r}") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                answer, complete = _parse_answer(data, eof=True)
                return answer
            data += chunk


def _parse_answer(data: bytes, eof: bool = False) -> tuple[Answer | None, bool]:
    """(answer, complete) from the bytes received so far; 1xx interim answers are skipped."""
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            if eof and data:
                raise AssertionError(f"truncated or non-HTTP answer: {data[:200]!r}")
            return None, eof
        lines = data[:head_end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        assert version.startswith("HTTP/1."), f"not an HTTP answer: {data[:200]!r}"
        status = int(rest.split(" ", 1)[0])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            data = data[head_end + 4 :]
            continue
        length = int(headers.get("content-length", "0"))
        body = data[head_end + 4 : head_end + 4 + length]
        if len(body) < length:
            if eof:
                raise AssertionError(f"answer body cut short: {data[:200]!r}")
            return None, False
        return Answer(status, headers, body), True
