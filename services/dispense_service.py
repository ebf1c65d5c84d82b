"""DISPENSE worker: on PAYMENT_SUCCESS vends exactly once; on failure refunds (money rules 2, 6).

PAYMENT_SUCCESS -> DISPENSING is applied before the vend starts, so a worker that finds the
machine DISPENSING on start knows a vend may have begun: it asks the driver's journal and,
where the journal cannot tell, hands the order to the operator (vend outcome unknown),
neither re-vending nor refunding on a guess.

Fleet mode (a RemoteDispenser: the agent on the machine vends, cores/remote_dispenser.py): the
worker moves PAYMENT_SUCCESS -> DISPENSING and returns the vend's deadline as its timer; the
gateway asks the agent to vend; the agent's result, written to the machine's VEND hash with a
hint, wakes the worker, which finishes as above. No result by the deadline: vend outcome
unknown, for the operator. The one-machine path (a local driver, a synchronous vend) is the
same as before.

Slots (cores/slots.py): at PAYMENT_SUCCESS -> DISPENSING the worker chooses the slot (the
drink's first slot neither disabled nor empty) and keeps it on the order (OrderField.SLOT); the
driver (or, in fleet mode, the agent through the gateway's `vend`) vends from it. The result and
the reason of a failure (the driver's journal; in fleet mode the agent's `vend_result`, kept in
the VEND hash) are counted against that slot before the order ends: SLOT_FAIL_LIMIT failures in
a row disable it, EMPTY marks it empty. When none of the drink's slots can vend any more (it
was sold out on the menu after the order was placed), the order's slot is "0": it is never
vended, it fails and is refunded (money rule 2). A failed vend is refunded and an unknown one
goes to the operator exactly as before.

The dispenser's status (driver, the board's firmware from its PING, last seen) is copied to
the machine's DISPENSER hash at the first step and whenever the driver pinged since (one
machine; fleet mode's gateway writes it from the agent's hello).

Durability (fleet mode on a Redis Cluster, cores/broker.py): the agent is asked to vend only
once the DISPENSING is known to be held by a replica (else a failover could bring the order
back to PAYMENT_SUCCESS after the vend, and it would be vended again). The worker marks the
order VEND_DURABLE_AT once its WAIT succeeded (in the transition itself when no replica is
asked for), and the gateway sends `vend` only for a marked order. A step that is not known
durable (NotDurable) is looked at again after DURABLE_RETRY_S, from the state: DISPENSING
without the mark and without a result is confirmed again (never vended meanwhile), and the
vend's deadline runs from the mark. A refund is sent only once the failed vend's record is
known durable (with a retry of its record confirmed first). The local driver's path never has
replicas (`main.py up`); should it meet NotDurable, its DISPENSING goes to the operator on the
next step as an interrupted vend would: never vended on a guess.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import cast

import redis
import requests
from redis.typing import EncodableT, FieldT

from constants import keys
from constants.orders import Command, OperatorKind, OrderField, Outcome
from constants.states import RefundOutcome, Sale, State
from constants.tunables import DURABLE_RETRY_S, REMOTE_VEND_MARGIN_S
from cores import rules
from cores.broker import Broker, NotDurable, Order, Snapshot
from cores.config import Settings
from cores.dispenser import Dispenser
from cores.dispenser import from_settings as dispenser_from_settings
from cores.logs import kv
from cores.machine import Effects, Transition
from cores.metrics import GatewayRecorder
from cores.midtrans import MidtransClient
from cores.remote_dispenser import RemoteDispenser, RemoteMove, remote_step
from cores.rules import Vend
from cores.slots import Slots
from services.refunds import Refunder
from services.worker import Worker

log = logging.getLogger(__name__)


class DispenseWorker(Worker):
    service = "DISPENSE"
    states = frozenset({State.PAYMENT_SUCCESS, State.DISPENSING})
    commands = frozenset[Command]()

    def __init__(
        self,
        broker: Broker,
        client: MidtransClient,
        dispenser: Dispenser | RemoteDispenser,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        slot_fail_limit: int = 3,
    ) -> None:
        super().__init__(broker, clock)
        self.dispenser = dispenser
        self.refunder = Refunder(client, sleep or self.stopping.wait)
        self.slots = Slots(broker)
        self.slot_fail_limit = slot_fail_limit
        #: The driver's status as last written to the DISPENSER hash, and the fields written
        #: (None: not yet).
        self._status_written: dict | None = None
        self._fields_written: dict[str, str] | None = None

    def step(self, snap: Snapshot, entries: list) -> float | None:
        self.record_dispenser()
        try:
            return self.dispense(snap)
        except NotDurable as exc:
            retry = self.clock() + DURABLE_RETRY_S
            log.warning(
                "step not known durable, looking again",
                extra=kv(order_id=snap.order_id or "-", error=exc, retry_s=DURABLE_RETRY_S),
            )
            return retry

    def dispense(self, snap: Snapshot) -> float | None:
        if snap.state not in (State.PAYMENT_SUCCESS, State.DISPENSING) or not snap.order_id:
            return None
        order = self.broker.order(snap.order_id)
        if order is None:
            log.error("order missing", extra=kv(order_id=snap.order_id))
            self.broker.transition(
                Transition(
                    State.DISPENSE_FAILED,
                    (snap.state,),
                    snap.order_id,
                    {
                        "order_id": snap.order_id,
                        "drink": None,
                        "amount": None,
                        "refund": str(RefundOutcome.VEND_UNKNOWN),
                    },
                    Effects(
                        operator={
                            "kind": OperatorKind.VEND_UNKNOWN,
                            "detail": "order record missing",
                        }
                    ),
                )
            )
            return None
        if isinstance(self.dispenser, RemoteDispenser):
            return self.step_remote(snap, order, self.dispenser)
        journal = self.dispenser.outcome(order.order_id)
        if journal is not None:
            # The driver already vended (or failed) this order: a state rolled back, or a
            # second worker; never vend it again (money rule 6).
            if snap.state == State.PAYMENT_SUCCESS:
                self.broker.transition(
                    Transition(
                        State.DISPENSING, (State.PAYMENT_SUCCESS,), order.order_id, order.values()
                    )
                )
            log.warning(
                "journal already has this order",
                extra=kv(order_id=order.order_id, vend=journal.value),
            )
            self.count_slot(order, _slot_of(order), journal, self.local_reason(order, journal))
            self.finish(order, journal)
        elif snap.state == State.PAYMENT_SUCCESS:
            slot = self.slots.choose(order.drink.id)
            fields: dict[str, float | int] = {OrderField.VEND_STARTED_AT: self.clock()}
            if slot is not None:
                fields[OrderField.SLOT] = slot
            if self.broker.transition(start_vend(order, fields)):
                if slot == 0:
                    self.no_slot(order)
                    return None
                vend = self.vend(order, slot)
                self.count_slot(order, slot, vend, self.local_reason(order, vend))
                self.finish(order, vend)
        elif order.get(OrderField.SLOT) == "0":
            self.no_slot(order)  # DISPENSING without a slot: never vended
        else:
            # Restarted mid-vend and the journal has no result: only a person can tell.
            log.warning("resuming vend", extra=kv(order_id=order.order_id, vend=Vend.UNKNOWN.value))
            self.finish(order, Vend.UNKNOWN)
        return None

    def no_slot(self, order: Order) -> None:
        """None of the drink's slots could vend when its vend was due: nothing was vended,
        the order fails and is refunded (money rule 2)."""
        log.warning(
            "no slot can vend this drink: refunding",
            extra=kv(order_id=order.order_id, drink=order.drink.id),
        )
        self.finish(order, Vend.FAILED)

    def count_slot(self, order: Order, slot: int | None, vend: Vend, reason: str | None) -> None:
        """The vend's result against its slot (cores/slots.py), once per order."""
        if not slot:
            return
        self.slots.record_vend(slot, order.order_id, vend, reason, self.slot_fail_limit)

    def local_reason(self, order: Order, vend: Vend) -> str | None:
        """The reason of the order's failed vend in the driver's journal (None: not failed,
        or no reason given)."""
        entries = getattr(self.dispenser, "entries", None)
        if entries is None or vend is not Vend.FAILED:
            return None
        reason = None
        for entry in entries():
            if entry.get("order_id") == order.order_id and entry.get("result") == Vend.FAILED.value:
                reason = entry.get("reason")
        return str(reason) if reason else None

    def remote_reason(self, order_id: str) -> str | None:
        """The reason the agent reported with a failed vend (the VEND hash's record)."""
        raw = self.broker.redis.hget(keys.key(keys.VEND, self.broker.machine_id), order_id)
        try:
            reason = json.loads(cast(str, raw)).get("reason") if raw else None
        except (ValueError, AttributeError):
            return None
        return str(reason) if reason else None

    def record_dispenser(self) -> None:
        """Copy the driver's status (serial, gpio: `status()`) to the DISPENSER hash when it
        changed: at the first step, and after each of its PINGs."""
        status_of = getattr(self.dispenser, "status", None)
        if status_of is None or isinstance(self.dispenser, RemoteDispenser):
            return
        try:
            status = dict(status_of())
        except Exception:
            log.exception("dispenser status unreadable")
            return
        if status == self._status_written:
            return
        fields = dispenser_fields(status, self._fields_written)
        try:
            key = keys.key(keys.DISPENSER, self.broker.machine_id)
            with self.broker.redis.pipeline() as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=cast(dict[FieldT, EncodableT], fields))
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("dispenser status not recorded", extra=kv(error=exc))
            return
        self._status_written, self._fields_written = status, fields

    def step_remote(self, snap: Snapshot, order: Order, remote: RemoteDispenser) -> float | None:
        """Fleet mode: start the vend the agent does, then wait for its result (or its
        deadline); cores/remote_dispenser.remote_step decides."""
        now = self.clock()
        if snap.state == State.DISPENSING and order.get(OrderField.SLOT) == "0":
            self.no_slot(order)  # never asked of the agent: no slot could vend it
            return None
        reported = remote.outcome(order.order_id)
        durable_at = order.number(OrderField.VEND_DURABLE_AT)
        if snap.state == State.DISPENSING and reported is None and durable_at is None:
            # Its WAIT fell short (or it predates the mark): the agent was never asked to vend
            # it. Ask the master again whether a replica holds this DISPENSING.
            self.broker.confirm_state(snap)
            self.broker.mark_vend_durable(order.order_id, now)
            log.info("vend asked of the machine", extra=kv(order_id=order.order_id))
            return now + remote.timeout_s
        started = durable_at if durable_at is not None else order.number(OrderField.VEND_STARTED_AT)
        decision = remote_step(
            snap.state,
            reported,
            snap.since if started is None else started,
            now,
            remote.timeout_s,
        )
        if decision.move is RemoteMove.START:
            slot = self.slots.choose(order.drink.id)
            waits = self.broker.durability.replicas > 0
            fields: dict[str, float | int] = {OrderField.VEND_STARTED_AT: now}
            if slot is not None:
                fields[OrderField.SLOT] = slot
            if slot == 0:  # never asked of the agent: no durable mark, failed at once
                if self.broker.transition(start_vend(order, fields)):
                    self.no_slot(order)
                return None
            if not waits:  # nothing to wait for: the move itself lets the gateway ask
                fields[OrderField.VEND_DURABLE_AT] = now
            if self.broker.transition(start_vend(order, fields)):  # NotDurable: looked at again
                if waits:
                    self.broker.mark_vend_durable(order.order_id, now)
                log.info("vend asked of the machine", extra=kv(order_id=order.order_id))
                return now + remote.timeout_s
            return None
        if decision.move is RemoteMove.WAIT:
            return decision.at
        assert decision.vend is not None  # FINISH names the outcome
        if snap.state == State.PAYMENT_SUCCESS:
            # The agent reported before this worker saw DISPENSING (a state rolled back, or
            # a second worker): never vend it again (money rule 6).
            self.broker.transition(
                Transition(
                    State.DISPENSING, (State.PAYMENT_SUCCESS,), order.order_id, order.values()
                )
            )
        if reported is None:
            log.warning(
                "vend not confirmed by its deadline",
                extra=kv(order_id=order.order_id, timeout_s=remote.timeout_s),
            )
        else:
            reason = self.remote_reason(order.order_id) if reported is Vend.FAILED else None
            self.count_slot(order, _slot_of(order), reported, reason)
        self.finish(order, decision.vend)
        return None

    def vend(self, order: Order, slot: int | None) -> Vend:
        assert not isinstance(self.dispenser, RemoteDispenser)  # the agent vends in fleet mode
        try:
            return self.dispenser.vend(order.order_id, order.drink.id, slot)
        except Exception:
            log.exception("vend raised", extra=kv(order_id=order.order_id))
            return self.dispenser.outcome(order.order_id) or Vend.UNKNOWN

    def finish(self, order: Order, vend: Vend) -> None:
        to, refund, outcome = rules.after_vend(vend)
        if to == State.DISPENSED:
            self.broker.transition(
                Transition(
                    State.DISPENSED,
                    (State.DISPENSING,),
                    order.order_id,
                    order.values(),
                    Effects(
                        sale={
                            "kind": Sale.DISPENSED,
                            "amount": order.amount,
                            "drink_id": order.drink.id,
                        },
                        order_fields={OrderField.OUTCOME: Outcome.DISPENSED},
                        stock_drink=order.drink.id,
                    ),
                )
            )
            return
        detail = None
        if refund:
            # The failed vend is recorded, and known durable, before its refund is sent.
            recorded: dict[str, str] = {OrderField.DISPENSE_FAILED_RECORDED: "1"}
            if order.flag(OrderField.DISPENSE_FAILED_RECORDED):
                self.broker.confirm_order(order.order_id, recorded)
            else:
                self.broker.record_sale_with_order(
                    order.order_id, Sale.DISPENSE_FAILED, recorded, amount=order.amount
                )
            result = self.refunder.refund(order.order_id, order.amount, "dispense failed")
            if result is None:  # stopping: stay DISPENSING; the next start refunds again
                return
            outcome, detail = result.outcome, result.detail
        assert outcome is not None  # after_vend names it unless a refund was asked for
        kind, operator_kind, operator_detail = rules.vend_record(outcome)
        sale: dict = {"kind": kind, "amount": order.amount}
        if outcome is RefundOutcome.REFUNDED:
            sale["refund_key"] = rules.refund_key(order.order_id)
        operator = (
            None
            if operator_kind is None
            else {
                "kind": operator_kind,
                "amount": order.amount,
                "drink": order.drink.id,
                "detail": f"{operator_detail}: {detail}" if detail else operator_detail,
            }
        )
        self.broker.transition(
            Transition(
                State.DISPENSE_FAILED,
                (State.DISPENSING,),
                order.order_id,
                {**order.values(), "refund": str(outcome)},
                Effects(
                    sale=sale,
                    operator=operator,
                    order_fields={OrderField.OUTCOME: Outcome.DISPENSE_FAILED.detail(outcome)},
                ),
            )
        )


