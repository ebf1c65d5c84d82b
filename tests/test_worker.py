"""The lifecycle every worker shares: wake on Redis at once, survive a failing step, finish
the step in hand on SIGTERM, heartbeat; and the process entry points."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from constants.states import State
from constants.tunables import HEARTBEAT_EVERY_S, HEARTBEAT_TTL_S
from services.worker import Worker
from tests.machine_helpers import (
    ROOT,
    ChildOutput,
    child_env,
    eventually,
    start_worker,
    stop_worker,
)


class Recorder(Worker):
    service = "RECORDER"

    def __init__(self, broker, fail_times: int = 0, step_s: float = 0.0):
        super().__init__(broker)
        self.seen: list[tuple[float, State, list]] = []
        self.fail_times = fail_times
        self.step_s = step_s
        self.finished_steps = 0
        self.thread: threading.Thread | None = None

    def step(self, snap, entries):
        self.seen.append((time.monotonic(), snap.state, entries))
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("boom")
        time.sleep(self.step_s)  # the work of the step in hand, not a wait for anything
        self.finished_steps += 1
        return None


@pytest.fixture
def running(broker):
    """Start a Recorder in a thread (`running(**options)`); stopped after the test."""
    started: list[Recorder] = []

    def start(**options) -> Recorder:
        worker = Recorder(broker, **options)
        worker.thread = start_worker(worker)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        assert worker.thread is not None
        stop_worker(worker, worker.thread)


def test_a_worker_is_woken_by_the_transition_itself_not_by_its_block_timeout(broker, running):
    worker = running()
    eventually(lambda: worker.seen, 5, "the first step")
    broker.show_menu()

    def woken_by_the_entry() -> bool:
        # XREAD returned the new events entry and handed it to the step; a worker that
        # slept or polled would only ever see the state, with no entries.
        return any(
            f.get("state") == "SHOW_MENU"
            for _, state, entries in worker.seen
            for stream, f in entries
            if stream == broker.events_key
        )

    eventually(woken_by_the_entry, 5, "a step handed the SHOW_MENU entry")


def test_a_failing_step_is_logged_with_its_traceback_and_the_worker_carries_on(running, caplog):
    worker = running(fail_times=2)
    eventually(lambda: worker.finished_steps, 10, "a step that finishes")
    assert worker.thread is not None and worker.thread.is_alive()
    failures = [r for r in caplog.records if r.getMessage() == "step failed"]
    assert len(failures) == 2
    assert failures[0].exc_info and "boom" in str(failures[0].exc_info[1])


def test_stop_lets_the_step_in_hand_finish(broker):
    worker = Recorder(broker, step_s=0.5)
    thread = start_worker(worker)
    eventually(lambda: worker.seen, 5, "the first step to begin")
    stop_worker(worker, thread)  # while the first step is still running
    assert worker.finished_steps == 1


def test_heartbeat_is_written_with_a_ttl(broker, running):
    running()
    key = broker.heartbeat_key("RECORDER")
    eventually(lambda: broker.redis.get(key) is not None, 5, "the heartbeat")
    assert 0 < broker.redis.ttl(key) <= HEARTBEAT_TTL_S


def service_env(redis_url: str, tmp_path: Path, **extra: str) -> dict:
    return child_env(REDIS_URL=redis_url, VAR_DIR=str(tmp_path / "var"), **extra)


@pytest.mark.parametrize("service", ["ORDER", "ORDER_CREATED", "DISPENSE", "SCREEN"])
def test_a_worker_process_exits_cleanly_on_sigterm(redis_server, real_redis, tmp_path, service):
    env = service_env(redis_server.url, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--service", service],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    key = f"vm:{{vm-1}}:heartbeat:{service}"

    def heartbeat() -> bool:
        assert proc.poll() is None, proc.communicate()[0]
        return real_redis.get(key) is not None

    eventually(heartbeat, 15, f"the heartbeat of {service}", interval_s=0.05)
    proc.send_signal(signal.SIGTERM)
    # The idle worker sleeps on Redis for up to HEARTBEAT_EVERY_S: it must not wait that out.
    out, _ = proc.communicate(timeout=HEARTBEAT_EVERY_S / 2)
    assert proc.returncode == 0, out
    assert "worker stopped" in out


@pytest.mark.integration
def test_invalid_configuration_stops_a_process_at_start_naming_the_variable(tmp_path):
    env = service_env("redis://127.0.0.1:1/0", tmp_path, PAYMENT_DEADLINE_S="0")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--service", "ORDER"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "PAYMENT_DEADLINE_S" in proc.stderr


def test_health_exits_1_without_workers_and_0_with_fresh_heartbeats(
    redis_server, real_redis, tmp_path
):
    env = service_env(redis_server.url, tmp_path)
    cmd = [sys.executable, str(ROOT / "main.py"), "health"]
    sick = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert sick.returncode == 1 and "ORDER: no heartbeat" in sick.stderr
    for service in ("ORDER", "ORDER_CREATED", "DISPENSE", "SCREEN", "NOTIFICATION"):
        real_redis.set(f"vm:{{vm-1}}:heartbeat:{service}", time.time(), ex=15)
    well = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert well.returncode == 0, well.stderr


def test_a_second_worker_of_the_same_service_waits_for_the_first(
    redis_server, real_redis, tmp_path
):
    env = service_env(redis_server.url, tmp_path)
    cmd = [sys.executable, str(ROOT / "main.py"), "--service", "DISPENSE"]
    first = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    key = "vm:{vm-1}:heartbeat:DISPENSE"
    eventually(
        lambda: real_redis.get(key) is not None, 15, "the first worker's heartbeat", interval_s=0.05
    )
    second = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert second.stdout is not None
    output = ChildOutput(second.stdout)
    try:
        output.wait_for("another instance runs", timeout_s=15)
        assert second.poll() is None  # it waits, rather than exit or start
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
        first.send_signal(signal.SIGTERM)
        first.wait(10)
    assert "worker started" not in output.text(wait_s=5)
