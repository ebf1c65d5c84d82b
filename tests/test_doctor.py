"""`main.py doctor` (services/doctor.py): what a deployment needs, checked in plain words;
exit 0 only when every check passes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
import redis

from cores.config import Settings
from cores.fleet import Fleet
from cores.redis_process import free_ports
from services import doctor
from services.doctor import Check, clock_against
from services.gateway_service import Gateway
from tests.kiosk_helpers import WAIT_S
from tests.machine_helpers import launch

T = 1_800_000_000.0


# --- pure --------------------------------------------------------------------------------------


def test_the_clock_is_judged_against_midtrans_s_date_within_thirty_seconds():
    """A clock 10 s off passes; 45 s ahead or behind is a problem that says which way and
    what to do; no date or an unreadable one is a problem, never a pass."""
    assert clock_against(formatdate(T - 10, usegmt=True), T).ok
    ahead = clock_against(formatdate(T - 45, usegmt=True), T)
    behind = clock_against(formatdate(T + 45, usegmt=True), T)
    assert not ahead.ok and "45 s ahead of Midtrans" in ahead.detail and "NTP" in ahead.detail
    assert not behind.ok and "behind" in behind.detail
    assert not clock_against(None, T).ok and not clock_against("yesterday", T).ok


def test_a_line_says_ok_or_problem_then_what_and_why():
    assert Check("redis", True, "answers").line().split() == ["ok", "redis", "answers"]
    assert Check("kiosk", False, "down").line().startswith("PROBLEM  kiosk")


# --- checks against real parts --------------------------------------------------------------------


def test_midtrans_with_a_key_it_accepts_and_one_it_refuses(sandbox, tmp_path):
    """Against the sandbox over HTTP: a key it accepts answers 404 for a made-up order (ok, and
    the clock is compared with the answer's date); a refused key is a problem naming the
    settings to check."""
    good = Settings(
        midtrans_server_key="SB-Mid-server-doctor",
        midtrans_base_url_override=sandbox.url,
        var_dir=tmp_path,
    )
    midtrans, clock = doctor.check_midtrans_and_clock(good)
    assert midtrans.ok and "accepts the key" in midtrans.detail
    assert clock.ok, clock.detail
    bad = good.replace(midtrans_server_key="Mid-server-not-a-sandbox-key")
    refused, _ = doctor.check_midtrans_and_clock(bad)
    assert not refused.ok and "refused (401)" in refused.detail
    assert "MIDTRANS_SERVER_KEY" in refused.detail


def test_an_unreachable_redis_a_taken_port_and_a_silent_kiosk_are_problems(tmp_path):
    """Nothing listens on the kiosk port, Redis is configured where none runs, and another
    program holds the console's port: each is a problem, and doctor exits 1."""
    import socket

    ws_port, redis_port, operator_port = free_ports(3)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", operator_port))
    squatter.listen()
    try:
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            ws_port=ws_port,
            operator_port=operator_port,
            var_dir=tmp_path,
        )
        said: list[str] = []
        assert doctor.main(settings, said.append) == 1
    finally:
        squatter.close()
    text = "\n".join(said)
    assert "PROBLEM  redis" in text and "does not answer" in text
    assert f"PROBLEM  port {operator_port}" in text and "another program" in text
    assert "PROBLEM  kiosk" in text and "is the machine running?" in text
    assert f"ok       port {ws_port}" in text
    assert said[-1].endswith("problem(s) to fix")


@pytest.mark.integration
@pytest.mark.slow
def test_doctor_passes_on_a_running_machine(tmp_path):
    """`main.py doctor` beside a running `main.py up` (same settings): Redis answers, every
    port is served by this machine, the local sandbox is said, the kiosk page answers: exit 0."""
    machine = launch(tmp_path)
    try:
        done = machine.main("doctor")
    finally:
        assert machine.stop() == 0
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("redis", "midtrans", "dispenser", "disk", "kiosk"):
        assert any(line.split()[:2] == ["ok", name] for line in done.stdout.splitlines()), name
    assert "served by this machine's kiosk" in done.stdout
    assert done.stdout.strip().endswith("all checks passed")


