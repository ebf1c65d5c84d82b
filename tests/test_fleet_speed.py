"""Fleet mode's cheap hints: a transition's hint carries its state, version and frame
(cores/work.py), so that a shared worker skips the hints of states its service does not act
on without reading the machine (services/shard_runner.py, `must_step`), and the gateway sends
the frame to the agent without reading the events stream (services/gateway_service.py,
`direct_frames`); both stay level-triggered, reading Redis whenever a hint does not say enough.
"""

from __future__ import annotations

import json
from typing import ClassVar

import redis

from constants.orders import Command
from constants.states import State
from cores.agent_protocol import Kind
from cores.broker import Broker, Snapshot
from cores.machine import Transition
from cores.work import Change, WorkHints, hint_change, shard_of, work_key
from services import gateway_service
from services.gateway_service import direct_frames
from services.shard_runner import ShardRunner, must_step
from services.worker import Worker
from tests.kiosk_helpers import MENU
from tests.machine_helpers import eventually
from tests.test_gateway import agent, is_frame, recv, serving
from tests.test_shard_runner import BLOCK_S, SERVICE, register

# --- the rules (pure) --------------------------------------------------------------------------

MENU_ONLY = frozenset({"SHOW_MENU"})
CANCEL_ONLY = frozenset({"CANCEL"})


def test_only_hints_of_other_states_and_other_commands_are_not_stepped():
    """A batch whose every hint names only states and commands the service does not act on
    is skipped; a hint naming one of its states or commands, one with neither a state nor a
    command, a service acting on any, or a failed step's retry always step."""
    other = {"m": "vm-1", "s": "MENU_CLICKED", "v": "3", "f": "{}"}
    cancel = {"m": "vm-1", "command": "CANCEL", "order_id": "o"}
    assert not must_step(MENU_ONLY, [other], commands=CANCEL_ONLY)
    assert not must_step(MENU_ONLY, [other, {**other, "s": "IDLE"}], commands=CANCEL_ONLY)
    assert not must_step(frozenset(), [other], commands=frozenset())
    assert not must_step(MENU_ONLY, [{**cancel, "command": "RECHECK"}], commands=CANCEL_ONLY)
    assert not must_step(MENU_ONLY, [{**other, "command": "RECHECK"}], commands=CANCEL_ONLY)
    assert must_step(MENU_ONLY, [other, {**other, "s": "SHOW_MENU"}], commands=CANCEL_ONLY)
    assert must_step(MENU_ONLY, [other, {"m": "vm-1"}], commands=CANCEL_ONLY)  # neither
    assert must_step(MENU_ONLY, [other, cancel], commands=CANCEL_ONLY)
    assert must_step(MENU_ONLY, [{**other, "command": "CANCEL"}], commands=CANCEL_ONLY)
    assert must_step(MENU_ONLY, [cancel])  # any command
    assert must_step(None, [other], commands=frozenset())
    assert must_step(MENU_ONLY, [other], carried=True, commands=frozenset())


def test_hinted_frames_are_sent_as_they_are_only_when_their_versions_follow_the_last_sent():
    """Consecutive versions after the last sent: their frames, in order, duplicates and older
    ones dropped. A gap, nothing sent yet, DISPENSING (its vend needs the order) or a frame
    too large to relay: None (read Redis)."""

    def change(version: int, state: str = "SHOW_MENU") -> Change:
        return Change(state, version, json.dumps({"event": state, "values": {"v": version}}))

    sent = direct_frames(4, [change(6), change(5), change(5), change(3)])
    assert sent is not None
    assert [v for v, _ in sent] == [5, 6]
    assert [json.loads(json.loads(t)["frame"])["values"]["v"] for _, t in sent] == [5, 6]
    assert direct_frames(4, [change(4), change(2)]) == []
    assert direct_frames(4, [change(6)]) is None
    assert direct_frames(None, [change(1)]) is None
    assert direct_frames(4, [change(5), change(6, "DISPENSING")]) is None
    huge = Change("SHOW_MENU", 5, json.dumps({"event": "SHOW_MENU", "values": "x" * 2**20}))
    assert direct_frames(4, [huge]) is None


# --- the broker's hints --------------------------------------------------------------------------


def hints_of(client: redis.Redis, machine: str) -> list[dict[str, str]]:
    return [fields for _, fields in client.xrange(work_key(shard_of(machine)))]


def test_a_transition_s_hint_carries_the_state_version_and_frame_of_its_events_entry(
    real_redis,
):
    """The hint of each transition holds what its events entry holds; a hint that follows no
    transition (a wake, a cancel request) holds no state, even right after one in the same
    thread, and one whose transition id is not the call's own is never borrowed."""
    broker = Broker(real_redis, "vm-1", hints=WorkHints(real_redis))
    broker.ensure_ready(MENU)
    broker.show_menu()
    order_id = broker.place_order("cola")
    events = [fields for _, fields in real_redis.xrange(broker.events_key)]
    changes = [hint_change(f) for f in hints_of(real_redis, "vm-1")]
    assert [(c.state, c.version, c.frame) for c in changes if c] == [
        (e["state"], int(e["version"]), e["frame"]) for e in events
    ]
    broker.request_cancel()  # asks the workers: no transition
    broker.wake(Command.CHECK, order_id)
    broker._queued.change = ("another call", Change("IDLE", 99, "{}"))
    broker.wake(Command.CHECK, order_id)
    late = hints_of(real_redis, "vm-1")[-3:]
    assert [h.get("command") for h in late] == ["CANCEL", "CHECK", "CHECK"]
    assert all("s" not in h and "f" not in h for h in late)


