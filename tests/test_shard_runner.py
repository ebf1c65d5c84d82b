"""Fleet mode's shared workers (services/shard_runner.py): the share-out rules as plain
functions, then ShardRunners of one service on a private real Redis (consumer groups are
tested on the real server: fakeredis's XREADGROUP BLOCK is broken, shared/TESTING.md) with a
recording worker in place of a service's."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest
import redis

from constants import keys
from constants.tunables import LEASE_RENEW_S, LEASE_TTL_S, WORK_SHARDS
from cores.broker import Broker, Snapshot
from cores.work import WorkHints, due_key, fleet_heartbeats, lease_key, shard_of, work_key
from services.shard_runner import (
    ShardRunner,
    fair_share,
    hinted_machines,
    shards_to_release,
    shards_to_try,
)
from services.worker import Worker
from tests.machine_helpers import eventually

SERVICE = "TESTWORK"
#: Test runners block on Redis this long at most, so that a stop is seen at once.
BLOCK_S = 0.05

# --- the share-out rules --------------------------------------------------------------------------


def test_each_process_holds_at_most_its_fair_share_of_the_shards():
    """8 shards: one process holds all, two 4 each, three 3 (3+3+2), nine or more 1 each."""
    assert fair_share(8, 1) == 8
    assert fair_share(8, 2) == 4
    assert fair_share(8, 3) == 3
    assert fair_share(8, 9) == 1
    assert fair_share(8, 0) == 8  # before its own entry is counted


def test_a_process_above_its_share_releases_its_highest_shards():
    """A process holding 8 when a second arrives gives 4 up; one at its share gives none."""
    assert shards_to_release(range(8), 4) == [7, 6, 5, 4]
    assert shards_to_release({0, 5}, 4) == []


def test_a_process_below_its_share_tries_the_others_from_its_own_start():
    """Candidates start at the process's own offset and wrap; none at its share."""
    assert shards_to_try({1}, 4, 2, start=2) == [2, 3, 0]
    assert shards_to_try({1, 2}, 4, 2, start=0) == []


def test_hints_are_grouped_by_machine_and_other_shards_machines_are_dropped():
    """Each machine is stepped once per batch with its commands in order; a hint naming a
    machine of another shard is never stepped here (its shard's owner steps it)."""
    a, b = machines_of_shard(0, 2)
    stranger = machines_of_shard(1, 1)[0]
    entries = [
        ("1-0", {"m": a}),
        ("2-0", {"m": b, "command": "CANCEL", "order_id": "o-1"}),
        ("3-0", {"m": stranger}),
        ("4-0", {"m": a, "command": "CHECK", "order_id": "o-2"}),
        ("5-0", {}),
    ]
    assert hinted_machines(entries, 0, WORK_SHARDS) == {
        a: [("", ""), ("CHECK", "o-2")],
        b: [("CANCEL", "o-1")],
    }


# --- a recording worker ---------------------------------------------------------------------------


def machines_of_shard(shard: int, n: int) -> list[str]:
    out = []
    i = 0
    while len(out) < n:
        machine = f"vm-{i}"
        if shard_of(machine) == shard:
            out.append(machine)
        i += 1
    return out


