#!/usr/bin/env python3
"""How fast the machine moves: transitions per second and tap-to-screen latency.

    python bench/latency.py [--n 2000]

Each figure is compared, in the same run on the same private redis-server, with a baseline
that does the least Redis work the same job needs, and printed as a ratio:

- transition: Broker.transition (WATCH/MULTI compare-and-set, state + events + sales)
  vs a bare pipeline writing the same keys with no compare-and-set;
- event to page: a transition until its frame arrives at a websocket page through the
  websocket server's relay, vs an XADD until a bare XREAD BLOCK reader gets it;
- worker wake: a transition until a worker's step sees it, vs the same bare XREAD reader.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import websocket

from constants.states import State
from cores.broker import Broker
from cores.config import Settings
from cores.machine import Effects, Transition
from cores.redis_process import RedisProcess
from services.runtime import load_menu
from services.websocket_service import WebsocketServer
from services.worker import Worker


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else values[0]


def line(name: str, ours: list[float], base: list[float], unit: str = "ms") -> None:
    o50, b50 = statistics.median(ours), statistics.median(base)
    print(
        f"{name:<22} ours p50 {o50:8.3f} {unit}  p99 {pct(ours, 99):8.3f}   "
        f"baseline p50 {b50:8.3f} {unit}  p99 {pct(base, 99):8.3f}   ratio {o50 / b50:5.2f}x"
    )


#: One lap of legal moves (cores.machine.TRANSITIONS): (from, to, order before, order after,
#: with a sales entry).
LAP = (
    (State.IDLE, State.SHOW_MENU, None, None, False),
    (State.SHOW_MENU, State.MENU_CLICKED, None, "bench", True),
    (State.MENU_CLICKED, State.PAYMENT_FAILED, "bench", "bench", True),
    (State.PAYMENT_FAILED, State.IDLE, "bench", None, False),
)


def bench_transitions(client: redis.Redis, broker: Broker, n: int) -> None:
    """A lap of moves, half of them with a sales entry, against a bare pipeline of the same
    writes (state hash, events entry, sales entry)."""
    ours, base = [], []
    for i in range(n):
        frm, to, order_id, new_order_id, sale = LAP[i % len(LAP)]
        effects = Effects(sale={"kind": "bench", "amount": 1} if sale else None)
        start = time.perf_counter()
        assert broker.transition(
            Transition(to, (frm,), order_id, {"i": i}, effects, new_order_id=new_order_id)
        )
        ours.append((time.perf_counter() - start) * 1000)
    for i in range(n):
        sale = LAP[i % len(LAP)][4]
        start = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            frame = json.dumps({"event": "IDLE", "values": {"i": i}})
            pipe.hset("base:state", mapping={"state": "IDLE", "frame": frame})
            pipe.xadd("base:events", {"frame": frame}, maxlen=10_000, approximate=True)
            if sale:
                pipe.xadd("base:sales", {"kind": "bench", "amount": 1})
            pipe.execute()
        base.append((time.perf_counter() - start) * 1000)
    line("transition", ours, base)
    print(
        f"{'':<22} ours {1000 / statistics.mean(ours):8.0f} transitions/s   "
        f"baseline {1000 / statistics.mean(base):8.0f} writes/s"
    )


def bare_reader_latency(client: redis.Redis, n: int) -> list[float]:
    """XADD until a bare XREAD BLOCK reader in another thread sees the entry."""
    got: list[float] = []
    ready = threading.Event()
    stream = "base:wake"

    def reader() -> None:
        last = "$"
        ready.set()
        while len(got) < n:
            answer = client.xread({stream: last}, block=1000, count=1)
            for _, items in answer or []:
                for entry_id, fields in items:
                    last = entry_id
                    got.append((time.perf_counter() - float(fields["t"])) * 1000)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    ready.wait()
    time.sleep(0.05)
    for _ in range(n):
        before = len(got)
        client.xadd(stream, {"t": repr(time.perf_counter())})
        while len(got) == before:
            time.sleep(0.0002)
    thread.join(5)
    return got


def to_idle(broker: Broker) -> None:
    """Whatever the state, back to IDLE: a benchmark's reset, not a move of the machine, so
    it writes the state afresh as a new machine's first state."""
    broker.redis.delete(broker.state_key)
    broker.transition(Transition(State.IDLE, (State.IDLE,), None, {}))


class Stamp(Worker):
    service = "BENCH"

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self.seen: dict[int, float] = {}

    def step(self, snap, entries):
        if snap.state == State.SHOW_MENU and isinstance(snap.frame["values"], dict):
            self.seen.setdefault(snap.frame["values"]["i"], time.perf_counter())
        return None


def bench_worker_wake(broker: Broker, base: list[float], n: int) -> None:
    worker = Stamp(broker)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(0.3)
    ours = []
    for i in range(n):
        to_idle(broker)
        time.sleep(0.002)
        start = time.perf_counter()
        broker.transition(Transition(State.SHOW_MENU, (State.IDLE,), None, {"i": i}))
        while i not in worker.seen:
            time.sleep(0.0002)
        ours.append((worker.seen[i] - start) * 1000)
    worker.request_stop()
    thread.join(5)
    line("worker wake", ours, base)


def bench_event_to_page(client: redis.Redis, broker: Broker, base: list[float], n: int) -> None:
    own = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(
            client.connection_pool.connection_kwargs and _url(client),
            decode_responses=True,
            socket_timeout=10,
        )
    )
    server = WebsocketServer(Settings(machine_id=broker.machine_id), own)
    ready = threading.Event()
    ports: list[int] = []

    def serve() -> None:
        asyncio.run(
            server.serve("127.0.0.1", 0, ready=lambda port: (ports.append(port), ready.set()))
        )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    to_idle(broker)
    page = websocket.create_connection(f"ws://127.0.0.1:{ports[0]}/ws", timeout=5)
    page.recv()
    ours = []
    for i in range(n):
        to = State.SHOW_MENU if i % 2 == 0 else State.IDLE
        frm = State.IDLE if i % 2 == 0 else State.SHOW_MENU
        start = time.perf_counter()
        broker.transition(Transition(to, (frm,), None, {"i": i}))
        while True:
            frame = json.loads(page.recv())
            if frame["values"] == {"i": i}:
                break
        ours.append((time.perf_counter() - start) * 1000)
    page.close()
    server.request_stop()
    thread.join(5)
    line("event to page", ours, base)


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description="latency and throughput figures")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = RedisProcess(Path(folder), appendonly=True).start()
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=10)
        try:
            broker = Broker(client, "bench")
            broker.ensure_ready(load_menu(Settings().menu_file))
            print(f"redis {server.binary}, AOF on, n={args.n}\n")
            bench_transitions(client, broker, args.n)
            base = bare_reader_latency(client, min(args.n, 1000))
            bench_worker_wake(broker, base, min(args.n, 1000))
            bench_event_to_page(client, broker, base, min(args.n, 1000))
        finally:
            client.close()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
