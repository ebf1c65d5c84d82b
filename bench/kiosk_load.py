#!/usr/bin/env python3
"""The kiosk websocket server under many pages: snapshot time, fan-out, memory, sustained rate.

    python bench/kiosk_load.py [--quick] [--pages 50,200,500]

It starts a private redis-server and, each in a process of its own, the real server
(`websocket_server.py`) and a baseline: the least a relay of the same events stream can do
(HGET the state's frame on connect; XREAD BLOCK the stream and websockets' broadcast(); no
gate, no broker, no flood or origin checks). Both serve the same machine in the same run, and
each figure is printed with the baseline's and their ratio. The pages are raw asyncio
websocket clients in this process that only count frames as they complete (no JSON), so the
figures are the servers' rather than the clients'.

- snapshot: TCP connect until the first frame (the current screen); pages connect 50 at once.
- fan-out: a kiosk command written (Broker.show_menu / request_cancel, a real transition)
  until every page has its frame; one command at a time.
- RSS: the server's resident memory with the pages connected (and with none, at start).
  A wave of pages connects and leaves first, as a warm-up, before anything is measured.
- sustained rate: events entries (as a transition appends them) written at a rising rate to
  50 pages; the lag of an entry is from its write until the last page has its frame. The
  sustained rate is the highest whose p99 lag stays under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from constants import keys
from cores.broker import Broker
from cores.config import Settings
from cores.redis_process import RedisProcess, free_ports
from services.runtime import load_menu

ROOT = Path(__file__).resolve().parent.parent

MACHINE = "bench-load"
WAVE = 50
LAG_LIMIT_MS = 50.0
RAMP_PAGES = 50
RAMP_RATES = (100, 200, 400, 800, 1600, 3200, 6400, 12800)
WAIT_S = 30.0


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 2 else max(values)


def line(name: str, ours: list[float], base: list[float], unit: str = "ms") -> None:
    o50, b50 = statistics.median(ours), statistics.median(base)
    print(
        f"{name:<24} ours p50 {o50:8.2f} {unit}  p99 {pct(ours, 99):8.2f}   "
        f"baseline p50 {b50:8.2f} {unit}  p99 {pct(base, 99):8.2f}   ratio {o50 / b50:5.2f}x",
        flush=True,
    )


# --- pages -----------------------------------------------------------------------------------


class Fleet:
    """The pages of one server, and a way to wait until each has a number of frames."""

    def __init__(self) -> None:
        self.pages: list[Page] = []
        self._target = 0
        self._remaining = 0
        self._done: asyncio.Future[None] | None = None

    def counted(self, page: Page) -> None:
        if self._done is not None and page.count == self._target:
            self._remaining -= 1
            if self._remaining == 0 and not self._done.done():
                self._done.set_result(None)

    async def wait_count(self, count: int, timeout_s: float = WAIT_S) -> None:
        self._target = count
        self._remaining = sum(1 for page in self.pages if page.count < count)
        if self._remaining == 0:
            return
        self._done = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._done, timeout_s)
        finally:
            self._done = None

    def close(self) -> None:
        for page in self.pages:
            if page.transport is not None:
                page.transport.close()
        self.pages.clear()


class Page(asyncio.Protocol):
    """A websocket page that does the handshake, then counts and times the frames it gets."""

    def __init__(self, fleet: Fleet, port: int) -> None:
        self.fleet = fleet
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.count = 0
        self.times: list[float] = []
        self.first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(RuntimeError(bytes(buf[:200]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self.upgraded = True
        while len(buf) >= 2:
            size, head = buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, head = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, head = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < head + size:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[head : head + size])
            del buf[: head + size]
            if opcode == 0x9:  # ping: pong, or the server's keepalive closes the page
                self._send(0xA, payload)
            elif opcode in (0x1, 0x2):
                self.count += 1
                self.times.append(now)
                if not self.first.done():
                    self.first.set_result(now)
                self.fleet.counted(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"page closed: {exc}"))

    def _fail(self, exc: Exception) -> None:
        if not self.first.done():
            self.first.set_exception(exc)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None and len(payload) < 126
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


async def connect_pages(fleet: Fleet, port: int, n: int) -> list[float]:
    """Connect `n` pages, WAVE at once; returns each one's connect-to-first-frame time (ms)."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> float:
        start = time.perf_counter()
        _, page = await loop.create_connection(lambda: Page(fleet, port), "127.0.0.1", port)
        fleet.pages.append(page)
        return (await asyncio.wait_for(page.first, WAIT_S) - start) * 1000

    for done in range(0, n, WAVE):
        times += await asyncio.gather(*(one() for _ in range(min(WAVE, n - done))))
    return times