class Steps:
    """What every recording worker saw: steps per machine and runner, commands, overlaps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by: dict[str, Counter[str]] = defaultdict(Counter)
        self.commands: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.active: Counter[str] = Counter()
        self.overlaps: list[str] = []
        #: machine -> the wake time its next step returns (a timer), once.
        self.timers: dict[str, float] = {}
        #: machine -> how many more steps raise.
        self.failing: Counter[str] = Counter()
        #: Each step takes this long: the window in which an overlap would show.
        self.step_s = 0.0
        #: Steps that a stop does not cut short (a call to Midtrans in hand).
        self.uninterruptible = False

    def total(self, machine: str) -> int:
        with self.lock:
            return sum(self.by[machine].values())


class Recorder(Worker):
    service = SERVICE

    def __init__(self, broker: Broker, steps: Steps, runner: str) -> None:
        super().__init__(broker)
        self.record = steps
        self.runner = runner

    def step(self, snap: Snapshot, entries: list) -> float | None:
        machine = self.broker.machine_id
        with self.record.lock:
            self.record.active[machine] += 1
            if self.record.active[machine] > 1:
                self.record.overlaps.append(machine)
        try:
            if self.record.step_s:  # work in hand, cut short by a stop unless uninterruptible
                pause = threading.Event() if self.record.uninterruptible else self.stopping
                pause.wait(self.record.step_s)
            with self.record.lock:
                if self.record.failing[machine] > 0:
                    self.record.failing[machine] -= 1
                    raise RuntimeError("the step failed")
                self.record.by[machine][self.runner] += 1
                for stream, fields in entries:
                    assert stream == self.broker.commands_key
                    self.record.commands[machine].append((fields["command"], fields["order_id"]))
                return self.record.timers.pop(machine, None)
        finally:
            with self.record.lock:
                self.record.active[machine] -= 1


@pytest.fixture
def steps() -> Steps:
    return Steps()


@pytest.fixture
def runners(real_redis: redis.Redis, steps: Steps) -> Iterator[dict]:
    """Makes ShardRunners of SERVICE on the real Redis; stops every one left running."""
    made: dict[str, ShardRunner] = {}

    def make(name: str, renew_s: float = 0.2, start: bool = True) -> ShardRunner:
        runner = ShardRunner(
            SERVICE,
            real_redis,
            real_redis,
            lambda broker: Recorder(broker, steps, name),
            consumer=name,
            hints=WorkHints(real_redis),
        )
        runner.block_s = BLOCK_S
        runner.renew_s = renew_s
        made[name] = runner
        return runner.start() if start else runner

    yield {"make": make, "all": made}
    for runner in made.values():
        if runner._thread is not None and runner._thread.is_alive():
            runner.stop()


def register(client: redis.Redis, *machines: str) -> None:
    """Machines in the fleet's registry (as Fleet.add writes them, without a token hash)."""
    for machine in machines:
        client.hset(keys.FLEET_MACHINES, machine, '{"added_at": 0, "revoked_at": null}')


def all_shards_held(*runners: ShardRunner) -> bool:
    owned = [r.owned() for r in runners]
    union = set().union(*owned)
    return union == set(range(WORK_SHARDS)) and sum(len(o) for o in owned) == WORK_SHARDS


# --- runners on a real Redis -----------------------------------------------------------------------


def test_two_processes_of_a_service_split_the_eight_shards(real_redis, runners):
    """The first process takes every shard; a second one gets half of them (the first
    releases its share's excess), and every lease names its holder."""
    a = runners["make"]("a")
    eventually(lambda: len(a.owned()) == WORK_SHARDS, what="a to hold all shards")
    b = runners["make"]("b")
    eventually(
        lambda: len(a.owned()) == 4 and len(b.owned()) == 4 and all_shards_held(a, b),
        what="the shards split 4/4",
    )
    for runner in (a, b):
        for shard in runner.owned():
            assert real_redis.get(lease_key(shard, SERVICE)) == runner.consumer


@pytest.mark.slow
def test_a_killed_process_s_shards_are_taken_over_within_five_seconds(real_redis, runners, steps):
    """A process stopped without a word (its leases left to expire, as after kill -9) loses
    its shards to the other within LEASE_TTL_S + LEASE_RENEW_S (< 5 s, with the real renewal
    period), and a hint for a machine of a taken-over shard is then worked."""
    a = runners["make"]("a", renew_s=LEASE_RENEW_S)
    b = runners["make"]("b", renew_s=LEASE_RENEW_S)
    eventually(lambda: len(a.owned()) == 4 and len(b.owned()) == 4, what="the shards split")
    lost = sorted(a.owned())
    machine = machines_of_shard(lost[0], 1)[0]
    a.stop(release=False)
    assert real_redis.get(lease_key(lost[0], SERVICE)) == "a"  # left behind, as by a kill
    killed_at = time.monotonic()
    eventually(lambda: len(b.owned()) == WORK_SHARDS, timeout_s=8, what="b to take every shard")
    eventually(lambda: len(b.working()) == WORK_SHARDS, what="b to work every shard")
    assert time.monotonic() - killed_at < LEASE_TTL_S + LEASE_RENEW_S + 1
    WorkHints(real_redis).hint(machine, "CHECK", "o-7")
    eventually(lambda: ("CHECK", "o-7") in steps.commands[machine], what="the hint worked")
    assert steps.by[machine]["b"] >= 1


