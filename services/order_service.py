"""ORDER worker: on MENU_CLICKED, creates the Midtrans charge and shows its QR (ORDER_CREATED).

The order_id and Idempotency-Key were stored with the order before any charge is sent, so a
worker restarted mid-charge re-sends the same key and gets the same answer (money rule 5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from constants.states import FailReason, Sale, State
from constants.tunables import RECHECK_AFTER_EXPIRY_S
from cores import rules
from cores.broker import Broker, Order, Snapshot
from cores.config import Settings
from cores.logs import kv
from cores.midtrans import (
    GatewayRefused,
    MidtransClient,
    MidtransError,
    Transaction,
)
from cores.rules import Step
from services import payment
from services.worker import Worker

log = logging.getLogger(__name__)


class OrderWorker(Worker):
    service = "ORDER"

    def __init__(self, broker: Broker, client: MidtransClient, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(broker, clock)
        self.client = client
        self.settings = settings

    def step(self, snap: Snapshot, entries: list) -> float | None:
        if snap.state != State.MENU_CLICKED:
            return None
        order = self.broker.order(snap.order_id)
        if order is None:
            log.error("order missing", extra=kv(order_id=snap.order_id))
            payment.order_missing(self.broker, snap.order_id, State.MENU_CLICKED)
            return None
        if order.flag("cancel_requested") and not order.flag("charge_sent"):
            # Nothing was sent to Midtrans: no QR exists that could be paid.
            payment.fail(self.broker, order, FailReason.CANCELLED, State.MENU_CLICKED)
            return None
        self.charge(order)
        return None

    def charge(self, order: Order) -> None:
        self.broker.update_order(order.order_id, charge_sent=1,
                                 payment_type=self.settings.payment_type)
        try:
            txn = self.client.charge(
                order.order_id, order.amount,
                [{"id": order.drink.id, "price": order.amount, "quantity": 1,
                  "name": order.drink.name}],
                payment_type=self.settings.payment_type,
                idempotency_key=order.idempotency_key,
                expiry_minutes=rules.charge_expiry_minutes(self.settings.payment_deadline_s),
                metadata={"machine_id": self.settings.machine_id})
        except GatewayRefused as exc:
            log.warning("charge refused", extra=kv(order_id=order.order_id, code=exc.code,
                                                  message=exc.message))
            if exc.code == "406":
                # The order_id is already charged (a retry beyond the idempotency window):
                # that charge's QR was never shown, so close it and honour it if paid.
                self.close(order, FailReason.GATEWAY_REFUSED)
                return
            self.broker.record_sale(order.order_id, Sale.CHARGE_FAILED, code=exc.code,
                                    message=exc.message)
            payment.fail(self.broker, order, FailReason.GATEWAY_REFUSED, State.MENU_CLICKED,
                         detail=f"{exc.code}: {exc.message}")
            return
        except MidtransError as exc:
            log.warning("charge failed", extra=kv(order_id=order.order_id, error=str(exc)))
            self.broker.record_sale(order.order_id, Sale.CHARGE_FAILED, error=str(exc))
            # A charge may exist that nobody has seen; cancel it so it can never be paid.
            self.close(order, FailReason.GATEWAY_UNREACHABLE)
            return
        self.created(order, txn)

    def created(self, order: Order, txn: Transaction) -> None:
        paid, reason = rules.judge_payment(txn.transaction_status, txn.fraud_status,
                                           txn.amount_idr, order.amount)
        if paid is rules.Paid.UNPAID:
            payment.fail(self.broker, order, reason or FailReason.DENIED, State.MENU_CLICKED)
            return
        order = self.broker.order(order.order_id) or order  # cancel may have come meanwhile
        expires_at = rules.kiosk_deadline(self.clock(), self.settings.payment_deadline_s,
                                          txn.expiry_epoch)
        values = {
            **order.values(),
            "item_details": [{"id": order.drink.id, "price": order.amount, "quantity": 1,
                              "name": order.drink.name}],
            "transaction_details": {"order_id": order.order_id, "gross_amount": order.amount},
            "qr_string": txn.qr_string,
            "qr_image_url": None if txn.qr_string else txn.qr_image_url,
            "payment_type": txn.payment_type,
            "expires_at": int(expires_at),
            "closing": order.flag("cancel_requested"),
        }
        self.broker.transition(
            State.ORDER_CREATED, from_states=(State.MENU_CLICKED,), order_id=order.order_id,
            values=values,
            sale={"kind": Sale.CHARGED, "amount": order.amount,
                  "transaction_id": txn.transaction_id, "payment_type": txn.payment_type},
            order_fields={"transaction_id": txn.transaction_id, "expires_at": expires_at,
                          "gateway_expiry": txn.expiry_epoch or self.clock() + 60
                          * rules.charge_expiry_minutes(self.settings.payment_deadline_s),
                          "frame_values": values})

    def close(self, order: Order, reason: FailReason) -> None:
        decision, txn = payment.close_at_gateway(self.client, order, reason, self.clock())
        if decision.step is Step.CLOSE:
            # The gateway could not confirm: nobody saw a QR, so nobody can pay it; the
            # charge's own expiry ends it, and a late payment is refunded (money rule 4).
            expiry = rules.charge_expiry_minutes(self.settings.payment_deadline_s) * 60
            payment.fail(self.broker, order, reason, State.MENU_CLICKED,
                         recheck_at=self.clock() + expiry + RECHECK_AFTER_EXPIRY_S)
        elif decision.step is Step.FAIL and decision.reason != FailReason.AMOUNT_MISMATCH:
            payment.fail(self.broker, order, reason, State.MENU_CLICKED)
        else:
            payment.act(self.broker, order, decision, txn, State.MENU_CLICKED)


def build(settings: Settings, broker: Broker) -> OrderWorker:
    return OrderWorker(broker, MidtransClient.from_settings(settings), settings)
