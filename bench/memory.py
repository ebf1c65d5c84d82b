#!/usr/bin/env python3
"""What the machine costs in memory.

    python bench/memory.py [--orders 2000]

- Redis per order: used_memory growth per completed order (order hash, events and sales
  entries), against a baseline that keeps the same order as one JSON string (ratio).
- Processes: resident memory of every process `main.py up` starts, against a bare Python
  interpreter started the same way (ratio).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench.harness import PROCESSES, Launched
from constants.states import Sale, State
from cores.broker import Broker
from cores.config import Settings
from cores.machine import Effects, Transition
from cores.redis_process import RedisProcess
from services.runtime import load_menu

QR = "00020101021226610014COM.GO-JEK.WWW0118936009140000000001" + "0" * 140 + "6304ABCD"


def one_order(broker: Broker) -> dict:
    broker.show_menu()
    order_id = broker.place_order("cola")
    order = broker.order(order_id)
    created = {
        **order.values(),
        "qr_string": QR,
        "expires_at": 1_800_000_000,
        "item_details": [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
        "transaction_details": {"order_id": order_id, "gross_amount": 7000},
        "qr_image_url": None,
        "payment_type": "qris",
        "closing": False,
    }
    steps = [
        (State.ORDER_CREATED, State.MENU_CLICKED, created, Sale.CHARGED),
        (State.PAYMENT_SUCCESS, State.ORDER_CREATED, order.values(), Sale.PAID),
        (State.DISPENSING, State.PAYMENT_SUCCESS, order.values(), None),
        (State.DISPENSED, State.DISPENSING, order.values(), Sale.DISPENSED),
    ]
    for to, frm, values, sale in steps:
        broker.transition(
            Transition(
                to,
                (frm,),
                order_id,
                values,
                Effects(
                    sale=None if sale is None else {"kind": sale, "amount": 7000},
                    order_fields={
                        "transaction_id": "0d8178e1-aaaa-bbbb-cccc-1234",
                        "frame_values": created,
                    },
                ),
            )
        )
    broker.transition(Transition(State.IDLE, (State.DISPENSED,), order_id, {}, new_order_id=None))
    return {"order": broker.redis.hgetall(broker.order_key(order_id)), "frames": 7}


def redis_per_order(n: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = RedisProcess(Path(folder), appendonly=False).start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            broker = Broker(client, "mem")
            broker.ensure_ready(load_menu(Settings().menu_file))
            # Never runs dry: the set-up fills the count past the slots' capacity directly.
            client.hset(broker.stock_key, mapping=dict.fromkeys(broker.stock(), 10**9))
            before = client.info("memory")["used_memory"]
            sample = None
            for _ in range(n):
                sample = one_order(broker)
            ours = (client.info("memory")["used_memory"] - before) / n
            client.flushall()
            before = client.info("memory")["used_memory"]
            for i in range(n):
                client.set(f"base:{i}", json.dumps(sample))
            base = (client.info("memory")["used_memory"] - before) / n
        finally:
            client.close()
            server.stop()
    print(
        f"redis per order        ours {ours:8.0f} B   baseline (one JSON string) "
        f"{base:8.0f} B   ratio {ours / base:5.2f}x   ({n} orders)"
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_rss() -> None:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import time

        time.sleep(0.5)
        base = rss_kib(bare.pid)
        with tempfile.TemporaryDirectory() as folder:
            machine = Launched(Path(folder))
            try:
                total = 0
                for name in PROCESSES:
                    kib = rss_kib(machine.pid(name))
                    total += kib
                    print(
                        f"rss {name:<18} {kib / 1024:7.1f} MiB   ratio to bare python "
                        f"{kib / base:5.2f}x"
                    )
                redis_kib = rss_kib(machine.redis_pid())
                print(f"rss {'redis-server':<18} {redis_kib / 1024:7.1f} MiB")
                print(
                    f"rss {'all processes':<18} {(total + redis_kib) / 1024:7.1f} MiB   "
                    f"(bare python {base / 1024:.1f} MiB)"
                )
            finally:
                machine.stop()
    finally:
        bare.kill()
        bare.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description="memory figures")
    parser.add_argument("--orders", type=int, default=2000)
    args = parser.parse_args()
    redis_per_order(args.orders)
    process_rss()
    return 0


if __name__ == "__main__":
    sys.exit(main())
