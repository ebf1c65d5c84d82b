"""The agents' gateway (services/gateway_service.py), in-process on port 0 against a private
real Redis, with websockets clients playing the machines' agents: the token gate, revoke,
kiosk frames relayed both ways, isolation between machines, vends, floods, replacement."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from constants import keys
from constants.orders import OperatorKind, OrderField
from constants.states import State
from cores import agent_protocol
from cores.agent_protocol import FROM_GATEWAY, Kind, Message
from cores.broker import Broker
from cores.fleet import Fleet
from cores.machine import Effects, Transition
from cores.models import Snapshot
from cores.work import WorkHints, shard_of, work_key
from services import gateway_service
from services.gateway_service import (
    CLOSE_REPLACED,
    Gateway,
    VendVerdict,
    judge_vend_result,
    read_for_agent,
    record_vend_result,
)
from tests.kiosk_helpers import MENU, WAIT_S, http_request, run_async
from tests.machine_helpers import eventually, machine_state

ACTOR = "cli:ana"
#: The readers' BLOCK in tests: a stop is seen this quickly.
TEST_BLOCK_MS = 200


# --- fixtures and helpers --------------------------------------------------------------------


@contextlib.contextmanager
def serving(client: redis.Redis, **options: float) -> Iterator[Gateway]:
    """A Gateway on 127.0.0.1:0 in a thread of its own, stopped (and checked) on exit."""
    gateway = Gateway(client, block_ms=TEST_BLOCK_MS, **options)  # type: ignore[arg-type]
    ready = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(gateway.serve("127.0.0.1", 0, ready=lambda port: ready.set()))
        except BaseException as exc:  # surfaced below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="gateway", daemon=True)
    thread.start()
    assert ready.wait(WAIT_S * 2), "gateway did not start"
    assert not failure, failure
    try:
        yield gateway
    finally:
        gateway.request_stop()
        thread.join(WAIT_S * 2)
        assert not thread.is_alive(), "gateway did not stop"
        assert not failure, failure


@pytest.fixture
def gateway(real_redis: redis.Redis) -> Iterator[Gateway]:
    with serving(real_redis) as running:
        yield running


@pytest.fixture
def fleet(real_redis: redis.Redis) -> Fleet:
    return Fleet(real_redis)


@pytest.fixture
def tokens(fleet: Fleet) -> dict[str, str]:
    """Two registered machines, vm-a and vm-b, and their tokens."""
    return {m: fleet.add(m, ACTOR) for m in ("vm-a", "vm-b")}


@pytest.fixture
def machines(real_redis: redis.Redis, tokens: dict[str, str]) -> dict[str, Broker]:
    """vm-a and vm-b at IDLE with MENU, each a Broker with hints (as the backend's are)."""
    out = {}
    for m in tokens:
        broker = Broker(real_redis, m, hints=WorkHints(real_redis))
        broker.ensure_ready(MENU)
        out[m] = broker
    return out


def url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}/agent"


def headers(machine_id: str | None, token: str | None) -> dict[str, str]:
    found = {}
    if machine_id is not None:
        found["X-Machine-Id"] = machine_id
    if token is not None:
        found["Authorization"] = f"Bearer {token}"
    return found


@contextlib.contextmanager
def agent(gateway: Gateway, machine_id: str, token: str) -> Iterator[ClientConnection]:
    """An agent connected as `machine_id`."""
    with connect(
        url(gateway),
        additional_headers=headers(machine_id, token),
        open_timeout=WAIT_S,
        close_timeout=1,
    ) as ws:
        yield ws


def recv(ws: ClientConnection) -> Message:
    try:
        text = ws.recv(timeout=WAIT_S)
    except TimeoutError:
        raise AssertionError(f"nothing from the gateway within {WAIT_S} s") from None
    return agent_protocol.parse(text, FROM_GATEWAY)


