"""Fleet mode's shared workers: one process of a service works every machine of the shards it
holds (shared/DESIGN.md, "Fleet mode"; cores/work.py for the shards).

    process P of service S                                Redis (one slot per line)
    lease loop (the calling thread), every LEASE_RENEW_S:
      alive   ZADD / ZCOUNT                               fleet:{fleet}:workers:S
      renew   compare-and-renew, per shard held           fleet:{shard-N}:lease:S
      share   hold ceil(shards / alive processes): release the extra shards (after the
              step in hand), try SET NX PX on others until the share is held
    one thread per shard held:
      take-over  XGROUP CREATE MKSTREAM, XAUTOCLAIM       fleet:{shard-N}:work
                 timers ZRANGE                            fleet:{shard-N}:due:S
                 sweep: step every machine of the shard   (registry: fleet:{fleet}:machines)
      loop       XREADGROUP BLOCK (up to the next timer), group the hints by machine, step
                 each machine once, XACK the batch at once; ZADD/ZREM the timer each step
                 returns; step the machines whose timer fell due; sweep every SWEEP_EVERY_S

A step is the service's existing one-machine `Worker.step(snapshot, entries)`, of one worker
object per machine (built lazily on a Broker that carries hints, dropped with the shard). The
hints are only wake-ups; the truth stays in the machine's keys, so a lost hint, a step that
failed or a shard taken over mid-step costs a delay, never an order: the sweep re-derives
the work from the machines' states.

A hint of a transition names the new state (cores/work.py). A service declares the states and
the commands it acts on (`Worker.states`, `Worker.commands`); a machine whose hints in a batch
all name other states and other commands (or none) is not stepped: its snapshot is not even
read (`must_step`). The step it saves would have done nothing but return no timer, and the
workers stay level-triggered: a hint with neither a state nor a command (a vend result), a
failed step's retry, a timer and the sweep still step the machine, whatever its state. A timer of the machine is left as it is (it fires, and its step
reads the state then): hints may arrive out of order (each is written after its own MULTI), so
a skipped hint may be older than the step that set the timer.

Each machine belongs to one shard and each shard's lease
to one process, so a machine is stepped by one process at a time; a process that cannot
renew a lease stops working that shard at once (after the step in hand), and a released
lease is deleted only once its thread has ended. A killed process's leases expire after
LEASE_TTL_S and its entry in the workers' zset ages out with them, so the others take its
shards over within LEASE_TTL_S + LEASE_RENEW_S.

Every Redis command touches one key or keys of one hash tag (Cluster-legal): the machines'
`{machine_id}`, the shards' `{shard-N}`, the fleet's `{fleet}`. No per-machine heartbeat is
written (a thousand machines, a thousand writes per period): the workers' zset says which
processes of a service are alive (`cores.work.fleet_heartbeats`).

The share-out rules are pure functions at the top (`fair_share`, `shards_to_release`,
`shards_to_try`, `hinted_machines`, `must_step`).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, cast

import redis

from constants import keys
from constants.tunables import (
    ERROR_BACKOFF_S,
    HEARTBEAT_TTL_S,
    LEASE_RENEW_S,
    LEASE_TTL_S,
    SWEEP_EVERY_S,
    WORK_SHARDS,
)
from cores.broker import Broker
from cores.logs import for_machine, kv
from cores.work import WorkHints, due_key, lease_key, shard_of, work_key
from services.worker import Worker

log = logging.getLogger(__name__)

#: Hints read per XREADGROUP; a busy shard's batch steps each machine once whatever its count.
READ_COUNT = 500
LEASE_TTL_MS = int(LEASE_TTL_S * 1000)
#: A shard's thread stops stepping this long before its lease would lapse unrenewed (the
#: lease loop stalled, or Redis unreachable): never two processes on one machine.
LEASE_MARGIN_S = LEASE_RENEW_S / 2
#: A process's entry in the workers' zset is forgotten this long after its last word (kept
#: meanwhile so that `fleet_heartbeats` tells an operator how long ago a service was alive).
FORGET_AFTER_S = float(HEARTBEAT_TTL_S)

# --- the share-out rules (pure) ----------------------------------------------------------------


def fair_share(shards: int, alive: int) -> int:
    """How many shards one of `alive` processes of a service holds at most."""
    return math.ceil(shards / max(alive, 1))


def shards_to_release(held: Collection[int], share: int) -> list[int]:
    """The shards a process above its share gives up (the highest ones), so that a new
    process gets some."""
    return sorted(held, reverse=True)[: max(0, len(held) - share)]


def shards_to_try(held: Collection[int], shards: int, share: int, start: int) -> list[int]:
    """The shards a process below its share tries to take, in order, starting at `start`
    (each process its own, so that newcomers do not all race for shard 0)."""
    if len(held) >= share:
        return []
    order = [(start + i) % shards for i in range(shards)]
    return [s for s in order if s not in held]


def hinted_machines(
    entries: Iterable[tuple[str, dict[str, str]]], shard: int, shards: int
) -> dict[str, list[tuple[str, str]]]:
    """Hints grouped by machine, in arrival order: machine -> [(command, order_id)] (an empty
    command for a plain wake-up). A hint naming a machine of another shard is dropped: that
    shard's owner steps it, and two owners must never step one machine."""
    out: dict[str, list[tuple[str, str]]] = {}
    for _, fields in entries:
        machine = fields.get("m", "")
        if not machine or shard_of(machine, shards) != shard:
            continue
        out.setdefault(machine, []).append((fields.get("command", ""), fields.get("order_id", "")))
    return out


