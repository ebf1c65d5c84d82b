"""Every Redis access of a machine: state, orders, menu, stock, and the three streams.

A transition is a compare-and-set on (state, order_id), done with WATCH/MULTI so that the
rules stay in Python (cores/rules.py). In the same MULTI it writes the new state with the
frame of its screen, appends that frame to the events stream (which the websocket server
relays and the workers wake on), and, where money is involved, appends to the sales stream.
A transition from a state the machine is no longer in is refused, never applied.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from constants import keys
from constants.states import ORDER_STATES, ErrorCode, Sale, State
from constants.tunables import COMMANDS_MAXLEN, EVENTS_MAXLEN, ORDER_KEEP_S
from cores import rules
from cores.logs import kv

log = logging.getLogger(__name__)


class CommandRefused(Exception):
    """A kiosk or operator command that is not allowed now; nothing was changed."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Snapshot:
    state: State
    order_id: str | None
    version: int
    since: float
    frame: dict


@dataclass(frozen=True)
class Drink:
    id: str
    name: str
    icon: str
    price: int

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "icon": self.icon, "price": self.price}


@dataclass
class Order:
    """The current order's fields as stored in its hash (strings in Redis, typed here)."""

    order_id: str
    drink: Drink
    amount: int
    idempotency_key: str
    created_at: float
    fields: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.fields.get(name, default)

    def flag(self, name: str) -> bool:
        return self.fields.get(name) == "1"

    def number(self, name: str) -> float | None:
        raw = self.fields.get(name)
        return float(raw) if raw not in (None, "") else None

    def values(self) -> dict:
        """What every screen of an order shows."""
        return {"order_id": self.order_id, "drink": self.drink.public(), "amount": self.amount}