def start_vend(order: Order, fields: Mapping[str, float | int]) -> Transition:
    """PAYMENT_SUCCESS -> DISPENSING of `order`, with the order fields the vend starts with
    (its start time, its slot, and the durable mark where no replica is asked for)."""
    return Transition(
        State.DISPENSING,
        (State.PAYMENT_SUCCESS,),
        order.order_id,
        order.values(),
        Effects(order_fields=dict(fields)),
    )


def build(
    settings: Settings,
    broker: Broker,
    session: requests.Session | None = None,
    remote: bool = False,
) -> DispenseWorker:
    """The worker of `broker`'s machine. Fleet mode: `remote` (the machine's agent vends) and
    the process's shared HTTP `session`."""
    client = MidtransClient.from_settings(settings, session, observer=GatewayRecorder(broker))
    dispenser: Dispenser | RemoteDispenser = (
        RemoteDispenser(broker, settings.vend_timeout_s + REMOTE_VEND_MARGIN_S)
        if remote
        else dispenser_from_settings(settings)
    )
    return DispenseWorker(broker, client, dispenser, slot_fail_limit=settings.slot_fail_limit)


def _slot_of(order: Order) -> int | None:
    """The slot chosen for the order's vend (None: none recorded)."""
    raw = order.get(OrderField.SLOT)
    return int(raw) if raw and raw.isdigit() and int(raw) > 0 else None


def dispenser_fields(status: dict, before: dict[str, str] | None) -> dict[str, str]:
    """The DISPENSER hash of a driver's `status()`: driver, port, firmware, alive ("1"/"0"),
    checked_at, and last_seen (when the board last answered; kept from `before` when the
    last PING went unanswered)."""
    fields = {
        "driver": str(status.get("driver") or ""),
        "port": str(status.get("port") or ""),
        "firmware": str(status.get("firmware") or ""),
        "alive": "1" if status.get("alive") else "0",
        "checked_at": str(status.get("checked_at") or ""),
    }
    if status.get("alive") and status.get("checked_at"):
        fields["last_seen"] = str(status["checked_at"])
    elif before is not None and before.get("last_seen"):
        fields["last_seen"] = str(before["last_seen"])
    return fields
