"""ORDER worker: on MENU_CLICKED, creates the Midtrans charge and shows its QR (ORDER_CREATED).

The order_id and Idempotency-Key were stored with the order before any charge is sent, so a
worker restarted mid-charge re-sends the same key and gets the same answer (money rule 5).
"""

from __future__ import annotations

import logging

import requests

from constants.orders import Command, OrderField
from constants.states import FailReason, Sale, State
from cores import rules
from cores.broker import Broker, Order, Snapshot
from cores.config import Settings
from cores.logs import kv
from cores.machine import Effects, Transition
from cores.metrics import GatewayRecorder
from cores.midtrans import GatewayRefused, MidtransClient, MidtransError, Transaction
from cores.rules import Step
from services import payment
from services.payment import PaymentWorker

log = logging.getLogger(__name__)


class OrderWorker(PaymentWorker):
    service = "ORDER"
    states = frozenset({State.MENU_CLICKED})
    commands = frozenset({Command.CANCEL})

    def step(self, snap: Snapshot, entries: list) -> float | None:
        if snap.state != State.MENU_CLICKED:
            return None
        order = self.broker.order(snap.order_id)
        if order is None:
            payment.order_missing(self.broker, snap.order_id, State.MENU_CLICKED)
        elif order.flag(OrderField.CANCEL_REQUESTED) and not order.flag(OrderField.CHARGE_SENT):
            # Nothing was sent to Midtrans: no QR exists that could be paid.
            payment.fail(self.broker, order, FailReason.CANCELLED, State.MENU_CLICKED)
        else:
            self.charge(order)
        return None

    def charge(self, order: Order) -> None:
        self.broker.update_order(
            order.order_id,
            **{OrderField.CHARGE_SENT: 1, OrderField.PAYMENT_TYPE: self.settings.payment_type},
        )
        try:
            txn = self.client.charge(
                order.order_id,
                order.amount,
                [order.item()],
                payment_type=self.settings.payment_type,
                idempotency_key=order.idempotency_key,
                expiry_minutes=rules.charge_expiry_minutes(self.settings.payment_deadline_s),
                metadata={"machine_id": self.settings.machine_id},
            )
        except MidtransError as exc:
            refused = exc.code if isinstance(exc, GatewayRefused) else None
            log.warning(
                "charge failed",
                extra=kv(order_id=order.order_id, code=refused or "-", error=str(exc)),
            )
            decision, record = rules.charge_error(refused)
            detail = None
            why: dict[str, str] = {"error": str(exc)}
            if isinstance(exc, GatewayRefused):
                detail = f"{exc.code}: {exc.message}"
                why = {"code": exc.code, "message": exc.message}
            if record:
                self.broker.record_sale(order.order_id, Sale.CHARGE_FAILED, **why)
            if decision.step is Step.CLOSE:
                self.close(order, decision.reason or FailReason.GATEWAY_UNREACHABLE)
            else:
                payment.fail(
                    self.broker,
                    order,
                    FailReason.GATEWAY_REFUSED,
                    State.MENU_CLICKED,
                    detail=detail,
                )
            return
        self.created(order, txn)

    def created(self, order: Order, txn: Transaction) -> None:
        paid, reason = rules.judge_payment(
            txn.transaction_status, txn.fraud_status, txn.amount_idr, order.amount
        )
        if paid is rules.Paid.UNPAID:
            payment.fail(self.broker, order, reason or FailReason.DENIED, State.MENU_CLICKED)
            return
        order = self.broker.order(order.order_id) or order  # cancel may have come meanwhile
        now = self.clock()
        expires_at = rules.kiosk_deadline(now, self.settings.payment_deadline_s, txn.expiry_epoch)
        gateway_expiry = txn.expiry_epoch or now + 60 * rules.charge_expiry_minutes(
            self.settings.payment_deadline_s
        )
        values = {
            **order.values(),
            "item_details": [order.item()],
            "transaction_details": {"order_id": order.order_id, "gross_amount": order.amount},
            "qr_string": txn.qr_string,
            "qr_image_url": None if txn.qr_string else txn.qr_image_url,
            "payment_type": txn.payment_type,
            "expires_at": int(expires_at),
            "closing": order.flag(OrderField.CANCEL_REQUESTED),
        }
        self.broker.transition(
            Transition(
                State.ORDER_CREATED,
                (State.MENU_CLICKED,),
                order.order_id,
                values,
                Effects(
                    sale={
                        "kind": Sale.CHARGED,
                        "amount": order.amount,
                        "transaction_id": txn.transaction_id,
                        "payment_type": txn.payment_type,
                    },
                    order_fields={
                        OrderField.TRANSACTION_ID: txn.transaction_id,
                        OrderField.EXPIRES_AT: expires_at,
                        OrderField.GATEWAY_EXPIRY: gateway_expiry,
                        OrderField.FRAME_VALUES: values,
                    },
                ),
            )
        )

    def close(self, order: Order, reason: FailReason) -> None:
        """Cancel a charge whose QR nobody saw; honour it if it was paid all the same."""
        decision, txn = payment.close_at_gateway(self.client, order, reason, self.clock())
        decision = rules.unseen_charge_outcome(
            decision, reason, self.clock(), self.settings.payment_deadline_s
        )
        payment.act(self.broker, order, decision, txn, State.MENU_CLICKED)


def build(
    settings: Settings, broker: Broker, session: requests.Session | None = None
) -> OrderWorker:
    """The worker of `broker`'s machine; fleet mode passes the process's shared `session`."""
    client = MidtransClient.from_settings(settings, session, observer=GatewayRecorder(broker))
    return OrderWorker(broker, client, settings)