class Broker:
    """The machine's state in Redis. Clients are passed in: fakeredis, or a real server."""

    def __init__(self, client: redis.Redis, machine_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.machine_id = machine_id
        self.clock = clock
        k = lambda template, **parts: keys.key(template, machine_id, **parts)  # noqa: E731
        self.state_key = k(keys.STATE)
        self.events_key = k(keys.EVENTS)
        self.commands_key = k(keys.COMMANDS)
        self.sales_key = k(keys.SALES)
        self.menu_key = k(keys.MENU)
        self.stock_key = k(keys.STOCK)
        self.operator_key = k(keys.OPERATOR)
        self.seq_key = k(keys.ORDER_SEQ)
        self.recheck_key = k(keys.RECHECK)

    def order_key(self, order_id: str) -> str:
        return keys.key(keys.ORDER, self.machine_id, order_id=order_id)

    def heartbeat_key(self, service: str) -> str:
        return keys.key(keys.HEARTBEAT, self.machine_id, service=service)

    # --- reading ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return _snapshot(self.redis.hgetall(self.state_key))

    def menu(self) -> list[Drink]:
        raw = self.redis.hgetall(self.menu_key)
        drinks = [_drink(json.loads(v)) for v in raw.values()]
        return sorted(drinks, key=lambda d: (d.price, d.id))

    def stock(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(self.stock_key).items()}

    def menu_values(self) -> list[dict]:
        """The SHOW_MENU frame's values: drinks with their stock."""
        stock = self.stock()
        return [{**d.public(), "stock": stock.get(d.id, 0)} for d in self.menu()]

    def order(self, order_id: str | None) -> Order | None:
        if not order_id:
            return None
        return _order(self.redis.hgetall(self.order_key(order_id)))

    def current_order(self) -> Order | None:
        return self.order(self.snapshot().order_id)

    def sales(self, count: int | None = None) -> list[dict]:
        return [{"id": i, **f} for i, f in self.redis.xrange(self.sales_key, count=count)]

    def operator_queue(self) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.redis.hgetall(self.operator_key).items()}

    def last_event_id(self) -> str:
        last = self.redis.xrevrange(self.events_key, count=1)
        return last[0][0] if last else "0-0"

    def read_events(self, last_id: str, block_ms: int, count: int = 100
                    ) -> list[tuple[str, dict]]:
        """Entries of the events stream after `last_id`, blocking up to `block_ms` for one."""
        answer = self.redis.xread({self.events_key: last_id}, count=count, block=block_ms)
        if not answer:
            return []
        if isinstance(answer, dict):  # RESP3
            return list(answer.get(self.events_key, [[]])[0])
        return [entry for _, entries in answer for entry in entries]

    # --- set-up and operator ----------------------------------------------------------------

    def ensure_ready(self, drinks: Iterable[Mapping[str, Any]]) -> None:
        """At first start: load the menu and stock, and put the machine in IDLE."""
        drinks = list(drinks)
        if not self.redis.exists(self.menu_key):
            with self.redis.pipeline() as pipe:
                for d in drinks:
                    drink = _drink(d)
                    pipe.hset(self.menu_key, drink.id, json.dumps(drink.public()))
                    pipe.hsetnx(self.stock_key, drink.id, int(d.get("stock", 0)))
                pipe.execute()
            log.info("menu loaded", extra=kv(drinks=len(drinks)))
        if not self.redis.exists(self.state_key):
            self.transition(State.IDLE, from_states=(State.IDLE,), order_id=None, values={})

    def set_stock(self, drink_id: str, units: int) -> None:
        if not self.redis.hexists(self.menu_key, drink_id):
            raise CommandRefused(ErrorCode.UNKNOWN_DRINK, f"no drink {drink_id!r} on the menu")
        if units < 0:
            raise CommandRefused(ErrorCode.BAD_VALUES, "stock cannot be negative")
        self.redis.hset(self.stock_key, drink_id, units)

    def set_out_of_service(self, out: bool) -> None:
        snap = self.snapshot()
        if out:
            ok = self.transition(State.OUT_OF_SERVICE, from_states=rules.OUT_OF_SERVICE_FROM,
                                 order_id=snap.order_id, new_order_id=None, values={})
        else:
            ok = self.transition(State.IDLE, from_states=(State.OUT_OF_SERVICE,),
                                 order_id=snap.order_id, values={})
        if not ok:
            raise CommandRefused(ErrorCode.WRONG_STATE,
                                 f"not possible while the machine is {self.snapshot().state}")

    # --- kiosk commands ---------------------------------------------------------------------

    def show_menu(self) -> None:
        """Kiosk SHOW_MENU: open (or re-send) the menu, or dismiss a result screen."""
        snap = self.snapshot()
        to = rules.SHOW_MENU_MOVES.get(snap.state)
        if to is None:
            raise _refused(rules.wrong_state("SHOW_MENU", snap.state))
        values: Any = self.menu_values() if to == State.SHOW_MENU else {}
        if not self.transition(to, from_states=(snap.state,), order_id=snap.order_id,
                               new_order_id=None, values=values, expect_version=snap.version):
            raise _refused(rules.wrong_state("SHOW_MENU", self.snapshot().state))

    def place_order(self, drink_id: str, quantity: int = 1) -> str:
        """Kiosk ORDER: check the drink and its stock, create the order, -> MENU_CLICKED.

        The order_id and the charge's Idempotency-Key are stored before any charge is sent
        (money rule 5).
        """
        order_id = None
        tid = uuid.uuid4().hex
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.state_key, self.stock_key, self.menu_key)
                    snap = _snapshot(pipe.hgetall(self.state_key))
                    raw = pipe.hget(self.menu_key, drink_id)
                    stock = int(pipe.hget(self.stock_key, drink_id) or 0)
                    refusal = rules.check_order(snap.state, raw is not None, stock, quantity)
                    if refusal:
                        pipe.unwatch()
                        raise _refused(refusal)
                    drink = _drink(json.loads(raw))
                    order_id = order_id or self.new_order_id()
                    now = self.clock()
                    order_fields = {
                        "order_id": order_id, "drink": json.dumps(drink.public()),
                        "amount": drink.price, "idempotency_key": str(uuid.uuid4()),
                        "created_at": now,
                    }
                    pipe.multi()
                    pipe.hset(self.order_key(order_id), mapping=order_fields)
                    pipe.expire(self.order_key(order_id), ORDER_KEEP_S)
                    values = {"order_id": order_id, "drink": drink.public(), "amount": drink.price}
                    self._write(pipe, snap, State.MENU_CLICKED, order_id, values, now,
                                sale={"kind": Sale.ORDERED, "amount": drink.price,
                                      "drink_id": drink.id}, tid=tid)
                    pipe.execute()
                except redis.WatchError:
                    if order_id and self._applied(tid):
                        return order_id
                    continue
                log.info("order placed", extra=kv(order_id=order_id, drink=drink.id))
                return order_id

    def request_cancel(self) -> None:
        """Kiosk CANCEL: on the menu back to IDLE; with an order, ask the workers to close it."""
        tid = uuid.uuid4().hex
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.state_key)
                    snap = _snapshot(pipe.hgetall(self.state_key))
                    if snap.state in rules.CANCEL_TO_IDLE_FROM:
                        pipe.multi()
                        self._write(pipe, snap, State.IDLE, None, {}, self.clock(), tid=tid)
                    elif snap.state in rules.CANCEL_REQUEST_FROM and snap.order_id:
                        pipe.multi()
                        pipe.hset(self.order_key(snap.order_id), "cancel_requested", "1")
                        self._command(pipe, "CANCEL", snap.order_id)
                    else:
                        pipe.unwatch()
                        raise _refused(rules.wrong_state("CANCEL", snap.state))
                    pipe.execute()
                except redis.WatchError:
                    if self._applied(tid):
                        return
                    continue
                log.info("cancel", extra=kv(state=snap.state, order_id=snap.order_id or "-"))
                return

    def wake(self, command: str, order_id: str) -> None:
        """A hint to the workers (e.g. CHECK after a notification); the truth stays in Redis."""
        self._command(self.redis, command, order_id)

    # --- workers ----------------------------------------------------------------------------

    def new_order_id(self) -> str:
        """Unique per charge: machine, date, a sequence and a random tail (midtrans.md limits)."""
        seq = self.redis.incr(self.seq_key)
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(self.clock()))
        return f"{self.machine_id}-{stamp}-{seq:06d}-{secrets.token_hex(2)}"

    def update_order(self, order_id: str, **fields: Any) -> None:
        self.redis.hset(self.order_key(order_id), mapping={k: _text(v) for k, v in fields.items()})

    def transition(self, to: State, *, from_states: Iterable[State], order_id: str | None,
                   new_order_id: str | None | type[...] = ..., values: Any,
                   sale: Mapping[str, Any] | None = None,
                   order_fields: Mapping[str, Any] | None = None,
                   stock_drink: str | None = None, operator: Mapping[str, Any] | None = None,
                   recheck_at: float | None = None, expect_version: int | None = None) -> bool:
        """Compare-and-set: apply only if the machine is in one of `from_states` with `order_id`.

        `new_order_id` defaults to keeping `order_id`. Returns False (and changes nothing)
        when the machine has moved on.
        """
        from_states = tuple(from_states)
        keep = order_id if new_order_id is ... else new_order_id
        tid = uuid.uuid4().hex
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.state_key)
                    snap = _snapshot(pipe.hgetall(self.state_key))
                    if (snap.state not in from_states or snap.order_id != order_id
                            or (expect_version is not None and snap.version != expect_version)):
                        pipe.unwatch()
                        log.info("transition refused", extra=kv(
                            to=to, state=snap.state, order_id=order_id or "-",
                            current_order=snap.order_id or "-"))
                        return False
                    pipe.multi()
                    if order_fields and order_id:
                        pipe.hset(self.order_key(order_id),
                                  mapping={k: _text(v) for k, v in order_fields.items()})
                    if stock_drink:
                        pipe.hincrby(self.stock_key, stock_drink, -1)
                    if operator and order_id:
                        pipe.hset(self.operator_key, order_id,
                                  json.dumps({**operator, "order_id": order_id,
                                              "at": self.clock()}))
                    if recheck_at is not None and order_id:
                        pipe.zadd(self.recheck_key, {order_id: recheck_at})
                        self._command(pipe, "RECHECK", order_id)
                    self._write(pipe, snap, to, keep, values, self.clock(), sale=sale,
                                sale_order=order_id, tid=tid)
                    pipe.execute()
                except redis.WatchError:
                    if self._applied(tid):
                        break
                    continue
                break
        log.info("transition", extra=kv(frm=snap.state, to=to, order_id=keep or order_id or "-"))
        return True

    def record_sale(self, order_id: str, kind: Sale, **fields: Any) -> None:
        """Append to the sales stream outside a transition (e.g. a late payment)."""
        self.redis.xadd(self.sales_key, _sale_fields(order_id, kind, fields, self.clock()))

    def flag_for_operator(self, order_id: str, kind: Sale, **fields: Any) -> None:
        self.redis.hset(self.operator_key, order_id, json.dumps(
            {"kind": str(kind), "order_id": order_id, "at": self.clock(), **fields}))

    def schedule_recheck(self, order_id: str, at: float, wake: bool = True) -> None:
        """Have the late-payment desk read this order's payment at `at` (`wake`: tell it)."""
        with self.redis.pipeline() as pipe:
            pipe.zadd(self.recheck_key, {order_id: at})
            if wake:
                self._command(pipe, "RECHECK", order_id)
            pipe.execute()

    def rechecks_due(self, now: float) -> tuple[list[str], float | None]:
        """Orders due for a recheck, and when the next one falls due (None: none left)."""
        due = self.redis.zrangebyscore(self.recheck_key, "-inf", now)
        nxt = self.redis.zrangebyscore(self.recheck_key, f"({now}", "+inf", start=0, num=1,
                                       withscores=True)
        return due, (nxt[0][1] if nxt else None)

    def recheck_done(self, order_id: str) -> None:
        self.redis.zrem(self.recheck_key, order_id)

    def heartbeat(self, service: str, ttl_s: int) -> None:
        self.redis.set(self.heartbeat_key(service), self.clock(), ex=ttl_s)

    def cursor(self) -> dict[str, str]:
        """Where a worker's next `wait` starts: just after the newest entries of both streams."""
        ids = {}
        for stream in (self.events_key, self.commands_key):
            last = self.redis.xrevrange(stream, count=1)
            ids[stream] = last[0][0] if last else "0-0"
        return ids

    def wait(self, cursor: dict[str, str], timeout_s: float
             ) -> tuple[dict[str, str], list[tuple[str, dict]]]:
        """Block until an event or a command arrives, or `timeout_s` passes.

        Returns the moved cursor and the entries read as (stream, fields).
        """
        block_ms = math.ceil(timeout_s * 1000)
        if block_ms <= 0:
            return cursor, []
        answer = self.redis.xread(cursor, block=block_ms, count=100)
        cursor = dict(cursor)
        entries = []
        for stream, items in answer or []:
            for entry_id, fields in items:
                cursor[stream] = entry_id
                entries.append((stream, fields))
        return cursor, entries

    # --- internals --------------------------------------------------------------------------

    def _write(self, pipe: Any, snap: Snapshot, to: State, order_id: str | None, values: Any,
               now: float, sale: Mapping[str, Any] | None = None,
               sale_order: str | None = None, tid: str = "") -> None:
        frame = {"event": str(to), "values": values}
        frame_text = json.dumps(frame, separators=(",", ":"))
        version = snap.version + 1
        pipe.hset(self.state_key, mapping={
            "state": str(to), "order_id": order_id or "", "version": version,
            "since": now, "frame": frame_text, "tid": tid,
        })
        pipe.xadd(self.events_key, {"state": str(to), "order_id": order_id or "",
                                    "version": version, "frame": frame_text},
                  maxlen=EVENTS_MAXLEN, approximate=True)
        if sale is not None:
            sale = dict(sale)
            kind = sale.pop("kind")
            pipe.xadd(self.sales_key, _sale_fields(sale_order or order_id or "", kind, sale, now))

    def _applied(self, tid: str) -> bool:
        """After a WatchError: was our MULTI applied and only its reply lost?

        redis-py raises WatchError when the connection drops while watching, even if EXEC
        ran; the transition id written with the state tells the two cases apart.
        """
        try:
            return self.redis.hget(self.state_key, "tid") == tid
        except redis.RedisError:
            return False

    def _command(self, pipe: Any, command: str, order_id: str) -> None:
        pipe.xadd(self.commands_key, {"command": command, "order_id": order_id},
                  maxlen=COMMANDS_MAXLEN, approximate=True)


