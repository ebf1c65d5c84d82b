"""Shared fixtures, and the markers each test gets.

Fixtures: a fakeredis client, a private real Redis (one per session, flushed per test) and
redis-servers a test may stop and start, a private Redis Cluster of 3 masters + 3 replicas
(one per session; its client flushed per test, any node a test killed started again), fast
settings, a clock moved by hand, a machine on
the real Redis (`broker`, with the `menu` a module may override), the local Midtrans sandbox,
the notification receiver, a check that no server logged an error, Chromium for Playwright.

Markers (pyproject.toml) are set here from the fixtures a test uses: `integration` for a real
redis-server, `browser` for Chromium. Where the fixtures do not tell, a test says so itself
(`pytestmark` or a mark of its own): `integration` when it starts processes of the machine
(main.py, websocket_server.py, the sandbox service), `slow` when it runs for more than about
3 s on its own (the chaos soak, a kill -9 and restart, every fuzz test under the long
profile). The real half of a test parametrized over fakeredis and a real Redis carries
`integration` on its parameter. `make test-fast` runs what carries none of the three.

Tests that need a real redis-server or Chromium skip with a reason on a laptop that lacks
them, and fail instead when CI=true (tests/machine_helpers.need).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from segno import encoder as segno_encoder

from cores.broker import Broker
from cores.config import LOCAL_SANDBOX_KEY, Settings
from cores.midtrans import MidtransClient
from cores.redis_cluster import LocalCluster, find_cli
from cores.redis_process import RedisProcess, find_binary
from sandbox import Sandbox
from services.notification_service import NotificationServer, RefusalBox
from services.runtime import load_menu
from tests import fuzz_helpers
from tests.machine_helpers import Clock, need, need_redis_server

CHROMIUM = next(
    (p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()),
    shutil.which("chromium"),
)

# --- markers -----------------------------------------------------------------------------------

#: Fixtures that start a real redis-server: a test that uses one, even through another
#: fixture, is an integration test.
INTEGRATION_FIXTURES = frozenset(
    {"redis_server", "real_redis", "start_redis_server", "redis_cluster", "cluster_client"}
)
#: pytest-playwright's fixtures: a test that uses one drives Chromium.
BROWSER_FIXTURES = frozenset({"browser", "context", "new_context", "page"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if used & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The number of fuzz cases run (tests/test_fuzz_*.py), when fuzz tests ran."""
    line = fuzz_helpers.summary()
    if line:
        terminalreporter.write_line(line)


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One private redis-server per test session, on a free port."""
    need_redis_server()
    server = RedisProcess(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    """A client of the private real Redis, flushed before the test."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=10)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def start_redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Start redis-servers of the test's own, which it may stop and start again (an outage);
    with `appendonly` their data survives that. All are stopped after the test."""
    need_redis_server()
    started: list[RedisProcess] = []

    def start(appendonly: bool = False) -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis-{len(started)}", appendonly=appendonly)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One private Redis Cluster per test session (cores/redis_cluster.py): 3 masters and a
    replica each, real redis-servers on free ports. A test may kill and restart nodes; the
    `cluster_client` fixture makes it whole again for the next test."""
    need_redis_server()
    need(find_cli(find_binary()) is not None, "no redis-cli on PATH (apt-get install redis-tools)")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster, settings: Settings) -> Iterator[redis.Redis]:
    """The cluster client of services/runtime.py (a redis.cluster.RedisCluster) on the
    private cluster, every master flushed before the test."""
    from services.runtime import redis_client

    for port in redis_cluster.dead():  # a node an earlier test killed
        redis_cluster.restart(port)
    redis_cluster.wait_ready(30)
    client = redis_client(settings.replace(redis_url=redis_cluster.url), "tests")
    client.flushall()
    yield client
    client.close()


# --- the machine -------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Fast settings for tests: short deadlines, a private VAR_DIR."""
    return Settings(
        payment_deadline_s=3,
        menu_idle_s=30,
        result_screen_s=1,
        dispense_s=0.1,
        var_dir=tmp_path / "var",
    )


@pytest.fixture
def clock() -> Clock:
    """A clock that stands still at machine_helpers.T0 until the test moves it. (The sandbox
    tests have their own, which runs with real time: sandbox_helpers.FakeClock.)"""
    return Clock()


@pytest.fixture
def menu(settings: Settings) -> list[dict]:
    """The drinks of the test machine: menu.json's. A module may override this fixture."""
    return load_menu(settings.menu_file)


@pytest.fixture
def broker(real_redis: redis.Redis, settings: Settings, menu: list[dict]) -> Broker:
    """A machine on the private real Redis, at IDLE with `menu` and its stock."""
    b = Broker(real_redis, settings.machine_id)
    b.ensure_ready(menu)
    return b


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """The local Midtrans sandbox, in-process on a free port, accepting any SB- key."""
    sb = Sandbox(port=0)
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture
def notification_server(broker: Broker, sandbox: Sandbox) -> Iterator[NotificationServer]:
    """The notification receiver and its late-payment desk, in-process on port 0, working on
    `broker` and reading statuses from `sandbox`. Refusals are not rate limited: the tests
    send every request, good or bad, from one address (the limit has tests of its own)."""
    client = MidtransClient(sandbox.url, LOCAL_SANDBOX_KEY)
    unlimited = RefusalBox(burst=float("inf"))
    server = NotificationServer(broker, client, LOCAL_SANDBOX_KEY, box=unlimited).start()
    yield server
    server.stop()
    client.close()


@pytest.fixture
def errors() -> Iterator[fuzz_helpers.ErrorRecords]:
    """ERROR records of any logger during the test; `errors.check()` fails if there are any."""
    handler = fuzz_helpers.ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# --- the kiosk page ------------------------------------------------------------------------------


@pytest.fixture
def segno_standard_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    """segno adds a whole zero byte when the bit stream already ends on a codeword boundary
    (segno issues #123 and #148); ISO/IEC 18004 7.4.10 adds padding bits only up to that
    boundary, as qrcode-generator (which web/kiosk.js uses) does. Byte mode always ends on
    it, so compare with segno corrected."""

    def write_padding_bits(buff: Any, version: int, length: int) -> None:
        buff.extend([0] * (-length % 8))

    monkeypatch.setattr(segno_encoder, "write_padding_bits", write_padding_bits)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """pytest-playwright: drive Debian's Chromium (never a downloaded browser)."""
    need(CHROMIUM is not None, "Chromium is not installed (apt-get install -y chromium)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }
