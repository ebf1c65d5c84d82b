#!/usr/bin/env python3
"""Chaos soak: customers buy drinks from the real machine while everything breaks.

    python bench/chaos.py --purchases 30 --seed 7

Starts the real machine (`main.py up`: Redis with AOF, the sandbox, the websocket server,
the workers) in a temporary folder, and sends N customers through it one after another over
the websocket protocol, each doing one of: pay at once, pay late in the window, pay after
the deadline, never pay, cancel on the QR screen, cancel on the menu, disconnect mid-payment
and come back. Meanwhile, at random moments, it kill -9's a worker, the websocket server or
Redis (which `up` restarts; AOF keeps the data), switches the sandbox's faults on for a few
seconds, and vends fail at DISPENSE_FAILURE_RATE.

At the end it reconciles three independent records: the gateway's ledger (the sandbox's
`/simulator/transactions`), the vend journal (`VAR_DIR/vends.jsonl`) and the sales stream,
and exits 1 on any violation of the money rules (shared/DESIGN.md). The seed is printed so
any failure can be replayed (process timing still varies from run to run).

    python bench/chaos.py --fleet 4 --purchases 200 --seed 1130 [--workers 2]

Fleet mode (shared/DESIGN.md "Fleet mode"): `main.py backend` (bench/fleet_harness.py, on a
redis-server of its own with AOF) and M registered machines `chaos-1` .. `chaos-M`, each a
`main.py machine` agent with its own kiosk and vend journal. The N customers are split
between the machines, each machine's customers in a thread of their own, all at once, with
the same behaviours. The chaos thread kill -9's, besides the same sandbox faults:

    the gateway, a shared worker process,     the backend's supervisor restarts it
    the notification receiver
    an agent picked at random                 started again here after 0.2-2 s (nothing
                                              supervises an agent in the harness)
    the backend's Redis                       started again here after 0.2-2 s, same port
                                              and data folder: AOF brings every write back

Redis stays in: with REDIS_URL set the backend does not restart it, so the soak does what a
host's service manager would; every process of the fleet must ride a Redis restart as `up`'s
do. Each machine is reconciled with the one-machine rules on its own records (its slice of
the ledger: the order ids that start with `<machine_id>-`; its agent's journal, where a
"started" line without a result is a vend cut by a kill; its sales), and the fleet as a whole
for isolation: every order id a machine's customers, sales, journal and operator queue hold
is that machine's own, and every transaction at the gateway belongs to one machine. The
report gives one line per machine, then the totals; the replay line carries --fleet.

    python bench/chaos.py --fleet 3 --cluster --purchases 120 --seed 1130

On a Redis Cluster (`--cluster`): the backend runs on a cluster of its own (3 masters + 3
replicas, cores/redis_cluster.py, started by the harness and passed as REDIS_URL), and the
backend's Redis faults become node faults: kill -9 of a master picked at random (its replica
is promoted after the node timeout, the slots' writes wait meanwhile) or of a replica, started
again here after 0.2-2 s on its port and folder (a master comes back as a replica of the node
that took its place). One node fault at a time: the next is injected only once the cluster is
whole again (every node up, cluster_state ok, every master with a replica whose link is up),
so no fault ever takes a slot's master and its only replica together, which no replication
survives. A promoted master has no replica until its old master is back: its money-moving
steps are not known durable meanwhile (cores/broker.py NotDurable) and retried.
"""

from __future__ import annotations

import argparse
import collections
import json
import queue
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet_harness import FleetMachine, LaunchedFleet, owner_of
from bench.harness import Launched, Page

BEHAVIOURS = (
    "pay_now",
    "pay_late",
    "pay_after_deadline",
    "never_pay",
    "cancel_qr",
    "cancel_menu",
    "reconnect_pay",
)
KILLABLE = ("order", "order_created", "dispense", "screen", "notification", "websocket", "redis")
#: Fleet mode: the backend's processes its supervisor restarts (the shared workers are added
#: by their pid-file names), and what the soak itself restarts after a pause.
FLEET_KILLABLE = ("gateway", "notification")
RESTARTED_BY_SOAK = ("agent", "redis", "master", "replica")
#: Fleet mode on a cluster: the node faults that stand for the one Redis's kill.
NODE_FAULTS = ("master", "replica")
#: Sandbox faults (shared/midtrans.md) switched on for a few seconds: kind -> settings.
SANDBOX_FAULTS = {
    "latency_above_timeout": {"LATENCY_MS": 2_500},  # MIDTRANS_TIMEOUT_S is 2 here
    "http_5xx_429": {"ERROR_RATE": 0.5},
    "dropped_connections": {"DROP_RATE": 0.5},
    "errors_with_http_200": {"HTTP200_ERRORS": 1, "ERROR_RATE": 0.3},
    "paid_but_pending": {"PENDING_AFTER_PAY_S": 3},
    "notify_delayed": {"NOTIFY_DELAY_S": 3},
    "notify_duplicated": {"NOTIFY_DUPLICATE_RATE": 1},
    "notify_reordered": {"NOTIFY_REORDER": 1},
    "refunds_disabled": {"REFUND_DISABLED": 1},
}
FAULT_OFF = {
    "LATENCY_MS": 0,
    "ERROR_RATE": 0,
    "DROP_RATE": 0,
    "HTTP200_ERRORS": 0,
    "PENDING_AFTER_PAY_S": 0,
    "NOTIFY_DELAY_S": 0,
    "NOTIFY_DUPLICATE_RATE": 0,
    "NOTIFY_REORDER": 0,
    "REFUND_DISABLED": 0,
}
RESULTS = ("DISPENSED", "PAYMENT_FAILED", "DISPENSE_FAILED")

#: One machine (`main.py up`), or one machine of a fleet (its agent, the shared backend).
Machine = Launched | FleetMachine


@dataclass
class Config:
    purchases: int
    seed: int
    deadline_s: float = 2.5
    failure_rate: float = 0.1
    fault_every_s: float = 2.5
    customer_timeout_s: float = 120.0
    settle_s: float = 60.0
    #: Fleet mode: this many machines on one backend (0: one machine, `main.py up`).
    fleet: int = 0
    #: Fleet mode: processes of each shared worker service (`main.py backend --workers`).
    workers: int = 1
    #: Fleet mode: the backend on a Redis Cluster of its own, with node kills and failovers.
    cluster: bool = False

    def replay(self) -> str:
        line = f"python bench/chaos.py --purchases {self.purchases} --seed {self.seed}"
        if self.fleet:
            line += f" --fleet {self.fleet}"
            if self.workers != 1:
                line += f" --workers {self.workers}"
            if self.cluster:
                line += " --cluster"
        return line


@dataclass
class Report:
    faults: collections.Counter = field(default_factory=collections.Counter)
    behaviours: collections.Counter = field(default_factory=collections.Counter)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    customers_stuck: int = 0
    reconnects: int = 0
    late_pay_answers: collections.Counter = field(default_factory=collections.Counter)
    seconds: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))


class Chaos:
    """Kills processes and switches sandbox faults at random moments, until stopped."""

    def __init__(
        self, machine: Machine, rng: random.Random, every_s: float, report: Report
    ) -> None:
        self.machine = machine
        self.rng = rng
        self.every_s = every_s
        self.report = report
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.off_at: dict[str, float] = {}
        self.killable: tuple[str, ...] = KILLABLE

    def kill(self, name: str) -> bool:
        """kill -9 the process `name` (`main.py up` restarts it); False if none ran."""
        return self.machine.kill9(name) is not None

    def run(self) -> None:
        kinds = [f"kill_{k}" for k in self.killable] + list(SANDBOX_FAULTS)
        while not self.stopping.wait(self.rng.expovariate(1 / self.every_s)):
            now = time.monotonic()
            for kind, at in list(self.off_at.items()):
                if now >= at:
                    self._set({name: 0 for name in SANDBOX_FAULTS[kind]})
                    del self.off_at[kind]
            kind = self.rng.choice(kinds)
            if kind.startswith("kill_"):
                if self.kill(kind.removeprefix("kill_")):
                    self.report.faults[kind] += 1
            elif kind not in self.off_at and self._set(SANDBOX_FAULTS[kind]):
                self.off_at[kind] = now + self.rng.uniform(1.0, 4.0)
                self.report.faults[kind] += 1
        self._set(FAULT_OFF)

    def _set(self, faults: dict) -> bool:
        try:
            self.machine.faults(**faults)
            return True
        except Exception:
            return False

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        self._set(FAULT_OFF)


def serve_customer(
    machine: Machine, page: Page, behaviour: str, rng: random.Random, cfg: Config, report: Report
) -> str | None:
    """One customer from the attract screen to a result; returns their order_id (if any)."""
    deadline = time.monotonic() + cfg.customer_timeout_s
    order_id: str | None = None
    phase = "start"
    last_sent: dict[str, float] = collections.defaultdict(float)
    created_at = 0.0
    pay_at: float | None = None
    paid = cancelled = reconnected = False
    qr_seen: str | None = None
    frame = page.frames[-1] if page.frames else page.connect()
    while time.monotonic() < deadline:
        state = frame["event"]
        values = frame.get("values") or {}
        now = time.monotonic()

        def due(event: str, now: float = now) -> bool:
            """A command unanswered for 2 s is sent again."""
            if now - last_sent[event] > 2.0:
                last_sent[event] = now
                return True
            return False

        if state == "IDLE":
            if phase == "start" and due("SHOW_MENU"):
                page.send("SHOW_MENU")
            elif phase in ("ordered", "done"):
                return order_id
        elif state == "SHOW_MENU":
            if phase == "start":
                if behaviour == "cancel_menu":
                    page.send("CANCEL")
                    phase = "done"
                elif due("ORDER"):
                    drinks = [d["id"] for d in values if d.get("stock", 0) > 0]
                    page.send("ORDER", id=rng.choice(drinks), total=1)
            elif phase == "done":
                return order_id
        elif state == "ORDER_CREATED" and values.get("order_id"):
            if qr_seen != values["order_id"]:
                order_id = qr_seen = values["order_id"]
                phase, created_at = "ordered", now
                if behaviour == "pay_now":
                    pay_at = now
                elif behaviour == "pay_late":
                    pay_at = now + rng.uniform(0.3, max(0.4, cfg.deadline_s - 1.0))
                elif behaviour == "reconnect_pay":
                    pay_at = now + rng.uniform(0.5, 2.0)
                elif behaviour == "cancel_qr":
                    pay_at = None
            if behaviour == "cancel_qr" and not cancelled and now - created_at > 0.3:
                page.send("CANCEL")
                cancelled = True
            if behaviour == "reconnect_pay" and not reconnected:
                page.close()
                time.sleep(rng.uniform(0.2, 1.5))
                snap = page.connect()
                reconnected = True
                report.reconnects += 1
                if snap["event"] == "ORDER_CREATED" and snap["values"]["order_id"] != order_id:
                    report.violations.append(f"{order_id}: reconnect showed another order")
                if snap["event"] in ("IDLE", "SHOW_MENU"):
                    report.violations.append(f"{order_id}: reconnect reset the payment")
                frame = snap
                continue
            if pay_at is not None and not paid and now >= pay_at:
                machine.pay(order_id)
                paid = True
        elif state in RESULTS:
            if values.get("order_id") == order_id and order_id:
                if behaviour == "pay_after_deadline" and not paid:
                    report.late_pay_answers[machine.pay(order_id)] += 1
                    paid = True
                if phase != "done":
                    page.send("SHOW_MENU")  # a tap dismisses the result screen
                phase = "done"
        elif state == "MENU_CLICKED" and phase == "start":
            order_id, phase = values.get("order_id"), "ordered"
        frame = next_frame(page, 0.3)
    report.customers_stuck += 1
    report.violations.append(f"customer {behaviour} stuck at {frame['event']} (order {order_id})")
    return order_id


