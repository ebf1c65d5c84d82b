"""Every Redis access of a machine: state, orders, menu, stock, and the three streams.

A transition is a compare-and-set on (state, order_id), done with WATCH/MULTI so that the
rules stay in Python (cores/rules.py, cores/machine.py). In the same MULTI it writes the new
state with the frame of its screen, appends that frame to the events stream (which the
websocket server relays and the workers wake on), and the transition's effects (a sales
entry, the order's fields, stock, the operator's queue, the recheck set). A transition from a
state the machine is no longer in is refused, never applied.

Every write that depends on what it read goes through one helper, `_compare_and_set`: read
under WATCH, judge, write in MULTI; on a race, read and judge again. So a kiosk command that
loses a race is judged against the state that now holds, never refused for a stale one.

Durability (fleet mode on a Redis Cluster). A master acknowledges a write before its replica
has it, so a master that fails over may lose a step it acknowledged. The steps that move money
(cores.machine.must_be_durable: paid, DISPENSING, DISPENSED, a refund made or owed, a late
payment, a failed vend recorded before its refund; and the gateway's record of an agent's vend
result) are therefore acknowledged only once `Durability.replicas` replicas hold them:

    transition (WATCH/MULTI/EXEC, pooled connection)          master of {machine_id}'s slot
    then, on one connection to that master, one pipeline:
      EVALSHA mark: if this node holds the step (the state's tid, the sales entry, the vend
            record) SET vm:{id}:durable (short TTL), else 0
      WAIT replicas timeout_ms

WAIT waits for the writes of the connection that sends it, and a master replicates its writes
in order, so a replica that acknowledges the mark holds the step written before it. The mark
is written only where the step is found (a Lua script, one slot): after a failover between
the step and the mark, the new master does not hold the step and the mark says so, rather than
a replica vouching for a write it never had. Fewer acknowledgements than asked, a node that
does not hold the step, or a node that cannot be asked: `NotDurable` (a RedisError). The step
may stand or be lost; the caller re-checks from the state (workers are level-triggered: the
shard runner and Worker retry a failing step with backoff) and never acts as if it were
durable: the DISPENSE worker marks an order VEND_DURABLE_AT only after its DISPENSING is
known durable, and the gateway asks the agent to vend only once that mark is set.

`Durability.replicas` is 0 on one Redis (`main.py up`, every single-Redis test): no mark, no
WAIT, nothing changes. A cluster client (redis.cluster.RedisCluster) gets 1 by default: a
cluster for fleet mode has a replica per master.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.cluster
from redis.client import Pipeline
from redis.typing import (
    EncodableT,
    FieldT,
    StreamRangeResponse,
    XReadResponse,
)

from constants import keys
from constants.orders import Command, OrderField
from constants.states import ClientEvent, ErrorCode, Sale, State
from constants.tunables import COMMANDS_MAXLEN, DURABLE_WAIT_MS, EVENTS_MAXLEN, ORDER_KEEP_S
from cores import catalog, rules
from cores.logs import kv
from cores.machine import DURABLE_SALES, OUT_OF_SERVICE_FROM, Effects, Transition
from cores.models import Drink, Order, SlotState, Snapshot, slot_states, text
from cores.work import Change, WorkHints, fleet_heartbeats

log = logging.getLogger(__name__)

#: What a judge returns: the writes to queue in MULTI, or None to change nothing.
Writes = Callable[[Pipeline], None] | None
#: Stream entries as this module reads them: (entry id, fields).
Entries = list[tuple[str, dict[str, str]]]


class CommandRefused(Exception):
    """A kiosk or operator command that is not allowed now; nothing was changed."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotDurable(redis.RedisError):
    """A money-moving step applied on the master but not known to be held by a replica: it may
    stand, or be lost in a failover. Re-check from the state; never act as if it were durable."""


