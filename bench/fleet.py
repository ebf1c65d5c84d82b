#!/usr/bin/env python3
"""Fleet mode under load: N simulated machines buying at once from one backend.

    python bench/fleet.py --machines 100 --workers 1 --seconds 60

Starts `main.py backend --workers K` (a private redis-server, the local sandbox), registers N
machines, and runs N simulated machines in this one process: each is an agent connection to
the gateway (the real wire, cores/agent_protocol.py, with its token) that plays a scripted
kiosk page (SHOW_MENU, ORDER, wait for the QR) and the simulated dispenser (a `vend` is
answered `vended` after DISPENSE_S); the customer pays through the sandbox's simulator API.
Every machine buys one drink after another until the time is up.

Prints purchases per second; p50 / p99 of tap -> menu (SHOW_MENU sent until its frame),
pick -> QR (ORDER sent until ORDER_CREATED, the charge included), paid -> success (the
simulator's pay answered until PAYMENT_SUCCESS: the notification, the late-payment desk, the
status call); Redis commands per purchase (INFO total_commands_processed); and the CPU share
of every process (one core = 100 %). The baseline, in the same run on the same backend, is one
machine buying alone; each step's p50 is also given as a ratio to it.

`--profile DIR` also samples every Python process of the backend (and this one) with py-spy
(requirements-dev.txt) while the fleet buys, after a warm-up: DIR/<process>.txt holds its
collapsed stacks (py-spy's raw format: flamegraph.pl or speedscope read it) and
DIR/summary.txt each process's functions that take the most samples, by own time (the
function on top of the stack) and by total time (anywhere on it). Redis's INFO commandstats,
taken before and after the load, gives the commands per purchase by command.

    python bench/fleet.py --machines 1000 --cluster --seconds 60 [--workers 2]

`--cluster` runs the same load twice in one invocation: on one Redis, then on a Redis Cluster
of 3 masters + 3 replicas (bench/fleet_harness.py `Backend(cluster=True)`: every money-moving
step also waits for a replica, cores/broker.py "Durability"), and prints the two side by
side: purchases/s, p50 / p99 of each step, Redis commands per purchase (INFO commandstats
summed over the masters: a replica replays its master's writes, counted once) and the CPU
shares (the six nodes summed as `redis (all nodes)`). With --profile, each run's samples go
to DIR/one-redis and DIR/cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from websockets.asyncio.client import connect

from bench.fleet_harness import Backend
from cores import agent_protocol as wire
from cores.agent_protocol import Kind, Message

DRINKS = ("cola", "tea", "water", "orange")
STEPS = ("tap -> menu", "pick -> QR", "paid -> success")


@dataclass
class Figures:
    purchases: int = 0
    failures: int = 0
    steps: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})


class Payer:
    """Pays orders through the sandbox's simulator API from a few threads."""

    def __init__(self, sandbox: str) -> None:
        self.sandbox = sandbox
        self.local = threading.local()

    def pay(self, order_id: str) -> int:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        return session.post(f"{self.sandbox}/simulator/pay/{order_id}", timeout=30).status_code