def test_each_machine_is_stepped_by_one_process_at_a_time_through_share_outs(
    real_redis, runners, steps
):
    """Hints keep coming while a second process arrives (the shards are shared out) and the
    first then leaves: no machine is ever in two steps at once, and every hint is worked."""
    machines = [m for shard in range(WORK_SHARDS) for m in machines_of_shard(shard, 2)]
    register(real_redis, *machines)
    steps.step_s = 0.005
    hints = WorkHints(real_redis)
    a = runners["make"]("a")
    eventually(lambda: len(a.working()) == WORK_SHARDS, what="a to work all shards")
    b = None
    for n in range(300):
        hints.hint(machines[n % len(machines)], "CHECK", f"o-{n}")
        if n == 50:
            b = runners["make"]("b")
        if n == 200:
            assert b is not None
            eventually(lambda: len(a.owned()) == 4, what="the shards shared out")
            a.stop()  # a clean stop: it gives its leases up at once
        time.sleep(0.002)  # a customer's pace, not a synchronisation
    assert b is not None
    eventually(lambda: len(b.owned()) == WORK_SHARDS, what="b to hold all shards")
    for n in range(300):
        machine = machines[n % len(machines)]
        eventually(
            lambda m=machine, n=n: ("CHECK", f"o-{n}") in steps.commands[m],
            what=f"hint o-{n} worked",
        )
    assert steps.overlaps == []
    assert {r for m in machines for r in steps.by[m]} == {"a", "b"}


def test_a_process_that_loses_a_lease_stops_working_that_shard_at_once(real_redis, runners, steps):
    """Another process holds shard 3's lease now (this one's renewal is refused): this
    process's thread for the shard ends, it does not take the shard back while the lease
    stands, and a hint for a machine of the shard is not stepped by it."""
    machine = machines_of_shard(3, 1)[0]
    a = runners["make"]("a")
    eventually(lambda: len(a.working()) == WORK_SHARDS, what="a to work all shards")
    work = a.held[3]
    real_redis.set(lease_key(3, SERVICE), "intruder", px=60_000)
    eventually(lambda: not work.alive() and 3 not in a.held, what="shard 3 dropped")
    WorkHints(real_redis).hint(machine, "CHECK", "o-1")
    ticks = a.ticks
    eventually(lambda: a.ticks >= ticks + 3, what="three more lease rounds")
    assert 3 not in a.owned()
    assert steps.commands[machine] == []
    assert real_redis.get(lease_key(3, SERVICE)) == "intruder"


def test_a_lease_lost_mid_step_is_not_taken_back_before_the_step_in_hand_ends(
    real_redis, runners, steps
):
    """Shard 3's lease expires (Redis lost it) while a step of one of its machines is in hand
    and cannot be cut short: the process takes the shard again only once that step has
    ended, so the machine is never in two steps at once, and the shard is worked again."""
    machine = machines_of_shard(3, 1)[0]
    register(real_redis, machine)
    a = runners["make"]("a")
    eventually(lambda: len(a.working()) == WORK_SHARDS, what="a to work all shards")
    old = a.held[3]
    steps.step_s, steps.uninterruptible = 1.5, True
    WorkHints(real_redis).hint(machine, "CHECK", "o-1")
    eventually(lambda: steps.active[machine] == 1, what="the step in hand")
    real_redis.delete(lease_key(3, SERVICE))  # as if it had expired
    eventually(lambda: old.stop.is_set(), what="the lease loss noticed")
    assert a.held.get(3) is old and old.alive()  # not taken again meanwhile
    steps.step_s = 0.0
    eventually(lambda: 3 in a.held and a.held[3] is not old, what="shard 3 taken again")
    eventually(lambda: steps.total(machine) >= 2, what="the machine worked again")
    assert steps.overlaps == []


