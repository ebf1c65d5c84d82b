"""An idle machine stops on SIGTERM at once: the sleeping workers are woken by the signal,
not waited out (each sleeps on Redis for up to HEARTBEAT_EVERY_S when idle)."""

from __future__ import annotations

import pytest

from constants.services import WORKERS, Service
from constants.tunables import HEARTBEAT_EVERY_S
from tests.machine_helpers import eventually, launch

pytestmark = pytest.mark.integration


def test_sigterm_stops_an_idle_machine_without_waiting_out_its_sleeping_workers(tmp_path):
    machine = launch(tmp_path)
    services = [*WORKERS, Service.NOTIFICATION]
    try:
        # Every worker has beaten once and gone to sleep on Redis.
        eventually(
            lambda: all(machine.broker.heartbeats(services).values()),
            15,
            what="every worker's first heartbeat",
        )
    finally:
        # The supervisor kills a child that has not stopped 10 s after SIGTERM; a worker
        # sleeping out its HEARTBEAT_EVERY_S would be killed, and the stop would take longer.
        assert HEARTBEAT_EVERY_S > 10
        code = machine.stop()
    supervisor_log = machine.out_path.read_text(errors="replace")
    assert code == 0, supervisor_log[-3000:]
    assert "killing" not in supervisor_log, supervisor_log[-3000:]
    for service in services:
        worker_log = (machine.var / "logs" / f"{service.lower()}.log").read_text()
        assert "worker stopped" in worker_log, worker_log[-2000:]