class SimulatedMachine:
    """One machine: an agent connection with a scripted page and a simulated dispenser."""

    def __init__(self, machine_id: str, token: str, url: str, dispense_s: float) -> None:
        self.machine_id = machine_id
        self.token = token
        self.url = url
        self.dispense_s = dispense_s
        self.frames: asyncio.Queue[dict] = asyncio.Queue()
        self.vended: set[str] = set()

    async def run(self, until: float, payer: Payer, figures: Figures, n: int) -> None:
        headers = {wire.MACHINE_HEADER: self.machine_id, "Authorization": f"Bearer {self.token}"}
        # As the agent does: a refused or failed handshake is tried again after a pause with
        # jitter (websockets' connect iterator), so a fleet connecting at once gets through.
        async for ws in connect(self.url, additional_headers=headers, max_size=2**20):
            async with ws:
                await self._serve(ws, until, payer, figures, n)
            return

    async def _serve(self, ws, until: float, payer: Payer, figures: Figures, n: int) -> None:
        await ws.send(wire.encode(Message(Kind.HELLO, version="bench")))
        reader = asyncio.create_task(self._read(ws))
        try:
            await self._next("IDLE", "SHOW_MENU", "DISPENSED", "PAYMENT_FAILED")
            while time.monotonic() < until:
                await self._buy(ws, payer, figures, DRINKS[n % len(DRINKS)])
        finally:
            reader.cancel()

    async def _read(self, ws) -> None:
        async for raw in ws:
            message = wire.parse(raw, wire.FROM_GATEWAY)
            if message.kind is Kind.VEND and message.order_id not in self.vended:
                assert message.order_id is not None
                self.vended.add(message.order_id)
                asyncio.create_task(self._vend(ws, message.order_id))
            elif message.frame is not None:
                await self.frames.put(json.loads(message.frame))

    async def _vend(self, ws, order_id: str) -> None:
        await asyncio.sleep(self.dispense_s)
        result = Message(Kind.VEND_RESULT, order_id=order_id, result="vended")
        await ws.send(wire.encode(result))

    async def _page(self, ws, event: str, **values: object) -> None:
        frame = json.dumps({"event": event, "values": values})
        await ws.send(wire.encode(Message(Kind.PAGE, page=1, frame=frame)))

    async def _next(self, *events: str, timeout_s: float = 60.0) -> dict:
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.frames.get()
                if frame["event"] in events:
                    return frame

    async def _buy(self, ws, payer: Payer, figures: Figures, drink: str) -> None:
        try:
            started = time.perf_counter()
            await self._page(ws, "SHOW_MENU")
            await self._next("SHOW_MENU")
            menu_at = time.perf_counter()
            await self._page(ws, "ORDER", id=drink, total=1)
            created = await self._next("ORDER_CREATED", "PAYMENT_FAILED", "ERROR")
            qr_at = time.perf_counter()
            if created["event"] != "ORDER_CREATED":
                figures.failures += 1
                return
            await asyncio.to_thread(payer.pay, created["values"]["order_id"])
            paid_at = time.perf_counter()
            outcome = await self._next("PAYMENT_SUCCESS", "PAYMENT_FAILED")
            success_at = time.perf_counter()
            if outcome["event"] != "PAYMENT_SUCCESS":
                figures.failures += 1
                return
            done = await self._next("DISPENSED", "DISPENSE_FAILED")
            await self._page(ws, "SHOW_MENU")  # a tap dismisses the result screen
            await self._next("IDLE")
        except TimeoutError:
            figures.failures += 1
            return
        if done["event"] == "DISPENSED":
            figures.purchases += 1
            figures.steps["tap -> menu"].append((menu_at - started) * 1000)
            figures.steps["pick -> QR"].append((qr_at - menu_at) * 1000)
            figures.steps["paid -> success"].append((success_at - paid_at) * 1000)
        else:
            figures.failures += 1


def pct(values: list[float], q: int) -> float:
    if len(values) < 3:
        return max(values) if values else float("nan")
    return statistics.quantiles(values, n=100)[q - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes(backend: Backend) -> dict[str, int]:
    """The backend's processes by name (its pid files), its redis-server(s) (`redis-server`,
    or `redis PORT` for each node of a cluster) and this benchmark."""
    found = {p.stem: int(p.read_text()) for p in (backend.var / "pids").glob("*.pid")}
    found.update(backend.redis_servers())
    found["bench (simulated machines)"] = os.getpid()
    return found


async def drive(machines: list[SimulatedMachine], seconds: float, payer: Payer) -> Figures:
    figures = Figures()
    until = time.monotonic() + seconds
    results = await asyncio.gather(
        *(m.run(until, payer, figures, n) for n, m in enumerate(machines)),
        return_exceptions=True,
    )
    broken = [r for r in results if isinstance(r, BaseException)]
    if broken:
        print(f"  {len(broken)} machines stopped early, first: {broken[0]!r}", file=sys.stderr)
    return figures


def report(name: str, figures: Figures, seconds: float, base: Figures | None) -> None:
    print(f"{name}: {figures.purchases} purchases in {seconds:.0f} s = ", end="")
    print(f"{figures.purchases / seconds:.1f} per second ({figures.failures} not completed)")
    for step in STEPS:
        values = figures.steps[step]
        if not values:
            continue
        ratio = ""
        if base is not None and base.steps[step]:
            ratio = f"   {statistics.median(values) / statistics.median(base.steps[step]):5.2f}x"
            ratio += " the baseline p50"
        print(
            f"  {step:<16} p50 {statistics.median(values):8.1f} ms   "
            f"p99 {pct(values, 99):8.1f} ms{ratio}"
        )


def commands_processed(backend: Backend) -> int:
    """Commands served so far by the Redis, or summed over the cluster's masters (a replica
    replays its master's writes: counted once, where they were served)."""
    return sum(int(info["total_commands_processed"]) for info in backend.masters_info("stats"))


def command_counts(backend: Backend) -> Counter[str]:
    """Calls of each Redis command so far (INFO commandstats; summed over a cluster's
    masters)."""
    counts: Counter[str] = Counter()
    for stats in backend.masters_info("commandstats"):
        for name, v in stats.items():
            counts[name.removeprefix("cmdstat_")] += int(v["calls"])
    return counts


#: Functions listed per process in the profile's summary.
TOP = 15
PY_SPY = Path(sys.executable).parent / "py-spy"


class Profiler:
    """py-spy on every Python process of `pids`, from `warm_s` after `start()` for `seconds`."""

    def __init__(self, folder: Path, pids: dict[str, int], warm_s: float, seconds: float) -> None:
        self.folder = folder
        self.pids = {n: p for n, p in pids.items() if not n.startswith("redis")}
        self.warm_s = warm_s
        self.seconds = seconds
        self.thread = threading.Thread(target=self._record, daemon=True)
        self.samplers: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.thread.start()

    def _record(self) -> None:
        if self.stopping.wait(self.warm_s):
            return
        for name, pid in self.pids.items():
            out = self.folder / f"{safe_name(name)}.txt"
            self.samplers[name] = subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(self.seconds)),
                    "--format",
                    "raw",
                    "--nolineno",
                    "--nonblocking",
                    "--rate",
                    "50",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def finish(self) -> str:
        """Wait for the samplers; the summary (also written to DIR/summary.txt)."""
        self.stopping.set()
        self.thread.join()
        for sampler in self.samplers.values():
            try:
                sampler.wait(self.seconds + 30)
            except subprocess.TimeoutExpired:
                sampler.kill()
        lines = []
        for name in sorted(self.samplers):
            path = self.folder / f"{safe_name(name)}.txt"
            stacks = path.read_text() if path.exists() else ""
            lines.extend(summarize(name, stacks))
        text = "\n".join(lines) + "\n"
        (self.folder / "summary.txt").write_text(text)
        return text


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")


