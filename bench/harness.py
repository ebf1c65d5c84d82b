"""Run the real machine (`python main.py up`) in a private folder on free ports, and talk to
it as a kiosk page (websocket) and as a customer's e-wallet (the sandbox's simulator API).

Used by the machine-level tests and by bench/chaos.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests
import websocket

from cores.broker import Broker
from cores.process import die_with_parent
from cores.redis_process import free_ports

ROOT = Path(__file__).resolve().parent.parent


#: The processes `main.py up` starts, by the names of their pid files (VAR_DIR/pids).
PROCESSES = (
    "sandbox",
    "websocket",
    "order",
    "order_created",
    "dispense",
    "screen",
    "notification",
    "operator",
)


class Simulator:
    """The customer's e-wallet and the gateway's ledger: the sandbox's simulator API at
    `sandbox`, through the session `http` (set by the class that mixes this in)."""

    sandbox: str
    http: requests.Session

    def pay(self, order_id: str) -> int:
        return self.http.post(f"{self.sandbox}/simulator/pay/{order_id}", timeout=10).status_code

    def deny(self, order_id: str) -> int:
        return self.http.post(f"{self.sandbox}/simulator/deny/{order_id}", timeout=10).status_code

    def faults(self, **faults: float) -> None:
        self.http.post(
            f"{self.sandbox}/simulator/faults", json=faults, timeout=10
        ).raise_for_status()

    def ledger(self) -> list[dict]:
        return self.http.get(f"{self.sandbox}/simulator/transactions", timeout=10).json()

    def ledger_of(self, order_id: str) -> list[dict]:
        return [t for t in self.ledger() if t["order_id"] == order_id]


class Launched(Simulator):
    """`python main.py up` with VAR_DIR under `folder`; everything else from `env`."""

    def __init__(self, folder: Path, **env: str) -> None:
        self.folder = Path(folder)
        self.var = self.folder / "var"
        self.ws_port, self.sandbox_port, self.notify_port, self.operator_port = free_ports(4)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MIDTRANS_", "REDIS_", "SANDBOX_"))
        }
        self.env.update(
            {
                "VAR_DIR": str(self.var),
                "WS_PORT": str(self.ws_port),
                "SANDBOX_PORT": str(self.sandbox_port),
                "NOTIFICATION_PORT": str(self.notify_port),
                "OPERATOR_PORT": str(self.operator_port),
                "PAYMENT_DEADLINE_S": "6",
                "RESULT_SCREEN_S": "1",
                "DISPENSE_S": "0.3",
                "MENU_IDLE_S": "60",
                **env,
            }
        )
        self.out_path = self.folder / "up.out"
        self.out = self.out_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "up"],
            cwd=self.folder,
            env=self.env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # a killed soak or test leaves no machine behind
        )
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}/ws"
        self.console = f"http://127.0.0.1:{self.operator_port}"
        self.http = requests.Session()
        self.redis: redis.Redis | None = None
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # leave no machine, no open file behind
            raise
        url = (self.var / "redis.url").read_text().strip()
        self.redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10, retry_on_timeout=True
        )
        self.broker = Broker(self.redis, self.env.get("VENDING_MACHINE_ID", "vm-1"))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"main.py up exited: {self.log()}")
            try:
                ok = self.http.get(f"http://127.0.0.1:{self.ws_port}/healthz", timeout=1).ok
                ok = ok and self.http.get(f"{self.sandbox}/simulator/transactions", timeout=1).ok
                ok = ok and self.http.get(f"{self.console}/login", timeout=1).ok
                if ok and all(
                    self.pid(n)
                    for n in ("order", "order_created", "dispense", "screen", "notification")
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"machine not ready: {self.log()}")

    def log(self) -> str:
        self.out.flush()
        text = self.out_path.read_text(errors="replace")[-3000:]
        logs = self.var / "logs"
        for f in sorted(logs.glob("*.log")) if logs.exists() else []:
            text += f"\n--- {f.name}\n" + f.read_text(errors="replace")[-1500:]
        return text

    def main(self, *args: str) -> subprocess.CompletedProcess:
        """Run `main.py ARGS` with the machine's environment (operator commands)."""
        return subprocess.run(
            [sys.executable, str(ROOT / "main.py"), *args],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=30,
        )

    # --- processes --------------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        path = self.var / "pids" / f"{name}.pid"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def redis_pid(self) -> int | None:
        try:
            out = subprocess.run(
                ["pgrep", "-f", f"redis-server.*:{self.redis_port()}"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return None
        return int(out[0]) if out else None

    def redis_port(self) -> int:
        return int((self.var / "redis.url").read_text().strip().rsplit(":", 1)[1].split("/")[0])

    def kill9(self, name: str) -> int | None:
        pid = self.redis_pid() if name == "redis" else self.pid(name)
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pid(name) == old_pid:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was not restarted")
            time.sleep(0.05)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.redis is not None:
            self.redis.close()
        self.http.close()
        self.out.close()
        return code


class Page:
    """A scripted kiosk page: sends taps, reads frames, reconnects when the server is gone."""

    def __init__(self, url: str, connect: bool = True) -> None:
        self.url = url
        self.ws: websocket.WebSocket | None = None
        self.frames: list[dict] = []
        self.reconnects = 0
        if connect:
            self.connect()

    def connect(self, timeout_s: float = 15.0) -> dict:
        """(Re)connect; returns the snapshot frame the server sends first."""
        self.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.ws = websocket.create_connection(self.url, timeout=5)
                return self.recv(5)
            except (OSError, websocket.WebSocketException):
                self.ws = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def send(self, event: str, **values: object) -> None:
        self.send_raw(json.dumps({"event": event, "values": values}))

    def send_raw(self, text: str) -> None:
        for _ in range(2):
            try:
                if self.ws is None:
                    self.reconnect()
                self.ws.send(text)
                return
            except (OSError, websocket.WebSocketException):
                self.reconnect()

    def reconnect(self) -> None:
        self.reconnects += 1
        self.connect()

    def recv(self, timeout_s: float = 10.0) -> dict:
        if self.ws is None:
            raise websocket.WebSocketConnectionClosedException("not connected")
        self.ws.settimeout(max(0.05, timeout_s))
        frame = json.loads(self.ws.recv())
        self.frames.append(frame)
        return frame

    def until(self, *events: str, timeout_s: float = 20.0, follow: bool = False) -> dict:
        """The next frame whose event is one of `events`. With `follow`, a dropped connection
        is reconnected (its snapshot counts as a frame)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no {events} frame; saw {[f['event'] for f in self.frames[-12:]]}"
                )
            try:
                frame = self.recv(left)
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException, ValueError):
                if not follow:
                    raise
                self.reconnects += 1
                try:
                    frame = self.connect(max(1.0, deadline - time.monotonic()))
                except (OSError, websocket.WebSocketException):
                    continue
            if frame["event"] in events:
                return frame

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.ws.close()
            self.ws = None