def until(ws: ClientConnection, match: Callable[[Message], bool]) -> tuple[Message, list[Message]]:
    """Read until a message that `match`es; returns it and every message before it."""
    before: list[Message] = []
    while not match(message := recv(ws)):
        before.append(message)
    return message, before


def event(message: Message) -> str | None:
    """The kiosk event of a `frame` or `reply` message."""
    return json.loads(message.frame)["event"] if message.frame else None


def is_frame(name: str) -> Callable[[Message], bool]:
    return lambda m: m.kind is Kind.FRAME and event(m) == name


def is_reply(page: int) -> Callable[[Message], bool]:
    return lambda m: m.kind is Kind.REPLY and m.page == page


def page(ws: ClientConnection, number: int, frame: object) -> None:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    ws.send(agent_protocol.encode(Message(Kind.PAGE, page=number, frame=text)))


def error_code(message: Message) -> str:
    frame = json.loads(message.frame or "")
    assert frame["event"] == "ERROR", frame
    return frame["values"]["code"]


def dispensing(broker: Broker) -> str:
    """Drive the machine to DISPENSING an order of cola, as the workers would (known durable:
    on one Redis the DISPENSE worker marks it in the move itself)."""
    broker.show_menu()
    order_id = broker.place_order("cola")
    assert broker.transition(Transition(State.PAYMENT_SUCCESS, (State.MENU_CLICKED,), order_id, {}))
    durable = Effects(order_fields={OrderField.VEND_DURABLE_AT: time.time()})
    assert broker.transition(
        Transition(State.DISPENSING, (State.PAYMENT_SUCCESS,), order_id, {}, durable)
    )
    return order_id


def vend_hash(client: redis.Redis, machine_id: str) -> dict:
    return client.hgetall(keys.key(keys.VEND, machine_id))


def everything(broker: Broker) -> dict:
    """All a machine's data an agent must never reach: machine_state, its vend hash, seen."""
    r = broker.redis
    return {
        **machine_state(broker),
        "vend": vend_hash(r, broker.machine_id),
        "orders": sorted(r.scan_iter(keys.key(keys.ORDER, broker.machine_id, order_id="*"))),
        "seen": r.hget(keys.FLEET_SEEN, broker.machine_id),
    }


# --- the gate --------------------------------------------------------------------------------


def test_a_missing_wrong_or_revoked_token_is_refused_with_401_and_never_logged(
    gateway, machines, tokens, fleet, caplog
):
    """Every refused handshake (no headers, no token, a wrong token, another machine's
    token, a revoked machine's token, an unknown machine) gets the same 401 and no
    connection; no log line holds a presented token. /healthz answers 200, other paths 404."""
    caplog.set_level(logging.DEBUG)
    fleet.add("vm-c", ACTOR)
    revoked_token = tokens["vm-b"]
    fleet.revoke("vm-b", ACTOR)
    wrong = "w" * 43
    cases = [
        headers(None, None),
        headers("vm-a", None),
        headers(None, tokens["vm-a"]),
        headers("vm-a", wrong),
        headers("vm-c", tokens["vm-a"]),
        headers("vm-b", revoked_token),
        headers("vm-zz", tokens["vm-a"]),
        {"X-Machine-Id": "vm-a", "Authorization": f"Basic {tokens['vm-a']}"},
    ]
    bodies = set()
    for case in cases:
        with (
            pytest.raises(InvalidStatus) as refused,
            connect(url(gateway), additional_headers=case, open_timeout=WAIT_S),
        ):
            pass
        assert refused.value.response.status_code == 401, case
        bodies.add(bytes(refused.value.response.body))
    assert len(bodies) == 1
    assert gateway.links == {}
    # The agents' side (websockets.client) logs its own request; the gateway's side never.
    served = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any(r.name == "websockets.gateway" for r in served)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in served)
    for token in (wrong, revoked_token, tokens["vm-a"]):
        assert token not in logged
    assert http_request(gateway.port, "/healthz")[0] == 200
    assert http_request(gateway.port, "/ws")[0] == 404
    with agent(gateway, "vm-a", tokens["vm-a"]) as ws:  # the right token is let in
        assert is_frame("IDLE")(recv(ws))


def test_revoking_a_connected_machine_closes_its_connection_with_4003(
    gateway, machines, tokens, fleet
):
    """`fleet revoke` closes the machine's live connection at once (CLOSE_REVOKED), leaves
    other machines connected, and the token is refused from then on."""
    with agent(gateway, "vm-a", tokens["vm-a"]) as a, agent(gateway, "vm-b", tokens["vm-b"]) as b:
        recv(a)
        recv(b)
        started = time.monotonic()
        fleet.revoke("vm-a", ACTOR)
        with pytest.raises(ConnectionClosed) as closed:
            recv(a)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
        assert time.monotonic() - started < WAIT_S
        page(b, 1, {"event": "SHOW_MENU", "values": {}})
        until(b, is_frame("SHOW_MENU"))
    with pytest.raises(InvalidStatus) as refused, agent(gateway, "vm-a", tokens["vm-a"]):
        pass
    assert refused.value.response.status_code == 401


# --- kiosk frames ----------------------------------------------------------------------------


def test_a_page_show_menu_moves_only_its_machine_and_comes_back_as_a_frame(
    gateway, machines, tokens
):
    """An agent's page frame SHOW_MENU opens its own machine's menu, not another's, and the
    agent gets the SHOW_MENU screen back as a `frame` for every page."""
    before_b = everything(machines["vm-b"])
    with agent(gateway, "vm-a", tokens["vm-a"]) as ws:
        assert is_frame("IDLE")(recv(ws))
        page(ws, 3, {"event": "SHOW_MENU", "values": {}})
        shown, _ = until(ws, is_frame("SHOW_MENU"))
    assert [d["id"] for d in json.loads(shown.frame or "")["values"]] == ["tea", "cola"]
    assert machines["vm-a"].snapshot().state == State.SHOW_MENU
    assert everything(machines["vm-b"]) == before_b


def test_an_order_for_an_unknown_drink_is_refused_to_its_page_and_changes_nothing(
    gateway, machines, tokens
):
    """ORDER of a drink not on the menu gets a `reply` ERROR unknown_drink for that page
    (the one-machine server's frame) and leaves the machine as it was."""
    a = machines["vm-a"]
    with agent(gateway, "vm-a", tokens["vm-a"]) as ws:
        recv(ws)
        page(ws, 1, {"event": "SHOW_MENU", "values": {}})
        until(ws, is_frame("SHOW_MENU"))
        before = everything(a)
        page(ws, 7, {"event": "ORDER", "values": {"id": "beer", "total": 1}})
        reply, _ = until(ws, is_reply(7))
        assert error_code(reply) == "unknown_drink"
        page(ws, 8, "not json")
        assert error_code(until(ws, is_reply(8))[0]) == "malformed_frame"
    assert everything(a) == before


def test_no_frame_of_an_agent_reaches_another_machine(gateway, machines, tokens, real_redis):
    """Agent A sends frames naming machine B's ids everywhere (page values, hello, a
    vend_result for B's dispensing order, gateway-only kinds, junk): B's state, orders,
    stock, sales, vend hash and seen record stay exactly as they were, and A keeps working."""
    b_order = dispensing(machines["vm-b"])
    before_b = everything(machines["vm-b"])
    attacks = [
        {"kind": "hello", "version": "vm-b"},
        {"kind": "vend_result", "order_id": b_order, "result": "vended"},
        {"kind": "vend_result", "order_id": b_order, "result": "failed"},
        {"kind": "vend", "order_id": b_order, "drink_id": "cola"},
        {"kind": "frame", "frame": '{"event":"DISPENSED","values":{}}'},
        {"kind": "page", "page": 1, "frame": '{"event":"CANCEL","values":{}}', "m": "vm-b"},
        {"kind": "page", "page": 2, "machine_id": "vm-b", "frame": "x"},
        {"kind": "vend_result", "order_id": b_order, "result": "vended", "machine_id": "vm-b"},
        [1, 2, 3],
        "vm-b",
    ]
    with agent(gateway, "vm-a", tokens["vm-a"]) as ws:
        recv(ws)
        for attack in attacks:
            ws.send(json.dumps(attack))
        ws.send(b"\x00binary vm-b")
        for number, frame in enumerate(
            [
                {"event": "ORDER", "values": {"id": b_order, "total": 1}},
                {"event": "CANCEL", "values": {"order_id": b_order}},
                {"event": "SHOW_MENU", "values": {"machine_id": "vm-b"}},
                {"event": "PAYMENT_SUCCESS", "values": {"order_id": b_order}},
            ],
            start=10,
        ):
            page(ws, number, frame)
        # Frames are worked in order: the reply to the last one means all were handled.
        page(ws, 99, {"event": "SHOW_MENU", "values": {}})
        until(ws, is_frame("SHOW_MENU"))
    assert everything(machines["vm-b"]) == before_b
    assert vend_hash(real_redis, "vm-a") == {}
    assert machines["vm-a"].snapshot().state == State.SHOW_MENU


# --- vends -----------------------------------------------------------------------------------


def test_a_connected_agent_is_asked_to_vend_and_its_result_is_recorded_with_a_hint(
    gateway, machines, tokens, real_redis
):
    """When its machine goes DISPENSING the agent gets `vend` (order and drink); its
    `vend_result` lands in vm:{A}:vend and wakes A's shard; a second result for the same
    order changes nothing."""
    a = machines["vm-a"]
    with agent(gateway, "vm-a", tokens["vm-a"]) as ws:
        recv(ws)
        order_id = dispensing(a)
        vend, _ = until(ws, lambda m: m.kind is Kind.VEND)
        assert (vend.order_id, vend.drink_id) == (order_id, "cola")
        shard = work_key(shard_of("vm-a"))
        last = real_redis.xrevrange(shard, count=1)[0][0]
        ws.send(
            agent_protocol.encode(Message(Kind.VEND_RESULT, order_id=order_id, result="vended"))
        )
        recorded = eventually(lambda: vend_hash(real_redis, "vm-a"), what="the vend result")
        assert json.loads(recorded[order_id])["result"] == "vended"
        hints = real_redis.xrange(shard, min="(" + last)
        assert {"m": "vm-a"} in [fields for _, fields in hints]
        ws.send(
            agent_protocol.encode(Message(Kind.VEND_RESULT, order_id=order_id, result="failed"))
        )
        page(ws, 5, "barrier")
        until(ws, is_reply(5))
    assert vend_hash(real_redis, "vm-a") == recorded


def test_a_vend_result_that_could_not_be_recorded_is_asked_for_again(
    gateway, machines, tokens, real_redis, monkeypatch
):
    """Redis fails while the agent's result is being written: the gateway sends `vend` again
    on the same connection (the agent answers from its journal), and the second answer is
    recorded; the order is not left to run out its deadline."""
    real_record = gateway_service.record_vend_result
    failures = [redis.ConnectionError("redis went away")]

    def flaky(*args, **kwargs):
        if failures:
            raise failures.pop()
        return real_record(*args, **kwargs)

    monkeypatch.setattr(gateway_service, "record_vend_result", flaky)
    with agent(gateway, "vm-a", tokens["vm-a"]) as ws:
        recv(ws)
        order_id = dispensing(machines["vm-a"])
        result = agent_protocol.encode(
            Message(Kind.VEND_RESULT, order_id=order_id, result="vended")
        )
        until(ws, lambda m: m.kind is Kind.VEND)
        ws.send(result)
        again, _ = until(ws, lambda m: m.kind is Kind.VEND)
        assert again.order_id == order_id and not failures
        ws.send(result)
        recorded = eventually(lambda: vend_hash(real_redis, "vm-a"), what="the vend result")
        assert json.loads(recorded[order_id])["result"] == "vended"


def test_an_agent_that_connects_during_a_vend_is_asked_on_each_connection(
    gateway, machines, tokens
):
    """A vend requested while the agent was away is sent when it connects, after the
    snapshot, and again on its next connection while no result is recorded."""
    order_id = dispensing(machines["vm-a"])
    for _ in range(2):
        with agent(gateway, "vm-a", tokens["vm-a"]) as ws:
            assert is_frame("DISPENSING")(recv(ws))
            vend, _ = until(ws, lambda m: m.kind is Kind.VEND)
            assert (vend.order_id, vend.drink_id) == (order_id, "cola")


def test_no_vend_is_asked_again_once_a_result_is_recorded_or_on_the_same_connection(
    machines, real_redis
):
    """read_for_agent: `vend` for the DISPENSING order when no result is recorded and it was
    not asked on this connection; never once a result is in the vend hash."""
    a = machines["vm-a"]
    order_id = dispensing(a)
    first = read_for_agent(a, None, None)
    assert first.vend_order == order_id
    assert read_for_agent(a, first.cursor, order_id).vend_order is None
    real_redis.hset(keys.key(keys.VEND, "vm-a"), order_id, json.dumps({"result": "vended"}))
    assert read_for_agent(a, None, None).vend_order is None
    assert read_for_agent(a, first.cursor, None).vend_order is None


def test_a_vend_result_counts_only_for_the_dispensing_order_and_once():
    """judge_vend_result: another order, another state, or a repeat are not recorded; one for
    an order waiting in the operator's queue as a vend outcome unknown is LATE (noted)."""
    dispensing_x = Snapshot(State.DISPENSING, "x", 5, 0.0, {})
    assert judge_vend_result(dispensing_x, "x", False) is VendVerdict.RECORDED
    assert judge_vend_result(dispensing_x, "x", True) is VendVerdict.REPEAT
    assert judge_vend_result(dispensing_x, "y", False) is VendVerdict.NOT_DISPENSING
    dispensed = Snapshot(State.DISPENSED, "x", 6, 0.0, {})
    assert judge_vend_result(dispensed, "x", False) is VendVerdict.NOT_DISPENSING
    failed = Snapshot(State.DISPENSE_FAILED, "x", 6, 0.0, {})
    assert judge_vend_result(failed, "x", False, awaits_operator=True) is VendVerdict.LATE
    assert judge_vend_result(failed, "x", True, awaits_operator=True) is VendVerdict.REPEAT


def test_a_result_after_the_deadline_is_noted_on_the_operators_entry_and_moves_nothing(
    machines, real_redis
):
    """The order went to the operator as a vend outcome unknown (no answer by the deadline);
    the agent's answer that comes later is written on that entry (journal and detail) for
    the person who resolves it: no sale, no stock, no state changes."""
    a = machines["vm-a"]
    order_id = dispensing(a)
    unknown = {"kind": OperatorKind.VEND_UNKNOWN, "amount": 7000, "drink": "cola"}
    assert a.transition(
        Transition(
            State.DISPENSE_FAILED,
            (State.DISPENSING,),
            order_id,
            {},
            Effects(operator={**unknown, "detail": "no answer from the machine"}),
        )
    )
    before = {"state": a.snapshot(), "sales": a.sales(), "stock": a.stock()}
    hints = WorkHints(real_redis)
    assert record_vend_result(a, hints, order_id, "vended") is VendVerdict.LATE
    entry = a.operator_queue()[order_id]
    assert entry["kind"] == OperatorKind.VEND_UNKNOWN and entry["journal"] == "vended"
    assert entry["detail"].startswith("no answer from the machine; the machine's journal says")
    assert {"state": a.snapshot(), "sales": a.sales(), "stock": a.stock()} == before
    assert record_vend_result(a, hints, order_id, "failed") is VendVerdict.REPEAT
    assert a.operator_queue()[order_id]["journal"] == "vended"