@dataclass(frozen=True)
class Durability:
    """How many replicas must hold a money-moving step before it is acknowledged (0: none,
    no WAIT sent), and how long to wait for them."""

    replicas: int = 0
    timeout_ms: int = DURABLE_WAIT_MS

    @classmethod
    def for_client(cls, client: Any) -> Durability:
        """1 replica on a Redis Cluster (fleet mode), none on one Redis."""
        return cls(1 if isinstance(client, redis.cluster.RedisCluster) else 0)


#: KEYS: the key the step wrote, the machine's DURABLE mark. ARGV: "hash" or "stream", the
#: mark's TTL (ms), then the fields and values the hash must hold, or the stream entry's id.
#: Writes the mark (and returns 1) only where the step is held.
_MARK_SCRIPT = """
local held = true
if ARGV[1] == 'stream' then
  held = #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) == 1
else
  for i = 3, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
      held = false
      break
    end
  end
end
if not held then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return 1
"""
_MARK_SHA = hashlib.sha1(_MARK_SCRIPT.encode()).hexdigest()
_MARK_TTL_MS = 60_000


class Broker:
    """The machine's state in Redis. Clients are passed in: fakeredis, or a real server."""

    def __init__(
        self,
        client: redis.Redis,
        machine_id: str,
        clock: Callable[[], float] = time.time,
        blocking: redis.Redis | None = None,
        hints: WorkHints | None = None,
        durability: Durability | None = None,
    ) -> None:
        """`blocking`: the client of the long blocking reads (`wait`, `read_events`), whose
        socket timeout outlasts their BLOCK; `client`'s stays short, so that a Redis that
        hangs fails a command quickly. Both may be the same client (tests).

        `hints`: fleet mode only: every change the workers may act on is followed by a hint on
        the machine's work shard (cores/work.py); one machine's workers read its own streams.

        `durability`: replicas a money-moving step waits for (see the module's docstring);
        None: `Durability.for_client(client)`."""
        self.redis = client
        self.durability = durability or Durability.for_client(client)
        self.blocking = blocking or client
        self.hints = hints
        #: The change the last transition of this thread queued (tid, Change), for its hint.
        self._queued = threading.local()
        self.machine_id = machine_id
        self.clock = clock
        self.state_key = self._key(keys.STATE)
        self.events_key = self._key(keys.EVENTS)
        self.commands_key = self._key(keys.COMMANDS)
        self.sales_key = self._key(keys.SALES)
        self.menu_key = self._key(keys.MENU)
        self.stock_key = self._key(keys.STOCK)
        self.operator_key = self._key(keys.OPERATOR)
        self.seq_key = self._key(keys.ORDER_SEQ)
        self.recheck_key = self._key(keys.RECHECK)
        self.durable_key = self._key(keys.DURABLE)
        self.slots_key = self._key(keys.SLOTS)

    def _key(self, template: str, **parts: str) -> str:
        return keys.key(template, self.machine_id, **parts)

    def order_key(self, order_id: str) -> str:
        return self._key(keys.ORDER, order_id=order_id)

    def heartbeat_key(self, service: str) -> str:
        return self._key(keys.HEARTBEAT, service=service)

    # --- reading ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot.parse(_texts(self.redis.hgetall(self.state_key)))

    def menu(self) -> list[Drink]:
        """Every drink, enabled or not, cheapest first."""
        return catalog.menu_from_hash(_texts(self.redis.hgetall(self.menu_key)))

    def stock(self) -> dict[str, int]:
        return {k: int(v) for k, v in _texts(self.redis.hgetall(self.stock_key)).items()}

    def slot_states(self) -> dict[int, SlotState]:
        """The dispenser slots' health (cores/slots.py); a slot not listed is healthy."""
        return slot_states(_texts(self.redis.hgetall(self.slots_key)))

    def menu_values(self) -> list[dict]:
        """The SHOW_MENU frame's values: the enabled drinks with their stock (0 for a drink
        none of whose slots can vend)."""
        return catalog.kiosk_menu(self.menu(), self.stock(), self.slot_states())

    def order(self, order_id: str | None) -> Order | None:
        if not order_id:
            return None
        return Order.parse(_texts(self.redis.hgetall(self.order_key(order_id))))

    def current_order(self) -> Order | None:
        return self.order(self.snapshot().order_id)

    def sales(self, count: int | None = None) -> list[dict]:
        return [{"id": i, **f} for i, f in _entries(self.redis.xrange(self.sales_key, count=count))]

    def operator_queue(self) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in _texts(self.redis.hgetall(self.operator_key)).items()}

    def heartbeats(self, services: Iterable[str]) -> dict[str, float | None]:
        """The last heartbeat (unix s) of each service; None when it has expired. A service
        with no heartbeat of this machine's own is looked up among fleet mode's shared
        processes, which beat for the whole fleet (cores.work.fleet_heartbeats)."""
        services = list(services)
        at = self.redis.mget([self.heartbeat_key(s) for s in services])
        own = {str(s): None if a is None else float(a) for s, a in zip(services, at, strict=True)}
        missing = [s for s, a in own.items() if a is None]
        if missing:
            own.update(fleet_heartbeats(self.redis, missing))
        return own

    def last_event_id(self) -> str:
        return self._last_id(self.events_key)

    def read_events(self, last_id: str, block_ms: int, count: int = 100) -> list[tuple[str, dict]]:
        """Entries of the events stream after `last_id`, blocking up to `block_ms` for one."""
        answer = self.blocking.xread({self.events_key: last_id}, count=count, block=block_ms)
        return [entry for _, entries in _streams(answer) for entry in entries]

    # --- set-up and operator ----------------------------------------------------------------

    def ensure_ready(self, drinks: Iterable[Mapping[str, Any]]) -> None:
        """At first start: load the menu and stock, and put the machine in IDLE. A menu
        written before slots gets them stored (catalog.menu_from_hash)."""
        drinks = list(drinks)
        if not self.redis.exists(self.menu_key):
            with self.redis.pipeline() as pipe:
                for n, d in enumerate(drinks, 1):
                    drink = Drink.parse({"slot": n, **d})
                    pipe.hset(self.menu_key, drink.id, json.dumps(drink.record()))
                    pipe.hsetnx(self.stock_key, drink.id, int(d.get("stock", 0)))
                pipe.execute()
            log.info("menu loaded", extra=kv(drinks=len(drinks)))
        raw = _texts(self.redis.hgetall(self.menu_key))
        unslotted = [k for k, v in raw.items() if "slot" not in json.loads(v)]
        if unslotted:
            fixed = {d.id: json.dumps(d.record()) for d in catalog.menu_from_hash(raw)}
            self.redis.hset(self.menu_key, mapping={k: fixed[k] for k in unslotted})
        if not self.redis.exists(self.state_key):
            self.transition(Transition(State.IDLE, (State.IDLE,), None, {}))

    def set_stock(self, drink_id: str, units: int) -> None:
        if not self.redis.hexists(self.menu_key, drink_id):
            raise CommandRefused(ErrorCode.UNKNOWN_DRINK, f"no drink {drink_id!r} on the menu")
        if units < 0:
            raise CommandRefused(ErrorCode.BAD_VALUES, "stock cannot be negative")
        drink = Drink.parse(json.loads(cast(str, self.redis.hget(self.menu_key, drink_id))))
        if units > drink.capacity:
            raise CommandRefused(ErrorCode.BAD_VALUES, f"{drink_id} holds {drink.capacity} at most")
        self.redis.hset(self.stock_key, drink_id, units)

    def set_out_of_service(self, out: bool) -> None:
        """Maintenance on (only between customers) or off (back to IDLE)."""
        frm = OUT_OF_SERVICE_FROM if out else (State.OUT_OF_SERVICE,)
        to = State.OUT_OF_SERVICE if out else State.IDLE
        command = "maintenance " + ("on" if out else "off")
        self._move(lambda snap: to if snap.state in frm else None, command, clear_order=True)

    # --- kiosk commands ---------------------------------------------------------------------

    def show_menu(self) -> None:
        """Kiosk SHOW_MENU: open (or re-send) the menu, or dismiss a result screen."""
        self._move(
            lambda snap: rules.SHOW_MENU_MOVES.get(snap.state),
            ClientEvent.SHOW_MENU,
            clear_order=True,
        )

    def place_order(self, drink_id: str, quantity: int = 1) -> str:
        """Kiosk ORDER: check the drink and its stock, create the order, -> MENU_CLICKED.

        The order_id and the charge's Idempotency-Key are stored before any charge is sent
        (money rule 5).
        """
        order_id: str | None = None
        tid = uuid.uuid4().hex

        def judge(pipe: Pipeline) -> Writes:
            nonlocal order_id
            snap = Snapshot.parse(_texts(pipe.hgetall(self.state_key)))
            raw = pipe.hget(self.menu_key, drink_id)
            stock = int(pipe.hget(self.stock_key, drink_id) or 0)
            drink = Drink.parse(json.loads(raw)) if raw is not None else None
            if drink is not None and drink.slots and stock > 0:
                states = slot_states(_texts(pipe.hgetall(self.slots_key)))
                if not rules.sellable(drink.slots, states):
                    stock = 0  # every slot of it disabled or empty: sold out
            # A disabled drink is not on the kiosk's menu: refused as unknown.
            known = drink is not None and drink.enabled
            refusal = rules.check_order(snap.state, known, stock, quantity)
            if refusal:
                raise _refused(refusal)
            assert drink is not None  # check_order refuses a drink that is not on the menu
            order_id = order_id or self.new_order_id()
            now = self.clock()
            order = Order(order_id, drink, drink.price, str(uuid.uuid4()), now)
            fields: dict[FieldT, EncodableT] = {
                OrderField.ORDER_ID: order_id,
                OrderField.DRINK: json.dumps(drink.public()),
                OrderField.AMOUNT: drink.price,
                OrderField.IDEMPOTENCY_KEY: order.idempotency_key,
                OrderField.CREATED_AT: now,
            }
            move = Transition(
                State.MENU_CLICKED,
                (State.SHOW_MENU,),
                None,
                order.values(),
                Effects(sale={"kind": Sale.ORDERED, "amount": drink.price, "drink_id": drink.id}),
                new_order_id=order_id,
            )

            def write(p: Pipeline) -> None:
                p.hset(self.order_key(order_id), mapping=fields)
                p.expire(self.order_key(order_id), ORDER_KEEP_S)
                self._queue(p, snap, move, now, tid, sale_order=order_id)

            return write

        self._compare_and_set(
            (self.state_key, self.stock_key, self.menu_key, self.slots_key), judge, tid
        )
        assert order_id is not None  # judge either set it or raised
        self._hint(tid=tid)
        log.info("order placed", extra=kv(order_id=order_id, drink=drink_id))
        return order_id

    def request_cancel(self) -> None:
        """Kiosk CANCEL: on the menu back to IDLE; with an order, ask the workers to close it."""
        tid = uuid.uuid4().hex
        seen: list[Snapshot] = []

        def judge(pipe: Pipeline) -> Writes:
            snap = Snapshot.parse(_texts(pipe.hgetall(self.state_key)))
            seen.append(snap)
            if snap.state in rules.CANCEL_TO_IDLE_FROM:
                move = Transition(State.IDLE, (snap.state,), snap.order_id, {})
                return lambda p: self._queue(p, snap, move, self.clock(), tid)
            if snap.state in rules.CANCEL_REQUEST_FROM and snap.order_id:
                order_id = snap.order_id

                def ask_workers(p: Pipeline) -> None:
                    p.hset(self.order_key(order_id), OrderField.CANCEL_REQUESTED, "1")
                    self._command(p, Command.CANCEL, order_id)

                return ask_workers
            raise _refused(rules.wrong_state(ClientEvent.CANCEL, snap.state))

        self._compare_and_set((self.state_key,), judge, tid)
        asked = seen[-1].state in rules.CANCEL_REQUEST_FROM
        self._hint(Command.CANCEL if asked else "", seen[-1].order_id or "", tid=tid)
        log.info("cancel", extra=kv(state=seen[-1].state, order_id=seen[-1].order_id or "-"))

    def wake(self, command: Command, order_id: str) -> None:
        """A hint to the workers (e.g. CHECK after a notification); the truth stays in Redis."""
        self._command(self.redis, command, order_id)
        self._hint(command, order_id)

    # --- workers ----------------------------------------------------------------------------

    def new_order_id(self) -> str:
        """Unique per charge: machine, date, a sequence and a random tail (midtrans.md limits)."""
        seq = self.redis.incr(self.seq_key)
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(self.clock()))
        return f"{self.machine_id}-{stamp}-{seq:06d}-{secrets.token_hex(2)}"

    def update_order(self, order_id: str, **fields: Any) -> None:
        self.redis.hset(self.order_key(order_id), mapping={k: text(v) for k, v in fields.items()})

    def transition(self, move: Transition) -> bool:
        """Compare-and-set: apply `move` only if the machine is in one of its from_states with
        its order_id (and version, when pinned). Returns False, changing nothing, when the
        machine has moved on. Raises IllegalTransition for a move the machine does not have.
        """
        move.check()
        tid = uuid.uuid4().hex
        seen: list[Snapshot] = []

        def judge(pipe: Pipeline) -> Writes:
            snap = Snapshot.parse(_texts(pipe.hgetall(self.state_key)))
            seen.append(snap)
            if (
                snap.state not in move.from_states
                or snap.order_id != move.order_id
                or move.expect_version not in (None, snap.version)
            ):
                return None
            left = None
            if move.effects.stock_drink:  # the unit leaves the count, never below zero
                units = int(
                    cast(str | None, pipe.hget(self.stock_key, move.effects.stock_drink)) or 0
                )
                left = max(0, units - 1)
            return lambda p: self._queue(p, snap, move, self.clock(), tid, stock_left=left)

        watch = (self.state_key, self.stock_key) if move.effects.stock_drink else (self.state_key,)
        applied = self._compare_and_set(watch, judge, tid)
        snap = seen[-1] if seen else None
        if applied:
            recheck = move.effects.recheck_at is not None and move.order_id
            self._hint(Command.RECHECK if recheck else "", move.order_id or "", tid=tid)
            log.info(
                "transition",
                extra=kv(
                    frm=snap.state if snap else "-",
                    to=move.to,
                    order_id=move.next_order_id or move.order_id or "-",
                ),
            )
            if move.durable:
                self.confirm_durable(self.state_key, {"tid": tid})
        else:
            log.info(
                "transition refused",
                extra=kv(
                    to=move.to,
                    state=snap.state if snap else "-",
                    order_id=move.order_id or "-",
                    current_order=(snap.order_id if snap else None) or "-",
                ),
            )
        return applied

    def record_sale(self, order_id: str, kind: Sale, **fields: Any) -> None:
        """Append to the sales stream outside a transition (e.g. a late payment). A record of
        money moving (DURABLE_SALES) raises NotDurable when no replica is known to hold it."""
        self.record_sale_with_order(order_id, kind, None, **fields)

    def record_sale_with_order(
        self, order_id: str, kind: Sale, order_fields: Mapping[str, Any] | None, **fields: Any
    ) -> None:
        """`record_sale` with `order_fields` written to the order's hash in the same MULTI, so
        that the order says what is recorded: a retry finds it there and never records twice,
        and confirms a record not known durable with `confirm_order`."""
        sale = _sale_fields(order_id, kind, fields, self.clock())
        if order_fields:
            with self.redis.pipeline() as pipe:  # MULTI: the order's keys share one slot
                pipe.hset(
                    self.order_key(order_id),
                    mapping={k: text(v) for k, v in order_fields.items()},
                )
                pipe.xadd(self.sales_key, sale)
                entry = pipe.execute()[-1]
        else:
            entry = self.redis.xadd(self.sales_key, sale)
        if kind in DURABLE_SALES:
            self.confirm_durable(self.sales_key, str(entry))

    def confirm_order(self, order_id: str, fields: Mapping[str, str]) -> None:
        """A retry of a money-moving record: return once a replica holds the order's `fields`
        (written with the record, in its MULTI: so it holds the record); else NotDurable."""
        self.confirm_durable(self.order_key(order_id), fields)

    def confirm_state(self, snap: Snapshot) -> None:
        """Return once a replica holds the state `snap` read (state, order and version);
        else NotDurable (the DISPENSE worker re-asks for a DISPENSING not known durable)."""
        self.confirm_durable(
            self.state_key,
            {
                "state": str(snap.state),
                "order_id": snap.order_id or "",
                "version": str(snap.version),
            },
        )

    def mark_vend_durable(self, order_id: str, at: float) -> None:
        """Fleet mode: the order's DISPENSING is known durable (VEND_DURABLE_AT): from now on
        the gateway may ask the agent to vend it; the hint makes it look."""
        self.redis.hset(self.order_key(order_id), OrderField.VEND_DURABLE_AT, at)
        self._hint()

    def confirm_durable(self, key: str, held: Mapping[str, str] | str) -> None:
        """Return once `durability.replicas` replicas hold a step that wrote `key` (a hash
        holding the fields `held`, or a stream holding the entry id `held`); raise NotDurable
        otherwise. Nothing is sent when no replica is asked for."""
        want = self.durability
        if want.replicas <= 0:
            return
        if isinstance(held, str):
            args: list[str] = ["stream", str(_MARK_TTL_MS), held]
        else:
            args = ["hash", str(_MARK_TTL_MS), *(x for pair in held.items() for x in pair)]
        try:
            found, acked = self._mark_and_wait(key, args, want)
        except NotDurable:
            raise
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise NotDurable(f"{key}: the master could not be asked: {exc}") from exc
        if not found:
            raise NotDurable(f"{key}: the master of its slot does not hold the step")
        if acked < want.replicas:
            raise NotDurable(
                f"{key}: {acked} of {want.replicas} replicas after {want.timeout_ms} ms"
            )

    def _mark_and_wait(self, key: str, args: list[str], want: Durability) -> tuple[int, int]:
        """The mark and WAIT in one pipeline, on one connection to the master of the
        machine's slot (a plain client's pipeline holds one connection)."""
        client: Any = self.redis
        if isinstance(client, redis.cluster.RedisCluster):
            client = client.get_redis_connection(client.get_node_from_key(key))
        for _ in range(2):
            with client.pipeline(transaction=False) as pipe:
                pipe.evalsha(_MARK_SHA, 2, key, self.durable_key, *args)
                pipe.wait(want.replicas, want.timeout_ms)
                try:
                    found, acked = pipe.execute()
                except redis.exceptions.NoScriptError:
                    client.script_load(_MARK_SCRIPT)  # a new node, or a restarted one
                    continue
            return int(found), int(acked)
        raise NotDurable(f"{key}: the mark's script could not be loaded")

    def flag_for_operator(self, order_id: str, kind: str, **fields: Any) -> None:
        self.redis.hset(
            self.operator_key,
            order_id,
            self._operator_entry(order_id, {"kind": str(kind), **fields}),
        )

    def schedule_recheck(self, order_id: str, at: float, wake: bool = True) -> None:
        """Have the late-payment desk read this order's payment at `at` (`wake`: tell it)."""
        with self.redis.pipeline() as pipe:
            pipe.zadd(self.recheck_key, {order_id: at})
            if wake:
                self._command(pipe, Command.RECHECK, order_id)
            pipe.execute()
        if wake:
            self._hint(Command.RECHECK, order_id)

    def rechecks_due(self, now: float) -> tuple[list[str], float | None]:
        """Orders due for a recheck, and when the next one falls due (None: none left)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.recheck_key, "-inf", now)
            pipe.zrangebyscore(self.recheck_key, f"({now}", "+inf", start=0, num=1, withscores=True)
            due, nxt = pipe.execute()
        return due, (nxt[0][1] if nxt else None)

    def recheck_done(self, order_id: str) -> None:
        self.redis.zrem(self.recheck_key, order_id)

    def heartbeat(self, service: str, ttl_s: float) -> None:
        self.redis.set(self.heartbeat_key(service), self.clock(), ex=math.ceil(ttl_s))

    def cursor(self) -> dict[str, str]:
        """Where a worker's next `wait` starts: just after the newest entries of both streams."""
        return {stream: self._last_id(stream) for stream in (self.events_key, self.commands_key)}

    def wait(
        self, cursor: dict[str, str], timeout_s: float
    ) -> tuple[dict[str, str], list[tuple[str, dict]]]:
        """Block until an event or a command arrives, or `timeout_s` passes.

        Returns the moved cursor and the entries read as (stream, fields).
        """
        block_ms = math.ceil(timeout_s * 1000)
        if block_ms <= 0:
            return cursor, []
        # redis-py types `streams` as Dict[KeyT, StreamIdT], invariant, where it only reads it
        # (a Mapping would do): a dict[str, str] is refused though it is one.
        answer = self.blocking.xread(cursor, block=block_ms, count=100)  # type: ignore[arg-type]
        cursor = dict(cursor)
        entries = []
        for stream, items in _streams(answer):
            for entry_id, fields in items:
                cursor[stream] = entry_id
                entries.append((stream, fields))
        return cursor, entries

    # --- internals --------------------------------------------------------------------------

    def _move(
        self, judge: Callable[[Snapshot], State | None], command: str, clear_order: bool
    ) -> None:
        """A command that moves the machine from whatever state holds: `judge` names the
        state to go to, or None when the command is wrong for it (re-judged after a race)."""
        tid = uuid.uuid4().hex

        def plan(pipe: Pipeline) -> Writes:
            snap = Snapshot.parse(_texts(pipe.hgetall(self.state_key)))
            to = judge(snap)
            if to is None:
                raise _refused(rules.wrong_state(command, snap.state))
            values: Any = self.menu_values() if to == State.SHOW_MENU else {}
            move = Transition(
                to,
                (snap.state,),
                snap.order_id,
                values,
                new_order_id=None if clear_order else snap.order_id,
            )
            move.check()
            return lambda p: self._queue(p, snap, move, self.clock(), tid)

        self._compare_and_set((self.state_key,), plan, tid)
        self._hint(tid=tid)

    def _hint(self, command: str = "", order_id: str = "", tid: str | None = None) -> None:
        """Fleet mode: wake the shared workers and the gateway after a change (cores/work.py).
        `tid`: the transition just applied, whose state, version and frame the hint carries
        (one its call queued in this thread; none when it queued no transition). A hint lost
        here (Redis gone between the change and the hint) is re-derived by the shard's sweep."""
        queued = getattr(self._queued, "change", None)
        self._queued.change = None
        change = queued[1] if queued is not None and tid is not None and queued[0] == tid else None
        if self.hints is None:
            return
        try:
            self.hints.hint(self.machine_id, str(command), order_id, change)
        except redis.RedisError as exc:
            log.warning("work hint lost", extra=kv(error=exc, command=command or "-"))

    def _compare_and_set(
        self, watch: tuple[str, ...], judge: Callable[[Pipeline], Writes], tid: str
    ) -> bool:
        """Read under WATCH with `judge`, then apply its writes in one MULTI.

        Returns False when `judge` returns None (nothing to do). A refusal `judge` raises
        propagates, changing nothing. On a race (WatchError) `judge` runs again on what now
        holds, unless our MULTI was applied and only its reply was lost (see `_applied`).
        """
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watch)
                    try:
                        writes = judge(pipe)
                    except Exception:
                        pipe.unwatch()
                        raise
                    if writes is None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    writes(pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    if self._applied(tid):
                        return True

    def _queue(
        self,
        pipe: Pipeline,
        snap: Snapshot,
        move: Transition,
        now: float,
        tid: str,
        sale_order: str | None = None,
        stock_left: int | None = None,
    ) -> None:
        """Queue a transition's writes: its effects, the state, the frame on the events stream
        and, where money moves, the sales entry. `stock_left`: the drink's count after the
        unit taken, read under WATCH (Broker.transition reads it)."""
        order_id, effects = move.order_id, move.effects
        if effects.order_fields and order_id:
            pipe.hset(
                self.order_key(order_id),
                mapping={k: text(v) for k, v in effects.order_fields.items()},
            )
        if effects.stock_drink:
            if stock_left is None:
                raise ValueError("a move that takes stock needs the count read under WATCH")
            pipe.hset(self.stock_key, effects.stock_drink, stock_left)
        if effects.operator and order_id:
            pipe.hset(self.operator_key, order_id, self._operator_entry(order_id, effects.operator))
        if effects.recheck_at is not None and order_id:
            pipe.zadd(self.recheck_key, {order_id: effects.recheck_at})
            self._command(pipe, Command.RECHECK, order_id)
        frame_text = json.dumps(
            {"event": str(move.to), "values": move.values}, separators=(",", ":")
        )
        version = snap.version + 1
        next_order = move.next_order_id or ""
        self._queued.change = (tid, Change(str(move.to), version, frame_text))
        pipe.hset(
            self.state_key,
            mapping={
                "state": str(move.to),
                "order_id": next_order,
                "version": version,
                "since": now,
                "frame": frame_text,
                "tid": tid,
            },
        )
        pipe.xadd(
            self.events_key,
            {
                "state": str(move.to),
                "order_id": next_order,
                "version": version,
                "frame": frame_text,
            },
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
        if effects.sale is not None:
            sale = dict(effects.sale)
            kind = sale.pop("kind")
            pipe.xadd(
                self.sales_key, _sale_fields(sale_order or order_id or next_order, kind, sale, now)
            )

    def _operator_entry(self, order_id: str, entry: Mapping[str, Any]) -> str:
        return json.dumps({**entry, "order_id": order_id, "at": self.clock()})

    def _applied(self, tid: str) -> bool:
        """After a WatchError: was our MULTI applied and only its reply lost?

        redis-py raises WatchError when the connection drops while watching, even if EXEC
        ran; the transition id written with the state tells the two cases apart.
        """
        try:
            return self.redis.hget(self.state_key, "tid") == tid
        except redis.RedisError:
            return False

    def _last_id(self, stream: str) -> str:
        last = _entries(self.redis.xrevrange(stream, count=1))
        return last[0][0] if last else "0-0"

    def _command(self, pipe: Any, command: Command, order_id: str) -> None:
        pipe.xadd(
            self.commands_key,
            {"command": str(command), "order_id": order_id},
            maxlen=COMMANDS_MAXLEN,
            approximate=True,
        )


def _sale_fields(order_id: str, kind: Any, fields: Mapping[str, Any], now: float) -> dict:
    return {
        "kind": str(kind),
        "order_id": order_id,
        "at": now,
        **{k: text(v) for k, v in fields.items() if v is not None},
    }


def _refused(refusal: rules.Refusal) -> CommandRefused:
    return CommandRefused(refusal.code, refusal.message)


# redis-py types its replies as bytes | str, as it cannot know how a client decodes. This
# module's clients are made with decode_responses=True (services/runtime.py, the tests), so
# every key, field and value is a str; these say so once, where a reply enters the module.


def _texts(reply: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash (HGETALL) of a decoding client."""
    return cast(dict[str, str], reply)


def _entries(reply: StreamRangeResponse | None) -> Entries:
    """Stream entries (XRANGE, XREVRANGE) of a decoding client; none for no reply."""
    return cast(Entries, reply or [])


def _streams(answer: XReadResponse | None) -> list[tuple[str, Entries]]:
    """(stream, entries) of each stream in an XREAD answer of a decoding client: RESP2
    answers a list of [stream, entries], RESP3 a dict of stream -> [entries]."""
    if not answer:
        return []
    if isinstance(answer, dict):  # RESP3
        return [
            (stream, found[0]) for stream, found in cast(dict[str, list[Entries]], answer).items()
        ]
    return [(stream, entries) for stream, entries in cast(list[tuple[str, Entries]], answer)]


__all__ = ["Broker", "CommandRefused", "Drink", "Durability", "NotDurable", "Order", "Snapshot"]