def test_a_timer_returned_by_a_step_fires_and_is_kept_in_the_shard_s_due_set(
    real_redis, runners, steps
):
    """A step that asks to run again at T is stepped again at T without any hint, and T is
    in the shard's WORK_DUE zset meanwhile (a new owner picks it up from there)."""
    machine = machines_of_shard(3, 1)[0]
    at = time.time() + 0.5
    steps.timers[machine] = at
    register(real_redis, machine)
    runners["make"]("a")
    eventually(lambda: steps.total(machine) >= 1, what="the first step (take-over's sweep)")
    assert real_redis.zscore(due_key(3, SERVICE), machine) == pytest.approx(at)
    eventually(lambda: steps.total(machine) >= 2, what="the timer to fire")
    assert time.time() >= at
    eventually(lambda: real_redis.zscore(due_key(3, SERVICE), machine) is None, what="ZREM")


def test_a_sweep_works_a_registered_machine_whose_hint_was_never_written(
    real_redis, runners, steps
):
    """On take-over, and every SWEEP_EVERY_S, each registered machine of the shard (revoked
    ones too) is stepped from its state alone: a hint lost in a crash delays, never loses."""
    active, revoked = machines_of_shard(5, 2)
    register(real_redis, active)
    real_redis.hset(keys.FLEET_MACHINES, revoked, '{"added_at": 0, "revoked_at": 1}')
    runner = runners["make"]("a", start=False)
    runner.sweep_every_s = 0.3
    runner.start()
    eventually(lambda: steps.total(active) >= 1 and steps.total(revoked) >= 1, what="take-over")
    eventually(lambda: steps.total(active) >= 3, what="two more sweeps")
    assert real_redis.xlen(work_key(5)) == 0  # no hint was ever written


def test_a_failing_step_is_retried_with_backoff_and_the_shard_goes_on(real_redis, runners, steps):
    """A step that raises is logged and retried with its hints (ERROR_BACKOFF_S); the other
    machines of the shard are stepped meanwhile and the shard's thread lives on."""
    sick, well = machines_of_shard(2, 2)
    steps.failing[sick] = 2
    runner = runners["make"]("a")
    eventually(lambda: 2 in runner.working(), what="shard 2 taken over")
    hints = WorkHints(real_redis)
    hints.hint(sick, "CANCEL", "o-1")
    hints.hint(well, "CHECK", "o-2")
    eventually(lambda: steps.commands[well] == [("CHECK", "o-2")], what="the well machine")
    eventually(lambda: steps.commands[sick] == [("CANCEL", "o-1")], what="the retry with hints")
    assert runner.held[2].alive()
    assert real_redis.xpending(work_key(2), SERVICE)["pending"] == 0


def test_a_clean_stop_gives_the_leases_and_the_process_s_entry_up(real_redis, runners):
    """SIGTERM's path: the shards' threads end after the step in hand, then every lease is
    deleted and the process leaves the workers' zset, so another takes over at once."""
    a = runners["make"]("a")
    eventually(lambda: len(a.owned()) == WORK_SHARDS, what="a to hold all shards")
    a.stop()
    assert all(real_redis.get(lease_key(s, SERVICE)) is None for s in range(WORK_SHARDS))
    assert real_redis.zscore(keys.FLEET_WORKERS.format(service=SERVICE), "a") is None


def test_fleet_heartbeats_tell_when_a_process_of_each_service_was_last_alive(real_redis, runners):
    """Operators see the newest alive time of any process of a service (None: none)."""
    runners["make"]("a")
    key = keys.FLEET_WORKERS.format(service=SERVICE)
    eventually(lambda: real_redis.zscore(key, "a") is not None, what="a's entry")
    beats = fleet_heartbeats(real_redis, [SERVICE, "NOBODY"])
    assert beats["NOBODY"] is None
    assert beats[SERVICE] == pytest.approx(time.time(), abs=2)


def test_every_key_the_runner_writes_carries_one_hash_tag(real_redis, runners, steps):
    """Cluster-legal keys: the shards' keys carry `{shard-N}`, the workers' zset `{fleet}`."""
    machine = machines_of_shard(4, 1)[0]
    steps.timers[machine] = time.time() + 60
    register(real_redis, machine)
    runners["make"]("a")
    eventually(lambda: real_redis.exists(due_key(4, SERVICE)), what="the timer stored")
    for key in real_redis.scan_iter("*"):
        assert key.count("{") == 1 and key.count("}") == 1, key
        tag = key[key.index("{") + 1 : key.index("}")]
        assert tag in ("fleet", machine) or tag.startswith("shard-"), key