# --- flood and replacement -------------------------------------------------------------------


def test_a_flood_from_one_agent_does_not_hold_up_another(gateway, machines, tokens):
    """Agent A sends thousands of page frames while agent B sends one SHOW_MENU: B's menu
    comes back well within a couple of seconds, and A's excess gets rate_limited replies."""
    flood = 3000

    async def main() -> tuple[float, int]:
        limited = 0
        flooding = asyncio.Event()
        options = {"open_timeout": WAIT_S, "close_timeout": 1}
        async with (
            connect_async(
                url(gateway), additional_headers=headers("vm-a", tokens["vm-a"]), **options
            ) as a,
            connect_async(
                url(gateway), additional_headers=headers("vm-b", tokens["vm-b"]), **options
            ) as b,
        ):
            await a.recv()
            await b.recv()

            async def send_flood() -> None:
                frame = json.dumps({"event": "SHOW_MENU", "values": {}})
                for n in range(1, flood + 1):
                    await a.send(agent_protocol.encode(Message(Kind.PAGE, page=n, frame=frame)))

            async def count_limited() -> None:
                nonlocal limited
                async for text in a:
                    message = agent_protocol.parse(text, FROM_GATEWAY)
                    if message.kind is not Kind.REPLY:
                        continue
                    if error_code(message) == "rate_limited":
                        limited += 1
                        flooding.set()
                    if message.page == flood + 1:  # the last frame: every one was handled
                        return

            sender = asyncio.create_task(send_flood())
            counter = asyncio.create_task(count_limited())
            await asyncio.wait_for(flooding.wait(), WAIT_S)
            started = time.monotonic()
            await b.send(
                agent_protocol.encode(
                    Message(Kind.PAGE, page=1, frame='{"event":"SHOW_MENU","values":{}}')
                )
            )
            async with asyncio.timeout(WAIT_S):
                while True:
                    message = agent_protocol.parse(await b.recv(), FROM_GATEWAY)
                    if is_frame("SHOW_MENU")(message):
                        break
            took = time.monotonic() - started
            await asyncio.wait_for(sender, WAIT_S * 2)
            await a.send(agent_protocol.encode(Message(Kind.PAGE, page=flood + 1, frame="x")))
            await asyncio.wait_for(counter, WAIT_S * 2)
            return took, limited

    took, limited = run_async(main)
    assert took < 2.0, f"B's menu took {took:.2f} s during A's flood"
    assert limited > 0
    assert machines["vm-b"].snapshot().state == State.SHOW_MENU


def test_a_second_connection_for_a_machine_replaces_the_first(gateway, machines, tokens):
    """A new authenticated connection for a machine closes the older one (4000, replaced);
    the new one is the machine's link from then on."""
    with agent(gateway, "vm-a", tokens["vm-a"]) as old:
        recv(old)
        with agent(gateway, "vm-a", tokens["vm-a"]) as new:
            recv(new)
            with pytest.raises(ConnectionClosed) as closed:
                recv(old)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CLOSE_REPLACED
            page(new, 1, {"event": "SHOW_MENU", "values": {}})
            until(new, is_frame("SHOW_MENU"))
            assert gateway.links["vm-a"].ws is not None
            assert len(gateway.links) == 1


def test_a_change_whose_hint_was_lost_reaches_the_agent_at_the_next_resync(
    real_redis, machines, tokens
):
    """A change made without a hint (as after a crash between the MULTI and the XADD) still
    reaches the agent, at the next resync; the resync also refreshes the machine's seen."""
    with serving(real_redis, resync_s=0.3) as gateway, agent(gateway, "vm-a", tokens["vm-a"]) as ws:
        recv(ws)
        real_redis.hdel(keys.FLEET_SEEN, "vm-a")
        Broker(real_redis, "vm-a").show_menu()  # no hints
        until(ws, is_frame("SHOW_MENU"))
        eventually(lambda: real_redis.hget(keys.FLEET_SEEN, "vm-a"), what="seen refreshed")