def summarize(name: str, stacks: str, top: int = TOP) -> list[str]:
    """The functions of collapsed stacks ("a;b;c count" lines) with the most samples: own
    (on top of the stack) and total (anywhere on it, once per stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in stacks.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"== {name}: {samples} samples (threads busy, 50 per second each)"]
    if not samples:
        return out
    out.append("  own time:")
    out += [f"    {n * 100 / samples:5.1f} %  {f}" for f, n in own.most_common(top)]
    out.append("  total time (project code):")
    project = [(f, n) for f, n in total.most_common() if is_project(f)][:top]
    out += [f"    {n * 100 / samples:5.1f} %  {f}" for f, n in project]
    return out


def is_project(frame: str) -> bool:
    """A frame of this repository's code (not the standard library or a package)."""
    return any(f"({d}/" in frame or f"({d}\\" in frame for d in ("cores", "services", "bench"))


@dataclass
class Run:
    """One load's figures: on one Redis or on a cluster."""

    name: str
    figures: Figures
    wall_s: float
    commands: int
    by_command: Counter[str]
    cpu: dict[str, float]  # process name -> CPU share in % of one core


def run_load(args: argparse.Namespace, cluster: bool) -> Run:
    """Start a backend (on one Redis, or on a cluster of 3 masters + 3 replicas), register
    the machines, buy with one machine alone (the baseline), then with all of them; print
    the figures and return them."""
    folder = Path(tempfile.mkdtemp(prefix="drink-fleet-bench-"))
    # Result screens wait for the customer's tap (RESULT_SCREEN_S far off), so that no timer
    # races the next purchase.
    env = {
        "PAYMENT_DEADLINE_S": "60",
        "RESULT_SCREEN_S": "60",
        "DISPENSE_S": str(args.dispense_s),
        "LOG_LEVEL": "WARNING",
    }
    name = "Redis Cluster (3 masters + 3 replicas)" if cluster else "one Redis"
    print(f"== {name}: starting the backend ...", flush=True)
    backend = Backend(folder, workers=args.workers, cluster=cluster, **env)
    try:
        print(f"registering {args.machines} machines ...", flush=True)
        tokens = {
            f"bench-{i:04d}": backend.register(f"bench-{i:04d}") for i in range(args.machines)
        }
        for machine_id in tokens:  # enough stock for any run; this benchmark alone writes it
            backend.redis.hset(f"vm:{{{machine_id}}}:stock", mapping=dict.fromkeys(DRINKS, 10**6))
        payer = Payer(backend.sandbox)
        first = next(iter(tokens))
        alone = [SimulatedMachine(first, tokens[first], backend.url, args.dispense_s)]
        base = asyncio.run(drive(alone, args.baseline_seconds, payer))
        report("baseline (one machine alone)", base, args.baseline_seconds, None)
        machines = [SimulatedMachine(m, t, backend.url, args.dispense_s) for m, t in tokens.items()]
        pids = processes(backend)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        commands_before = commands_processed(backend)
        by_command_before = command_counts(backend)
        profiler = None
        if args.profile is not None:
            warm_s = min(10.0, args.seconds / 4)
            where = args.profile / ("cluster" if cluster else "one-redis")
            profiler = Profiler(where, pids, warm_s, min(30.0, args.seconds - 2 * warm_s))
            profiler.start()
        started = time.monotonic()
        figures = asyncio.run(drive(machines, args.seconds, payer))
        wall = time.monotonic() - started
        commands = commands_processed(backend) - commands_before
        by_command = command_counts(backend)
        by_command.subtract(by_command_before)
        cpu = {n: (cpu_seconds(pid) - cpu_before[n]) / wall * 100 for n, pid in pids.items()}
        title = f"{args.machines} machines, {args.workers} worker process(es), {name}"
        report(title, figures, wall, base)
        if figures.purchases:
            print(f"  Redis commands per purchase: {commands / figures.purchases:.0f}, the most:")
            for command, calls in by_command.most_common(10):
                print(f"    {command:<28} {calls / figures.purchases:6.1f}")
        print("  CPU share (one core = 100 %):")
        for process, share in sorted(cpu.items()):
            print(f"    {process:<28} {share:6.1f} %")
        if profiler is not None:
            print(f"  profile ({profiler.folder}):")
            print(profiler.finish())
        return Run(name, figures, wall, commands, by_command, cpu)
    finally:
        with contextlib.suppress(Exception):
            backend.stop()
        shutil.rmtree(folder, ignore_errors=True)