# --- the shard runner skips the states its service does not act on -----------------------------


class MenuScreen(Worker):
    """A worker that acts on SHOW_MENU and CHECK only, recording its steps."""

    service = SERVICE
    states: ClassVar[frozenset[State] | None] = frozenset({State.SHOW_MENU})
    commands: ClassVar[frozenset[Command] | None] = frozenset({Command.CHECK})
    seen: ClassVar[list[tuple[str, str]]] = []

    def step(self, snap: Snapshot, entries: list) -> float | None:
        self.seen.append((self.broker.machine_id, str(snap.state)))
        return None


def test_a_worker_is_not_stepped_for_a_state_it_does_not_act_on_but_is_for_the_rest(real_redis):
    """With the runner working: MENU_CLICKED's hint and a RECHECK are skipped without a step
    (or a read of the machine); SHOW_MENU's is stepped; a hint with neither a state nor a
    command, and a CHECK, are stepped whatever the state."""
    register(real_redis, "vm-1")
    broker = Broker(real_redis, "vm-1", hints=WorkHints(real_redis))
    broker.ensure_ready(MENU)
    MenuScreen.seen = []
    runner = ShardRunner(
        SERVICE,
        real_redis,
        real_redis,
        MenuScreen,
        consumer="p1",
        hints=WorkHints(real_redis),
    )
    runner.block_s = BLOCK_S
    runner.renew_s = 0.2
    runner.start()
    try:
        eventually(lambda: shard_of("vm-1") in runner.working() and MenuScreen.seen)
        swept = len(MenuScreen.seen)
        broker.show_menu()
        eventually(lambda: ("vm-1", "SHOW_MENU") in MenuScreen.seen[swept:])
        skipped = runner.skipped
        order_id = broker.place_order("cola")  # MENU_CLICKED: not this service's
        eventually(lambda: runner.skipped == skipped + 1, what="the hint skipped")
        assert ("vm-1", "MENU_CLICKED") not in MenuScreen.seen
        WorkHints(real_redis).hint("vm-1")  # no state: stepped
        eventually(lambda: ("vm-1", "MENU_CLICKED") in MenuScreen.seen)
        stepped = len(MenuScreen.seen)
        broker.wake(Command.RECHECK, order_id)  # not its command: skipped
        eventually(lambda: runner.skipped == skipped + 2, what="the RECHECK skipped")
        broker.wake(Command.CHECK, order_id)  # its command: stepped
        eventually(lambda: len(MenuScreen.seen) == stepped + 1)
        assert runner.skipped == skipped + 2
    finally:
        runner.stop()


# --- the gateway sends hinted frames without reading -------------------------------------------


def test_the_gateway_relays_a_hinted_frame_without_reading_and_reads_after_a_gap(
    real_redis, monkeypatch
):
    """After the snapshot, a transition's frame reaches the agent from its hint alone (no
    read of the events stream); a transition whose hint was lost leaves a gap that the next
    hint's pump fills by reading, every frame once and in order."""
    from cores.fleet import Fleet

    token = Fleet(real_redis).add("vm-1", "cli:ana")
    broker = Broker(real_redis, "vm-1", hints=WorkHints(real_redis))
    broker.ensure_ready(MENU)
    unhinted = Broker(real_redis, "vm-1")  # its transitions write no hint (a hint lost)
    reads: list[str | None] = []
    real_read = gateway_service.read_for_agent

    def counted(b, cursor, *rest):
        reads.append(cursor)
        return real_read(b, cursor, *rest)

    monkeypatch.setattr(gateway_service, "read_for_agent", counted)
    with serving(real_redis) as gateway, agent(gateway, "vm-1", token) as ws:
        assert is_frame("IDLE")(recv(ws))
        eventually(lambda: reads == [None], what="the first pump's read")
        broker.show_menu()
        assert is_frame("SHOW_MENU")(recv(ws))
        order_id = broker.place_order("cola")
        assert is_frame("MENU_CLICKED")(recv(ws))
        assert reads == [None], "a hinted frame was read from Redis"
        assert unhinted.transition(
            Transition(State.PAYMENT_FAILED, (State.MENU_CLICKED,), order_id, {})
        )
        broker.show_menu()  # PAYMENT_FAILED -> IDLE, hinted: a gap before it
        got = [recv(ws), recv(ws)]
        assert [m.kind for m in got] == [Kind.FRAME, Kind.FRAME]
        assert [json.loads(m.frame or "")["event"] for m in got] == ["PAYMENT_FAILED", "IDLE"]
        assert len(reads) == 2
        broker.show_menu()
        assert is_frame("SHOW_MENU")(recv(ws))
        assert len(reads) == 2