# --- servers ---------------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, folder: Path):
        self.name = name
        self.port = port
        self.log = (folder / f"{name}.log").open("wb")
        self.process = subprocess.Popen(
            argv, env=env, cwd=folder, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + WAIT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {(folder / f'{name}.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen") from None
                time.sleep(0.05)

    def rss_mib(self) -> float:
        for row in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def baseline_server(redis_url: str, port: int) -> None:
    """The least a relay of the machine's events stream does: no gate, no broker."""
    import redis.asyncio as aioredis
    from websockets.asyncio.server import broadcast, serve

    events_key, state_key = keys.key(keys.EVENTS, MACHINE), keys.key(keys.STATE, MACHINE)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    pages: set = set()

    async def handler(ws) -> None:
        pages.add(ws)
        try:
            await ws.send(await client.hget(state_key, "frame"))
            async for _ in ws:
                pass
        finally:
            pages.discard(ws)

    async with serve(handler, "127.0.0.1", port):
        last = await client.xrevrange(events_key, count=1)
        last_id = last[0][0] if last else "0-0"
        while True:
            answer = await client.xread({events_key: last_id}, count=100, block=1000)
            for _, entries in answer or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    broadcast(pages, fields["frame"])


# --- figures ---------------------------------------------------------------------------------


async def fan_out(fleet: Fleet, broker: Broker, commands: int) -> list[float]:
    """Kiosk commands one at a time; each: written until every page has its frame (ms)."""
    base = min(page.count for page in fleet.pages)
    assert base == max(page.count for page in fleet.pages), "pages out of step"
    latencies = []
    for i in range(commands):
        on_menu = broker.snapshot().state == "SHOW_MENU"
        command = broker.request_cancel if on_menu else broker.show_menu
        started: list[float] = []

        def write(command: Callable[[], None] = command, started: list[float] = started) -> None:
            started.append(time.perf_counter())
            command()

        await asyncio.to_thread(write)
        await fleet.wait_count(base + i + 1)
        last = max(page.times[base + i] for page in fleet.pages)
        latencies.append((last - started[0]) * 1000)
    return latencies


async def ramp(fleet: Fleet, client: redis.Redis, broker: Broker, step_s: float) -> list[tuple]:
    """Entries at rising rates; per step (rate, achieved, lag p50, lag p99), until p99 > limit."""
    frame = json.dumps(broker.snapshot().frame, separators=(",", ":"))
    steps = []
    version = 10_000_000
    for rate in RAMP_RATES:
        base = fleet.pages[0].count
        n = int(rate * step_s)
        written: list[float] = []

        def writer(
            rate: int = rate, n: int = n, written: list[float] = written, first: int = version
        ) -> None:
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # the writer's pace
                written.append(time.perf_counter())
                client.xadd(
                    broker.events_key,
                    {"state": "SHOW_MENU", "order_id": "", "version": first + i, "frame": frame},
                    maxlen=10_000,
                    approximate=True,
                )

        version += n
        await asyncio.to_thread(writer)
        try:
            await fleet.wait_count(base + n, timeout_s=max(10.0, 4 * step_s))
        except TimeoutError:
            steps.append((rate, n / (written[-1] - written[0]), float("inf"), float("inf")))
            break
        lags = [
            (max(page.times[base + k] for page in fleet.pages) - written[k]) * 1000
            for k in range(n)
        ]
        achieved = (n - 1) / (written[-1] - written[0])
        steps.append((rate, achieved, statistics.median(lags), pct(lags, 99)))
        if pct(lags, 99) > LAG_LIMIT_MS or achieved < rate * 0.8:
            break
    return steps


def sustained(steps: list[tuple]) -> str:
    ok = [s for s in steps if s[3] <= LAG_LIMIT_MS and s[1] >= s[0] * 0.8]
    if not ok:
        return f"< {steps[0][0]}"
    if ok[-1] is steps[-1]:
        return f">= {ok[-1][1]:.0f} (the writer's limit)"
    return f"{ok[-1][1]:.0f}"


async def run(args: argparse.Namespace, redis_url: str, folder: Path) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    broker = Broker(client, MACHINE)
    broker.ensure_ready(load_menu(Settings().menu_file))
    ours_port, base_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WS_"))}
    env.update(
        REDIS_URL=redis_url,
        VENDING_MACHINE_ID=MACHINE,
        LOG_LEVEL="WARNING",
        VAR_DIR=str(folder / "var"),
        PYTHONPATH=str(ROOT),
    )
    servers = {
        "ours": ServerProcess(
            "ours",
            [
                sys.executable,
                str(ROOT / "websocket_server.py"),
                "--port",
                str(ours_port),
                "--no-log-file",
            ],
            env,
            ours_port,
            folder,
        ),
        "baseline": ServerProcess(
            "baseline",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--baseline-server",
                redis_url,
                "--port",
                str(base_port),
            ],
            env,
            base_port,
            folder,
        ),
    }
    try:
        idle = {name: server.rss_mib() for name, server in servers.items()}
        for server in servers.values():  # warm up: the first connections pay for imports
            fleet = Fleet()
            await connect_pages(fleet, server.port, WAVE)
            fleet.close()
        print(
            f"server RSS with no page      ours {idle['ours']:6.1f} MiB   "
            f"baseline {idle['baseline']:6.1f} MiB   ratio "
            f"{idle['ours'] / idle['baseline']:5.2f}x\n",
            flush=True,
        )
        for n in args.pages:
            snap: dict[str, list[float]] = {}
            fan: dict[str, list[float]] = {}
            rss: dict[str, float] = {}
            for name, server in servers.items():
                fleet = Fleet()
                try:
                    snap[name] = await connect_pages(fleet, server.port, n)
                    fan[name] = await fan_out(fleet, broker, args.commands)
                    rss[name] = server.rss_mib()
                finally:
                    fleet.close()
            print(f"--- {n} pages ({args.commands} commands fanned out)")
            line("snapshot (connect->1st)", snap["ours"], snap["baseline"])
            line("fan-out (write->all)", fan["ours"], fan["baseline"])
            print(
                f"{'server RSS':<24} ours {rss['ours']:8.1f} MiB             "
                f"baseline {rss['baseline']:8.1f} MiB             "
                f"ratio {rss['ours'] / rss['baseline']:5.2f}x\n",
                flush=True,
            )
        print(
            f"--- sustained rate: {RAMP_PAGES} pages, {args.step_s:g} s per step, "
            f"lag = entry written -> last page has it"
        )
        results = {}
        for name, server in servers.items():
            fleet = Fleet()
            try:
                await connect_pages(fleet, server.port, RAMP_PAGES)
                results[name] = await ramp(fleet, client, broker, args.step_s)
            finally:
                fleet.close()
            for rate, achieved, p50, p99 in results[name]:
                print(
                    f"{name:<9} target {rate:6d}/s  written {achieved:7.0f}/s  "
                    f"lag p50 {p50:8.2f} ms  p99 {p99:8.2f} ms",
                    flush=True,
                )
        print(
            f"{'frames/s under 50 ms lag':<24} ours {sustained(results['ours'])}   "
            f"baseline {sustained(results['baseline'])}   "
            f"({RAMP_PAGES} pages: x{RAMP_PAGES} page-frames/s)"
        )
    finally:
        for server in servers.values():
            server.stop()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="the kiosk server under many pages")
    parser.add_argument("--quick", action="store_true", help="a short run: fewer commands")
    parser.add_argument(
        "--pages", default="50,200,500", help="page counts, comma separated (default 50,200,500)"
    )
    parser.add_argument("--baseline-server", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        asyncio.run(baseline_server(args.baseline_server, args.port))
        return 0
    args.pages = [int(n) for n in args.pages.split(",")]
    args.commands = 30 if args.quick else 200
    args.step_s = 0.5 if args.quick else 2.0
    with tempfile.TemporaryDirectory() as folder:
        redis_server = RedisProcess(Path(folder), appendonly=True).start()
        try:
            print(
                f"redis {redis_server.binary}, AOF on; python {sys.version.split()[0]}, "
                f"{os.cpu_count()} CPUs; pages: raw asyncio clients in this process\n"
            )
            asyncio.run(run(args, redis_server.url, Path(folder)))
        finally:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