def side_by_side(runs: list[Run], machines: int, workers: int) -> None:
    """The runs' figures in columns: purchases/s, each step's p50 / p99, Redis commands per
    purchase (the most called), CPU shares (a cluster's nodes summed as `redis (all)`)."""
    width = 24

    def row(label: str, cells: list[str]) -> None:
        print(f"  {label:<36}" + "".join(f"{c:>{width}}" for c in cells))

    print(f"\n{machines} machines, {workers} worker process(es), side by side:")
    row("", [r.name.split(" (")[0] for r in runs])
    row("purchases per second", [f"{r.figures.purchases / r.wall_s:.1f}" for r in runs])
    row("not completed", [str(r.figures.failures) for r in runs])
    for step in STEPS:
        cells = []
        for r in runs:
            values = r.figures.steps[step]
            cells.append(
                f"{statistics.median(values):.0f} / {pct(values, 99):.0f} ms" if values else "-"
            )
        row(f"{step:<16} p50 / p99", cells)
    per = [max(r.figures.purchases, 1) for r in runs]
    row(
        "Redis commands per purchase",
        [f"{r.commands / n:.0f}" for r, n in zip(runs, per, strict=True)],
    )
    top: list[str] = []
    for r in runs:
        top += [c for c, _ in r.by_command.most_common(8) if c not in top]
    for command in top:
        row(
            f"  {command}",
            [f"{r.by_command[command] / n:.1f}" for r, n in zip(runs, per, strict=True)],
        )
    print("  CPU share (one core = 100 %):")
    names: list[str] = []
    for r in runs:
        names += [n for n in sorted(r.cpu) if not n.startswith("redis") and n not in names]
    for process in names:
        row(f"  {process}", [f"{r.cpu[process]:.1f} %" if process in r.cpu else "-" for r in runs])
    redis_cpu = [sum(v for n, v in r.cpu.items() if n.startswith("redis")) for r in runs]
    row("  redis (all nodes)", [f"{v:.1f} %" for v in redis_cpu])
    row("  all processes", [f"{sum(r.cpu.values()):.1f} %" for r in runs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="processes per worker service")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--dispense-s", type=float, default=0.3)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run the load on one Redis, then on a Redis Cluster of 3 masters + 3 replicas, "
        "and print the two side by side",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample every backend process with py-spy while the fleet buys; stacks and a "
        "summary go to DIR",
    )
    args = parser.parse_args()
    runs = [run_load(args, cluster=False)]
    if args.cluster:
        runs.append(run_load(args, cluster=True))
        side_by_side(runs, args.machines, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