def next_frame(page: Page, timeout_s: float) -> dict:
    """The next frame (ERROR frames are skipped), or the last one again after `timeout_s`."""
    try:
        return page.until(*STATE_EVENTS, timeout_s=timeout_s, follow=True)
    except TimeoutError:
        last = [f for f in page.frames if f["event"] != "ERROR"]
        return last[-1] if last else page.connect()


STATE_EVENTS = (
    "IDLE",
    "SHOW_MENU",
    "MENU_CLICKED",
    "ORDER_CREATED",
    "PAYMENT_SUCCESS",
    "DISPENSING",
    "DISPENSED",
    "PAYMENT_FAILED",
    "DISPENSE_FAILED",
    "OUT_OF_SERVICE",
)


def journal_results(var: Path) -> dict[str, list[str]]:
    """The vend journal (VAR_DIR/vends.jsonl): order id -> its results, in order."""
    results: dict[str, list[str]] = collections.defaultdict(list)
    journal = var / "vends.jsonl"
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            results[entry["order_id"]].append(entry["result"])
    return results


def reconcile(machine: Machine, order_ids: list[str], report: Report) -> None:
    """Money rules against three independent records; violations go into the report."""
    ledger = {t["order_id"]: t for t in machine.ledger()}
    vends = journal_results(machine.var)
    sales: dict[str, list[str]] = collections.defaultdict(list)
    for entry in machine.broker.sales():
        sales[entry["order_id"]].append(entry["kind"])
    operator = machine.broker.operator_queue()
    v = report.violations

    for order_id, txn in ledger.items():
        settled = bool(txn.get("settlement_time")) or txn["transaction_status"] in (
            "settlement",
            "refund",
            "partial_refund",
        )
        vended = vends[order_id].count("vended")
        refunded = float(txn.get("refund_amount") or 0) >= float(txn["gross_amount"])
        owed = operator.get(order_id, {}).get("kind") in ("refund_owed", "vend_unknown")
        if order_id not in sales:
            v.append(f"{order_id}: charged at the gateway but in no sales record (lost)")
        if settled and not (vended or refunded or owed):
            v.append(f"{order_id}: settled payment neither vended, refunded nor owed")
        if settled and vended and refunded:
            v.append(f"{order_id}: vended and refunded")
        if vended and not settled:
            v.append(f"{order_id}: vended without a settled payment")
    for order_id, results in vends.items():
        if results.count("vended") > 1:
            v.append(f"{order_id}: vended {results.count('vended')} times")
        if order_id not in ledger:
            v.append(f"{order_id}: vended but unknown to the gateway")
    for order_id, kinds in sales.items():
        if "dispensed" in kinds and vends[order_id].count("vended") != 1:
            v.append(f"{order_id}: sales say dispensed, journal says {vends[order_id]}")
        if "charged" in kinds and order_id not in ledger:
            v.append(f"{order_id}: sales say charged, gateway has no transaction")

    for order_id in order_ids:
        kinds = sales.get(order_id, [])
        final = next(
            (
                k
                for k in reversed(kinds)
                if k
                in (
                    "dispensed",
                    "refunded",
                    "refund_owed",
                    "vend_unknown",
                    "cancelled",
                    "payment_failed",
                )
            ),
            "no_result",
        )
        report.outcomes[final] += 1
    report.outcomes["cancelled_on_menu"] = report.behaviours["cancel_menu"]