@pytest.fixture
def gateway(real_redis: redis.Redis) -> Iterator[Gateway]:
    gw = Gateway(real_redis, block_ms=200)
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(gw.serve("127.0.0.1", 0, ready=lambda port: ready.set())),
        daemon=True,
    )
    thread.start()
    assert ready.wait(WAIT_S)
    yield gw
    gw.request_stop()
    thread.join(WAIT_S)


def test_an_agent_checks_its_backend_accepts_its_token(gateway, real_redis, tmp_path):
    """On a vending machine (BACKEND_URL set): the backend accepting the machine's token
    passes; a revoked token and an unreachable backend are problems saying which."""
    token = Fleet(real_redis).add("vm-7", "cli:test")
    settings = Settings(
        machine_id="vm-7",
        backend_url=f"ws://127.0.0.1:{gateway.port}/agent",
        machine_token=token,
        var_dir=tmp_path,
    )
    assert doctor.check_backend(settings).ok
    Fleet(real_redis).revoke("vm-7", "cli:test")
    refused = doctor.check_backend(settings)
    assert not refused.ok and "refuses this machine's token" in refused.detail
    (closed,) = free_ports(1)
    gone = doctor.check_backend(settings.replace(backend_url=f"ws://127.0.0.1:{closed}/agent"))
    assert not gone.ok and "unreachable" in gone.detail
    assert [c.name for c in doctor.run_checks(settings)][0] == "backend"  # no Redis, no key


# --- the dispenser ---------------------------------------------------------------------------------


def test_a_simulated_dispenser_with_production_payments_is_a_problem(tmp_path):
    """Real money with a dispenser that drops nothing: customers would pay for air."""
    settings = Settings(midtrans_is_production=True, var_dir=tmp_path)
    found = doctor.check_dispenser(settings)
    assert not found.ok and "MIDTRANS_IS_PRODUCTION" in found.detail
    assert doctor.check_dispenser(Settings(var_dir=tmp_path)).ok


def test_a_serial_board_answers_ping_with_its_firmware(tmp_path):
    """No machine running: doctor opens the board's port, PINGs it and shows its firmware;
    a port nothing answers on is a problem."""
    from tests.board_sim import BoardSim

    board = BoardSim(firmware="drinkboard 2.0.1")
    try:
        settings = Settings(dispenser="serial", dispenser_port=board.path, var_dir=tmp_path)
        found = doctor.check_dispenser(settings)
        assert found.ok and "drinkboard 2.0.1" in found.detail, found
    finally:
        board.close()
    missing = Settings(dispenser="serial", dispenser_port="/dev/no-such-board", var_dir=tmp_path)
    assert not doctor.check_dispenser(missing).ok


def test_the_running_machine_s_board_is_read_from_its_record_not_opened_twice(
    real_redis, redis_server, tmp_path
):
    """The machine runs and pinged its board a moment ago: doctor reads that record (two
    readers of one tty would take each other's lines) and never opens the port, which here
    does not even exist."""
    real_redis.hset(
        "vm:{vm-1}:dispenser",
        mapping={
            "driver": "serial",
            "firmware": "drinkboard 2.0.1",
            "alive": "1",
            "checked_at": str(time.time()),
        },
    )
    settings = Settings(
        redis_url=redis_server.url,
        dispenser="serial",
        dispenser_port="/dev/no-such-board",
        var_dir=tmp_path,
    )
    found = doctor.check_dispenser(settings)
    assert found.ok and "in use by the running machine" in found.detail, found
    real_redis.hset("vm:{vm-1}:dispenser", "alive", "0")
    assert not doctor.check_dispenser(settings).ok
