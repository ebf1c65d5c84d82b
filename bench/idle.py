#!/usr/bin/env python3
"""What an idle machine costs: Redis commands per second and CPU seconds per idle minute.

Starts the real machine (`python main.py up`), waits until it is idle (IDLE, no page
connected, every worker beating), lets the start-up traffic pass, then watches it for
`--seconds`:

- Redis commands per second in all, from Redis's own command statistics (INFO commandstats,
  reset at the start of the window; this script's own INFO / CLIENT / MONITOR calls are left
  out), and per process, from MONITOR, each command attributed to its connection's name in
  CLIENT LIST (every process names its connection after itself).
- CPU seconds per idle minute of each process, from /proc/PID/stat (user + system).

The baseline, printed beside it, is the original design: every worker reading the state
twice a second (`--baseline-workers` workers, 2 reads/s each).

    .venv/bin/python bench/idle.py              # 60 s window
    .venv/bin/python bench/idle.py --seconds 120
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import PROCESSES, Launched
from constants.services import WATCHED, WORKERS
from constants.states import State
from constants.tunables import HEARTBEAT_EVERY_S

#: Commands of this script's own connections, left out of the machine's count.
OWN_COMMANDS = {
    "info",
    "client|list",
    "client|setname",
    "monitor",
    "config|resetstat",
    "hello",
    "ping",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(
        v["calls"] for k, v in stats.items() if k.removeprefix("cmdstat_") not in OWN_COMMANDS
    )


class Monitor(threading.Thread):
    """Counts the commands of each client address, as MONITOR reports them."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        # No socket timeout: an idle machine may send nothing for longer than the default 5 s.
        self.client = redis.Redis.from_url(
            url, decode_responses=True, client_name="bench-idle", socket_timeout=None
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self.commands: collections.Counter[tuple[str, str]] = collections.Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with self.client.monitor() as monitor:
                for line in monitor.listen():
                    if self.stop.is_set():
                        return
                    addr = f"{line.get('client_address', '')}:{line.get('client_port', '')}"
                    command = (line.get("command") or "").split(" ", 1)[0].strip('"').upper()
                    self.counts[addr] += 1
                    self.commands[(addr, command)] += 1
        except redis.ConnectionError:
            if not self.stop.is_set():  # the machine's Redis stops with the machine
                raise


def wait_idle(machine: Launched, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    services = list(WATCHED)
    while time.monotonic() < deadline:
        beats = machine.broker.heartbeats(services)
        if machine.broker.snapshot().state == State.IDLE and all(beats.values()):
            return
        time.sleep(0.2)
    raise RuntimeError("the machine did not become idle")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the window")
    parser.add_argument(
        "--warmup",
        type=float,
        default=HEARTBEAT_EVERY_S + 2,
        help="seconds after the machine is idle before the window opens",
    )
    parser.add_argument("--baseline-workers", type=int, default=len(WORKERS) + 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        machine = Launched(Path(folder))
        try:
            wait_idle(machine)
            time.sleep(args.warmup)  # a measuring window, not a synchronisation
            url = (machine.var / "redis.url").read_text().strip()
            pids = {name: machine.pid(name) for name in PROCESSES}
            cpu_before = {n: cpu_seconds(p) for n, p in pids.items() if p}
            names = {f"{c['addr']}": c.get("name") or "?" for c in machine.redis.client_list()}
            monitor = Monitor(url)
            machine.redis.config_resetstat()
            monitor.start()
            start = time.monotonic()
            time.sleep(args.seconds)  # the window itself
            elapsed = time.monotonic() - start
            calls = machine_calls(machine.redis)
            names.update({c["addr"]: c.get("name") or "?" for c in machine.redis.client_list()})
            cpu_after = {n: cpu_seconds(p) for n, p in pids.items() if p}
            monitor.stop.set()
        finally:
            machine.stop()

    per_process: collections.Counter[str] = collections.Counter()
    for addr, count in monitor.counts.items():
        name = names.get(addr, "?")
        if name != "bench-idle":
            per_process[name] += count
    baseline = 2.0 * args.baseline_workers
    total = calls / elapsed
    print(f"idle machine, {elapsed:.0f} s window (after {args.warmup:.0f} s of warm-up)\n")
    print(
        f"redis commands/s, all processes   ours {total:6.2f}   original design "
        f"{baseline:6.2f} ({args.baseline_workers} workers x 2 state reads/s)   "
        f"ratio {total / baseline:5.3f}x"
    )
    print("\nper process                 commands/s   cpu s per idle minute")
    for name in PROCESSES:
        rate = per_process.get(name, 0) / elapsed
        cpu = cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0)
        print(f"  {name:<24} {rate:10.3f}   {cpu * 60 / elapsed:10.3f}")
    unnamed = sum(v for k, v in per_process.items() if k not in PROCESSES)
    if unnamed:
        print(f"  {'(unnamed connections)':<24} {unnamed / elapsed:10.3f}")
    print("\ncommands seen (MONITOR):")
    by_command: collections.Counter[tuple[str, str]] = collections.Counter()
    for (addr, command), count in monitor.commands.items():
        name = names.get(addr, "?")
        if name != "bench-idle":
            by_command[(name, command)] += count
    for (name, command), count in sorted(by_command.items()):
        print(f"  {name:<24} {command:<14} {count:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