def wait_idle(machine: Machine, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if machine.broker.snapshot().state == "IDLE":
                return True
        except Exception:
            pass
        time.sleep(0.2)
    return False


def soak(cfg: Config, folder: Path, out=sys.stdout) -> Report:
    if cfg.fleet:
        return soak_fleet(cfg, folder, out)
    rng = random.Random(cfg.seed)
    report = Report()
    started = time.monotonic()
    machine = Launched(
        folder,
        PAYMENT_DEADLINE_S=str(cfg.deadline_s),
        RESULT_SCREEN_S="0.5",
        DISPENSE_S="0.2",
        DISPENSE_FAILURE_RATE=str(cfg.failure_rate),
        MENU_IDLE_S="30",
        MIDTRANS_TIMEOUT_S="2",
    )
    try:
        # A soak never runs dry: the set-up fills the stock hash past any slot's capacity
        # directly (no operator may: Broker.set_stock refuses more than the capacity).
        machine.broker.redis.hset(
            machine.broker.stock_key, mapping=dict.fromkeys(machine.broker.stock(), 100_000)
        )
        chaos = Chaos(machine, random.Random(cfg.seed + 1), cfg.fault_every_s, report)
        page = Page(machine.ws_url)
        order_ids: list[str] = []
        chaos.start()
        for n in range(cfg.purchases):
            behaviour = rng.choice(BEHAVIOURS)
            report.behaviours[behaviour] += 1
            began = time.monotonic()
            order_id = serve_customer(machine, page, behaviour, rng, cfg, report)
            report.seconds[behaviour].append(time.monotonic() - began)
            if order_id:
                order_ids.append(order_id)
            if (n + 1) % 50 == 0:
                print(
                    f"... {n + 1} customers, {time.monotonic() - started:.0f} s",
                    file=out,
                    flush=True,
                )
        chaos.stop()
        report.reconnects += page.reconnects
        page.close()
        if not wait_idle(machine, cfg.deadline_s + 30):
            report.violations.append("machine not back to IDLE after the last customer")
        # Let delayed notifications, retried refunds and rechecks land, then reconcile.
        settle_until = time.monotonic() + cfg.settle_s
        while True:
            trial = Report()
            trial.behaviours = report.behaviours
            reconcile(machine, order_ids, trial)
            if not trial.violations or time.monotonic() > settle_until:
                break
            time.sleep(1.0)
        report.violations += trial.violations
        report.outcomes = trial.outcomes
        vend_failures = 0
        journal = machine.var / "vends.jsonl"
        if journal.exists():
            vend_failures = journal.read_text().count('"result":"failed"')
        report.faults["vend_failures"] = vend_failures
    finally:
        code = machine.stop()
        if code != 0:
            report.violations.append(f"main.py up exited with {code}")
    print_report(cfg, report, time.monotonic() - started, out)
    return report


def print_report(cfg: Config, report: Report, elapsed_s: float, out) -> None:
    def table(title: str, counts: collections.Counter) -> None:
        print(f"\n{title}", file=out)
        for name, count in sorted(counts.items()):
            print(f"  {name:<28}{count:>7}", file=out)

    print(f"\nchaos soak: {cfg.purchases} customers, seed {cfg.seed}, {elapsed_s:.0f} s", file=out)
    table("faults injected", report.faults)
    print("\ncustomers                        count  mean s   max s", file=out)
    for name, count in sorted(report.behaviours.items()):
        took = report.seconds.get(name) or [0.0]
        print(f"  {name:<28}{count:>7}{sum(took) / len(took):>8.1f}{max(took):>8.1f}", file=out)
    table("outcomes (sales record)", report.outcomes)
    if report.late_pay_answers:
        table(
            "pay after the deadline: simulator answers",
            collections.Counter({str(k): v for k, v in report.late_pay_answers.items()}),
        )
    print(f"\npage reconnects: {report.reconnects}", file=out)
    print(f"violations: {len(report.violations)}", file=out)
    for line in report.violations:
        print(f"  - {line}", file=out)
    print(f"replay: {cfg.replay()}", file=out)


# --- fleet mode: M machines (agents) on one backend ------------------------------------------


class FleetChaos(Chaos):
    """Chaos over a fleet: kill -9 of the backend's gateway, shared workers and notification
    receiver (its supervisor restarts them), of the backend's Redis and of an agent picked at
    random (nothing supervises those here: they are started again after a pause of 0.2-2 s,
    Redis on its port and AOF data folder), and the same sandbox faults as one machine. On a
    cluster backend, a random master or replica instead of the one Redis, one node fault at
    a time (the next once the cluster is whole again: module docstring).

    The restarts are made by the soak's main thread (`tend`), not by the chaos thread: every
    child is started with die_with_parent (PR_SET_PDEATHSIG), which the kernel fires when the
    *thread* that started it ends, so an agent or a Redis started by the chaos thread would be
    sent SIGTERM the moment the chaos stops."""

    def __init__(
        self,
        fleet: LaunchedFleet,
        rng: random.Random,
        every_s: float,
        report: Report,
    ) -> None:
        super().__init__(fleet.machines[0], rng, every_s, report)
        self.machines = fleet.machines
        self.cluster = fleet.backend.cluster
        redis_faults = ("redis",) if self.cluster is None else NODE_FAULTS
        self.killable = (*fleet.worker_names(), *FLEET_KILLABLE, "agent", *redis_faults)
        #: (when, machine, name): what `tend` starts again, from the main thread.
        self.restarts: queue.Queue[tuple[float, FleetMachine, str]] = queue.Queue()

    def kill(self, name: str) -> bool:
        machine = self.rng.choice(self.machines)
        if name in NODE_FAULTS:
            return self.kill_node(machine, name)
        if machine.kill9(name) is None:
            return False
        if name in RESTARTED_BY_SOAK:
            self.restarts.put((time.monotonic() + self.rng.uniform(0.2, 2.0), machine, name))
        return True

    def kill_node(self, machine: FleetMachine, role: str) -> bool:
        """kill -9 a master or a replica of the cluster picked at random, once the cluster is
        whole (else no fault now); started again from the main thread after a pause."""
        cluster = self.cluster
        assert cluster is not None
        try:
            if cluster.dead() or not cluster.ready():
                return False
            port = self.rng.choice(cluster.masters() if role == "master" else cluster.replicas())
        except Exception:  # a node that cannot be asked: the cluster is not whole
            return False
        cluster.kill9(port)
        self.restarts.put((time.monotonic() + self.rng.uniform(0.2, 2.0), machine, role))
        return True

    def tend(self, timeout_s: float) -> None:
        """In the main thread: start again what was killed, once its pause is over (waits
        up to `timeout_s` for a kill)."""
        try:
            at, machine, name = self.restarts.get(timeout=timeout_s)
        except queue.Empty:
            return
        time.sleep(max(0.0, at - time.monotonic()))
        try:
            machine.restart(name)
        except Exception as exc:  # the soak goes on; the report says what did not return
            self.report.violations.append(f"{name} of {machine.machine_id} not restarted: {exc}")

    def stop(self) -> None:
        super().stop()
        while not self.restarts.empty():
            self.tend(0)


def fleet_customers(
    machine: FleetMachine,
    count: int,
    rng: random.Random,
    cfg: Config,
    report: Report,
    order_ids: list[str],
    served: collections.Counter,
    progress,
) -> None:
    """`count` customers, one after another, on the kiosk of one machine of the fleet."""
    page = Page(machine.ws_url, connect=False)
    try:
        for _ in range(count):
            behaviour = rng.choice(BEHAVIOURS)
            report.behaviours[behaviour] += 1
            began = time.monotonic()
            try:
                order_id = serve_customer(machine, page, behaviour, rng, cfg, report)
            except Exception as exc:  # a page that could not reach its agent for 15 s
                report.customers_stuck += 1
                report.violations.append(f"customer {behaviour} lost its page: {exc!r}")
                order_id = None
            report.seconds[behaviour].append(time.monotonic() - began)
            if order_id:
                order_ids.append(order_id)
            progress()
    finally:
        report.reconnects += page.reconnects
        page.close()


def reconcile_fleet(
    machines: list[FleetMachine], order_ids: dict[str, list[str]], ledger: list[dict]
) -> list[str]:
    """Isolation across the fleet: every order id a machine's customer saw, and every one in
    a machine's sales, journal and operator queue, is that machine's own (its id starts with
    `<machine_id>-`); every transaction at the gateway belongs to one of the machines."""
    ids = [m.machine_id for m in machines]
    violations: list[str] = []
    for machine in machines:
        mine = machine.machine_id
        seen: dict[str, set[str]] = {
            "customers": set(order_ids[mine]),
            "sales": {e["order_id"] for e in machine.broker.sales()},
            "operator queue": set(machine.broker.operator_queue()),
            "journal": set(journal_results(machine.var)),
        }
        for where, found in seen.items():
            for order_id in sorted(found):
                owner = owner_of(order_id, ids)
                if owner != mine:
                    violations.append(
                        f"{order_id} (of {owner or 'no machine'}) in {mine}'s {where}"
                    )
    for txn in ledger:
        if owner_of(txn["order_id"], ids) is None:
            violations.append(f"{txn['order_id']}: charged at the gateway for no machine")
    return violations


def soak_fleet(cfg: Config, folder: Path, out=sys.stdout) -> Report:
    """The soak against `cfg.fleet` machines on one backend: each machine's customers in a
    thread of their own (the purchases split evenly), one chaos thread for the whole fleet.
    Returns the totals; each machine's figures are printed too."""
    started = time.monotonic()
    ids = [f"chaos-{n}" for n in range(1, cfg.fleet + 1)]
    reports = {m: Report() for m in ids}
    total = Report()  # the faults, and the violations of the chaos thread and the fleet
    order_ids: dict[str, list[str]] = {m: [] for m in ids}
    fleet = LaunchedFleet(
        folder,
        ids,
        workers=cfg.workers,
        cluster=cfg.cluster,
        PAYMENT_DEADLINE_S=str(cfg.deadline_s),
        RESULT_SCREEN_S="0.5",
        DISPENSE_S="0.2",
        DISPENSE_FAILURE_RATE=str(cfg.failure_rate),
        MENU_IDLE_S="30",
        MIDTRANS_TIMEOUT_S="2",
    )
    try:
        for machine in fleet.machines:  # never runs dry (see soak)
            machine.broker.redis.hset(
                machine.broker.stock_key, mapping=dict.fromkeys(machine.broker.stock(), 100_000)
            )
        chaos = FleetChaos(fleet, random.Random(cfg.seed + 1), cfg.fault_every_s, total)
        served: collections.Counter = collections.Counter()
        lock = threading.Lock()

        def progress() -> None:
            with lock:
                served["customers"] += 1
                if served["customers"] % 50 == 0:
                    print(
                        f"... {served['customers']} customers, {time.monotonic() - started:.0f} s",
                        file=out,
                        flush=True,
                    )

        share, extra = divmod(cfg.purchases, cfg.fleet)
        threads = [
            threading.Thread(
                target=fleet_customers,
                args=(
                    machine,
                    share + (1 if n < extra else 0),
                    random.Random(f"{cfg.seed}:{machine.machine_id}"),
                    cfg,
                    reports[machine.machine_id],
                    order_ids[machine.machine_id],
                    served,
                    progress,
                ),
                name=f"customers-{machine.machine_id}",
                daemon=True,
            )
            for n, machine in enumerate(fleet.machines)
        ]
        chaos.start()
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            chaos.tend(0.2)
        chaos.stop()
        cluster = fleet.backend.cluster
        if cluster is not None:
            try:
                cluster.wait_ready(60)
            except Exception as exc:
                total.violations.append(f"the cluster not whole after the soak: {exc}")
        for machine in fleet.machines:
            if not wait_idle(machine, cfg.deadline_s + 30):
                reports[machine.machine_id].violations.append(
                    "machine not back to IDLE after the last customer"
                )
        # Let delayed notifications, retried refunds and rechecks land, then reconcile.
        settle_until = time.monotonic() + cfg.settle_s
        while True:
            trials = {m: Report() for m in ids}
            for machine in fleet.machines:
                trials[machine.machine_id].behaviours = reports[machine.machine_id].behaviours
                reconcile(machine, order_ids[machine.machine_id], trials[machine.machine_id])
            isolation = reconcile_fleet(
                fleet.machines, order_ids, fleet.machines[0].backend.ledger()
            )
            if not isolation and not any(t.violations for t in trials.values()):
                break
            if time.monotonic() > settle_until:
                break
            time.sleep(1.0)
        for machine in fleet.machines:
            mine = reports[machine.machine_id]
            mine.violations += trials[machine.machine_id].violations
            mine.outcomes = trials[machine.machine_id].outcomes
            journal = journal_results(machine.var)
            mine.faults["vend_failures"] = sum(r.count("failed") for r in journal.values())
        total.violations += isolation
    finally:
        codes = fleet.stop()
        for name, code in codes.items():
            if code != 0:
                total.violations.append(f"{name} exited with {code}")
    for machine_id, report in reports.items():
        total.faults["vend_failures"] += report.faults["vend_failures"]
        total.behaviours.update(report.behaviours)
        total.outcomes.update(report.outcomes)
        total.violations += [f"{machine_id}: {line}" for line in report.violations]
        total.customers_stuck += report.customers_stuck
        total.reconnects += report.reconnects
        total.late_pay_answers.update(report.late_pay_answers)
        for behaviour, took in report.seconds.items():
            total.seconds[behaviour] += took
    print_fleet_report(cfg, reports, total, time.monotonic() - started, out)
    return total


def print_fleet_report(
    cfg: Config, reports: dict[str, Report], total: Report, elapsed_s: float, out
) -> None:
    """Each machine's line (customers, outcomes, page reconnects, violations), then the
    totals as one machine's report prints them."""
    on = " on a Redis Cluster (3 masters + 3 replicas)" if cfg.cluster else ""
    print(
        f"\nchaos soak, fleet of {cfg.fleet} machines on one backend{on} "
        f"({cfg.workers} process(es) per shared worker)",
        file=out,
    )
    for machine_id, report in reports.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()) if v)
        print(
            f"  {machine_id}: {sum(report.behaviours.values())} customers, "
            f"{report.reconnects} page reconnects, {report.faults['vend_failures']} vend "
            f"failures, {len(report.violations)} violations; {outcomes}",
            file=out,
        )
    print_report(cfg, total, elapsed_s, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--deadline", type=float, default=2.5, help="PAYMENT_DEADLINE_S")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="DISPENSE_FAILURE_RATE")
    parser.add_argument(
        "--fault-every", type=float, default=2.5, help="mean seconds between injected faults"
    )
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument(
        "--fleet", type=int, default=0, metavar="M", help="M machines on one `main.py backend`"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="with --fleet: processes per shared worker"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="with --fleet: the backend on a Redis Cluster of its own, with node kills",
    )
    args = parser.parse_args(argv)
    if args.fleet < 0 or args.workers < 1:
        parser.error("--fleet must be >= 0 and --workers >= 1")
    if args.cluster and not args.fleet:
        parser.error("--cluster needs --fleet M")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    cfg = Config(
        args.purchases,
        seed,
        args.deadline,
        args.failure_rate,
        args.fault_every,
        fleet=args.fleet,
        workers=args.workers,
        cluster=args.cluster,
    )
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = soak(cfg, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as folder:
            report = soak(cfg, Path(folder))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