def must_step(
    states: Collection[str] | None,
    hints: Iterable[Mapping[str, str]],
    carried: bool = False,
    commands: Collection[str] | None = None,
) -> bool:
    """Whether a worker acting on `states` and `commands` (None: any) steps a machine for its
    `hints` of one batch: yes for a hint naming one of them, or neither a state nor a command
    (only the machine's keys say what changed); no when every hint names only others.
    `carried`: a failed step's hints wait for their retry: always step."""
    if carried:
        return True
    for fields in hints:
        state, command = fields.get("s"), fields.get("command")
        if command and (commands is None or command in commands):
            return True
        if state and (states is None or state in states):
            return True
        if not state and not command:
            return True
    return False


def default_consumer() -> str:
    """A process's consumer name: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --- Redis -------------------------------------------------------------------------------------

#: Renew the lease only while it is still ours (one key: Cluster-legal).
RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
#: Delete the lease only while it is still ours.
RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

Entries = list[tuple[str, dict[str, str]]]


def _read_entries(answer: Any) -> Entries:
    """Entries of an XREADGROUP answer on one stream (RESP2 list or RESP3 dict)."""
    if not answer:
        return []
    if isinstance(answer, dict):
        return [e for found in answer.values() for e in found[0]]
    return [e for _, entries in answer for e in entries]


class ShardRunner:
    """Runs one service's per-machine step for every machine of the shards this process holds.

    `client`: short socket timeout, for commands; `blocking`: for XREADGROUP BLOCK (its socket
    timeout outlasts `block_s`). `make_worker(broker)` builds the service's one-machine worker
    for a machine's Broker (with hints). `run()` serves in the calling thread until
    `request_stop()` (SIGTERM with `install_signal_handlers`); `start()` / `stop()` serve from
    a thread of its own (tests).
    """

    def __init__(
        self,
        service: str,
        client: redis.Redis,
        blocking: redis.Redis,
        make_worker: Callable[[Broker], Worker],
        consumer: str | None = None,
        hints: WorkHints | None = None,
        shards: int = WORK_SHARDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = str(service)
        self.redis = client
        self.blocking = blocking
        self.make_worker = make_worker
        self.consumer = consumer or default_consumer()
        self.hints = hints or WorkHints(client, shards)
        self.shards = shards
        self.clock = clock
        self.stopping = threading.Event()
        #: The longest XREADGROUP BLOCK: a released shard's thread ends within it.
        self.block_s = LEASE_RENEW_S
        self.renew_s = LEASE_RENEW_S
        self.sweep_every_s = SWEEP_EVERY_S
        self.workers_key = keys.FLEET_WORKERS.format(service=self.service)
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)
        #: Shards whose lease this process holds (renewed), by shard; a shard being released
        #: stays here until its thread has ended.
        self.held: dict[int, ShardWork] = {}
        #: Lease loop rounds done (tests wait on it).
        self.ticks = 0
        #: Machines' hints not stepped: every one named a state the service does not act on.
        self.skipped = 0
        #: The states and commands the service acts on (None: any), from its worker class.
        self.states: frozenset[str] | None = None
        self.commands: frozenset[str] | None = None
        self._states_known = False
        self._start_at = zlib.crc32(self.consumer.encode()) % shards
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Stopped as if killed: leases and the workers' entry left to expire (tests).
        self._abandon = False

    # --- lifecycle ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        # Only the flag: the handler runs in the main thread, which may hold `_lock`; `run`
        # wakes at once and stops the shards itself.
        self.stopping.set()

    def request_stop(self, *_: object) -> None:
        """Stop every shard after the step in hand (and cut the workers' pauses short)."""
        self.stopping.set()
        with self._lock:
            for work in self.held.values():
                work.request_stop()

    def run(self) -> None:
        """Serve until `request_stop`; then wait for the shards' threads to finish the step
        in hand (renewing their leases meanwhile), and give the leases and this process's
        entry up, so that the others take over at once."""
        log.info("shard runner started", extra=kv(worker=self.service, consumer=self.consumer))
        try:
            while not self.stopping.is_set():
                self.tick()
                self.stopping.wait(self.renew_s)
        finally:
            self.request_stop()
            self._wind_down()
            log.info("shard runner stopped", extra=kv(worker=self.service))

    def _wind_down(self) -> None:
        while True:
            with self._lock:
                held = dict(self.held)
            if not any(work.alive() for work in held.values()):
                break
            if not self._abandon:  # a step in hand keeps its lease until it ends
                self.renew()
            until = time.monotonic() + self.renew_s
            for work in held.values():
                work.thread.join(max(0.0, until - time.monotonic()))
        self._give_up(held)

    def start(self) -> ShardRunner:
        self._thread = threading.Thread(target=self.run, name=f"runner-{self.consumer}")
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop a runner started with `start`. `release=False` leaves its leases and its
        entry in place, as a killed process would (tests of the take-over)."""
        if not release:
            self._abandon = True
        self.request_stop()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), f"{self.service} runner did not stop"

    def owned(self) -> set[int]:
        """The shards this process works now (held and not being released)."""
        with self._lock:
            return {s for s, w in self.held.items() if not w.stop.is_set()}

    def working(self) -> set[int]:
        """The shards owned and taken over (reading their hints)."""
        with self._lock:
            return {s for s, w in self.held.items() if not w.stop.is_set() and w.ready.is_set()}

    # --- the lease loop -------------------------------------------------------------------

    def tick(self) -> None:
        """Renew the leases, say this process is alive, and release or take shards to hold
        this process's share. A Redis error is logged: the leases then lapse on their own."""
        self.renew()
        self.ticks += 1
        if self.stopping.is_set() or self._abandon:
            return
        try:
            self.share_out(self.alive())
        except redis.RedisError as exc:
            log.warning("redis unavailable", extra=kv(worker=self.service, error=exc))

    def alive(self) -> int:
        """Say this process is alive; how many processes of the service are."""
        now = self.clock()
        with self.redis.pipeline(transaction=False) as pipe:  # one key
            pipe.zadd(self.workers_key, {self.consumer: now})
            pipe.zremrangebyscore(self.workers_key, "-inf", now - FORGET_AFTER_S)
            pipe.zcount(self.workers_key, now - LEASE_TTL_S, "+inf")
            return int(pipe.execute()[2])

    def renew(self) -> None:
        """Renew every lease held. One that cannot be renewed (taken, expired, or Redis
        unreachable) stops its shard at once; a released shard whose thread has ended has
        its lease deleted."""
        with self._lock:
            held = dict(self.held)
        for shard, work in held.items():
            sent_at = time.monotonic()
            ok = False
            try:
                ok = bool(
                    self._renew(
                        keys=[lease_key(shard, self.service)], args=[self.consumer, LEASE_TTL_MS]
                    )
                )
            except redis.RedisError as exc:
                log.warning("lease not renewed", extra=kv(shard=shard, error=exc))
            if not ok:  # another process may own it now: stop at once
                if work.valid_until != -math.inf:  # said once per loss
                    log.warning("lease lost", extra=kv(worker=self.service, shard=shard))
                work.lease_lost()
                # Held until its thread has ended (the step in hand finished), so that this
                # process does not take the shard again and step a machine twice at once.
                if not work.alive():
                    self._drop(shard)
                continue
            work.valid_until = sent_at + LEASE_TTL_S - LEASE_MARGIN_S
            if work.stop.is_set() and not work.alive():
                try:
                    self._release(keys=[lease_key(shard, self.service)], args=[self.consumer])
                except redis.RedisError as exc:  # it expires on its own
                    log.warning("lease left to expire", extra=kv(shard=shard, error=exc))
                self._drop(shard)
                log.info("shard released", extra=kv(worker=self.service, shard=shard))

    def share_out(self, alive: int) -> None:
        """Release the shards above this process's fair share (after the step in hand), or
        take free ones up to it."""
        active = self.owned()
        share = fair_share(self.shards, alive)
        for shard in shards_to_release(active, share):
            self.held[shard].request_stop()
            active.discard(shard)
        for shard in shards_to_try(active | set(self.held), self.shards, share, self._start_at):
            if len(active) >= share:
                break
            sent_at = time.monotonic()
            lease = lease_key(shard, self.service)
            if self.redis.set(lease, self.consumer, nx=True, px=LEASE_TTL_MS):
                work = ShardWork(self, shard, valid_until=sent_at + LEASE_TTL_S - LEASE_MARGIN_S)
                with self._lock:
                    self.held[shard] = work
                active.add(shard)
                work.start()
                log.info("shard taken", extra=kv(worker=self.service, shard=shard, share=share))

    def must_step(self, hints: list[dict[str, str]], carried: bool) -> bool:
        """`must_step` with the service's states and commands (known once one worker was
        built: its class says; until then every hint steps)."""
        if not self._states_known:
            return True
        return must_step(self.states, hints, carried, self.commands)

    def learn_states(self, worker: Worker) -> None:
        if not self._states_known:
            states, commands = type(worker).states, type(worker).commands
            self.states = None if states is None else frozenset(str(s) for s in states)
            self.commands = None if commands is None else frozenset(str(c) for c in commands)
            self._states_known = True

    def _drop(self, shard: int) -> None:
        with self._lock:
            self.held.pop(shard, None)

    def _give_up(self, held: dict[int, ShardWork]) -> None:
        if self._abandon:
            return
        try:
            for shard in held:
                self._release(keys=[lease_key(shard, self.service)], args=[self.consumer])
            self.redis.zrem(self.workers_key, self.consumer)
        except redis.RedisError as exc:
            log.warning("leases left to expire", extra=kv(worker=self.service, error=exc))
        with self._lock:
            self.held.clear()


class ShardWork:
    """One shard held by a ShardRunner: its thread, its machines' workers and timers."""

    def __init__(self, runner: ShardRunner, shard: int, valid_until: float) -> None:
        self.runner = runner
        self.shard = shard
        #: Monotonic time until which the lease is surely ours (moved on by each renewal).
        self.valid_until = valid_until
        self.service = runner.service
        self.stream = work_key(shard)
        self.due_key = due_key(shard, runner.service)
        self.stop = threading.Event()
        #: Set once the shard is taken over (its group exists, its backlog is swept).
        self.ready = threading.Event()
        self.workers: dict[str, Worker] = {}
        #: machine -> when its step asked to run again (mirrors the shard's WORK_DUE zset).
        self.due: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        #: Hints of a step that failed, handed to its retry.
        self.carry: dict[str, list[tuple[str, str]]] = {}
        self.next_sweep = 0.0
        self.thread = threading.Thread(
            target=self.run, name=f"{self.service}-shard-{shard}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self) -> None:
        self.thread.join(60)

    def request_stop(self) -> None:
        self.stop.set()
        for worker in list(self.workers.values()):
            worker.request_stop()  # cuts a refund's pause short; the next owner carries on

    def lease_lost(self) -> None:
        self.valid_until = -math.inf
        self.request_stop()

    def holds(self) -> bool:
        """Whether this shard may still be worked: not stopping, and its lease surely ours."""
        return not self.stop.is_set() and time.monotonic() < self.valid_until

    # --- the shard's thread ---------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        ready = False
        while not self.stop.is_set():
            try:
                if not ready:
                    self.take_over()
                    ready = True
                    self.ready.set()
                self.once()
                failures = 0
            except redis.RedisError as exc:  # Redis down or restarted: back off, take over again
                delay = ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S) - 1)]
                failures += 1
                ready = False
                log.warning(
                    "redis unavailable",
                    extra=kv(worker=self.service, shard=self.shard, error=exc, retry_s=delay),
                )
                self.stop.wait(delay)
            except Exception:  # never let a shard's thread die with its lease held
                log.exception("shard loop failed", extra=kv(worker=self.service, shard=self.shard))
                ready = False
                self.stop.wait(ERROR_BACKOFF_S[-1])

    def take_over(self) -> None:
        """The group, the previous owner's pending hints, the timers, then a sweep."""
        redis_ = self.runner.redis
        try:
            redis_.xgroup_create(self.stream, self.service, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        claimed = self.claim(min_idle_ms=0)
        timers = cast(list[tuple[str, float]], redis_.zrange(self.due_key, 0, -1, withscores=True))
        self.due = {
            m: float(at) for m, at in timers if shard_of(m, self.runner.shards) == self.shard
        }
        log.info(
            "shard taken over",
            extra=kv(
                worker=self.service, shard=self.shard, claimed=len(claimed), timers=len(self.due)
            ),
        )
        self.sweep(claimed)

    def claim(self, min_idle_ms: int) -> Entries:
        """XAUTOCLAIM every pending hint idle for `min_idle_ms` (a previous owner's)."""
        out: Entries = []
        start = "0-0"
        while True:
            reply = self.runner.redis.xautoclaim(
                self.stream, self.service, self.runner.consumer, min_idle_ms, start, count=500
            )
            start, entries = reply[0], reply[1]
            out.extend(e for e in entries if e and e[1] is not None)
            if start in ("0-0", b"0-0"):
                return out

    def sweep(self, entries: Entries | None = None) -> None:
        """Step every machine of the shard (active and revoked alike) and those with a timer
        or a hint, each once, then acknowledge the hints."""
        entries = entries or []
        machines = cast(list[str], self.runner.redis.hkeys(keys.FLEET_MACHINES))
        hinted = hinted_machines(entries, self.shard, self.runner.shards)
        mine = [m for m in machines if shard_of(m, self.runner.shards) == self.shard]
        for machine in dict.fromkeys([*mine, *self.due, *hinted]):
            if not self.holds():
                return
            self.step(machine, hinted.get(machine, []))
        self.ack(entries)
        self.next_sweep = time.monotonic() + self.runner.sweep_every_s

    def once(self) -> None:
        """Sweep when due, step the machines whose timer fell due, then read hints up to the
        next timer and step each machine hinted once."""
        if not self.holds():  # the lease loop has not renewed in time: wait for its word
            self.stop.wait(self.runner.block_s)
            return
        if time.monotonic() >= self.next_sweep:
            self.sweep(self.claim(min_idle_ms=int(LEASE_TTL_S * 1000)))
        now = self.runner.clock()
        for machine in [m for m, at in self.due.items() if at <= now]:
            if not self.step(machine, []):
                return
        now = self.runner.clock()
        wait_s = min(
            self.runner.block_s,
            self.next_sweep - time.monotonic(),
            *(at - now for at in self.due.values()),
        )
        if not self.holds():
            return
        answer = self.runner.blocking.xreadgroup(
            self.service,
            self.runner.consumer,
            {self.stream: ">"},
            count=READ_COUNT,
            block=max(1, math.ceil(wait_s * 1000)),
        )
        entries = _read_entries(answer)
        if not entries:
            return
        done: Entries = []
        hinted = hinted_machines(entries, self.shard, self.runner.shards)
        by_machine: dict[str, Entries] = {}
        for entry in entries:
            by_machine.setdefault(entry[1].get("m", ""), []).append(entry)
        for machine, commands in hinted.items():
            mine = by_machine[machine]
            if not self.runner.must_step([f for _, f in mine], machine in self.carry):
                self.runner.skipped += 1
            elif not self.step(machine, commands):
                break  # stopping: the rest stays pending for the next owner
            done.extend(mine)
        if self.holds():
            done = entries  # hints of other shards' machines are dropped as worked
        self.ack(done)

    def ack(self, entries: Sequence[tuple[str, dict[str, str]]]) -> None:
        if entries:
            self.runner.redis.xack(self.stream, self.service, *[e[0] for e in entries])

    def step(self, machine: str, commands: list[tuple[str, str]]) -> bool:
        """One step of `machine`'s worker with its hints; returns False (nothing done) when the
        shard is stopping or its lease is not surely ours. A failing step is logged and
        retried with backoff; a Redis error propagates (the thread backs off and takes the
        shard over again)."""
        if not self.holds():
            return False
        worker = self.workers.get(machine)
        if worker is None:
            broker = Broker(
                self.runner.redis, machine, blocking=self.runner.blocking, hints=self.runner.hints
            )
            worker = self.workers[machine] = self.runner.make_worker(broker)
            self.runner.learn_states(worker)
        hints = self.carry.pop(machine, []) + commands
        entries = [
            (worker.broker.commands_key, {"command": c, "order_id": o}) for c, o in hints if c
        ]
        try:
            with for_machine(machine):  # its lines name the machine (cores/logs.py)
                wake_at = worker.step(worker.broker.snapshot(), entries)
            worker.steps += 1
            self.failures.pop(machine, None)
        except (redis.ConnectionError, redis.TimeoutError):
            self.carry[machine] = hints
            raise
        except Exception:
            n = self.failures.get(machine, 0)
            delay = ERROR_BACKOFF_S[min(n, len(ERROR_BACKOFF_S) - 1)]
            self.failures[machine] = n + 1
            self.carry[machine] = hints
            log.exception(
                "step failed",
                extra=kv(worker=self.service, machine_id=machine, retry_s=delay),
            )
            wake_at = self.runner.clock() + delay
        self.set_due(machine, wake_at)
        return True

    def set_due(self, machine: str, at: float | None) -> None:
        """Keep the machine's timer in WORK_DUE (written only when it changes)."""
        if at is None:
            if self.due.pop(machine, None) is not None:
                self.runner.redis.zrem(self.due_key, machine)
        elif self.due.get(machine) != at:
            self.due[machine] = at
            self.runner.redis.zadd(self.due_key, {machine: at})