def _snapshot(raw: Mapping[str, str]) -> Snapshot:
    if not raw:
        return Snapshot(State.IDLE, None, 0, 0.0, {"event": str(State.IDLE), "values": {}})
    return Snapshot(State(raw["state"]), raw.get("order_id") or None, int(raw["version"]),
                    float(raw["since"]), json.loads(raw["frame"]))


def _drink(d: Mapping[str, Any]) -> Drink:
    return Drink(id=str(d["id"]), name=str(d["name"]), icon=str(d["icon"]), price=int(d["price"]))


def _order(raw: Mapping[str, str]) -> Order | None:
    if not raw or "order_id" not in raw:
        return None
    return Order(order_id=raw["order_id"], drink=_drink(json.loads(raw["drink"])),
                 amount=int(raw["amount"]), idempotency_key=raw["idempotency_key"],
                 created_at=float(raw["created_at"]), fields=dict(raw))


def _sale_fields(order_id: str, kind: Any, fields: Mapping[str, Any], now: float) -> dict:
    return {"kind": str(kind), "order_id": order_id, "at": now,
            **{k: _text(v) for k, v in fields.items() if v is not None}}


def _text(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        return value
    return json.dumps(value)


def _refused(refusal: rules.Refusal) -> CommandRefused:
    return CommandRefused(refusal.code, refusal.message)


__all__ = ["Broker", "CommandRefused", "Drink", "Order", "ORDER_STATES", "Snapshot"]
