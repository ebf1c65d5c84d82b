"""The sandbox's ledger: every transaction, its state changes, and the expiry of its QR.

Transitions (shared/midtrans.md)::

    charge -> pending -> settlement (the simulator's pay) -> partial_refund -> refund
                      -> deny (the simulator's deny)       `-> refund
                      -> cancel, expire (the API, or the expiry timer)

After cancel, expire, deny or failure the order_id may be charged again: the ledger keeps
both transactions, and the order_id then names the newest.

Threads: the callers' (one per HTTP connection), and an expiry timer that sleeps on a
condition until the next QR expiry. One lock guards every transaction; `on_change` (the
notifier) is called with it held, after each change. Expiry is also computed lazily from the
injectable clock on every call, so a test that moves its clock past an expiry sees `expire`
(and its notification) on the next read without waiting.

Persistence: given a directory, the ledger replays its journal at `open()` and appends every
change to it (sandbox/journal.py: JSON Lines, one whole transaction record per change), so it
survives a restart. Without one it lives in memory only.
"""

from __future__ import annotations

import io
import itertools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import segno

from cores import qris
from cores.logs import kv
from cores.midtrans_wire import FINAL_UNPAID_STATUSES
from sandbox import transaction as bodies
from sandbox.journal import Journal
from sandbox.messages import (
    MSG_CANNOT_MODIFY,
    MSG_DUPLICATE_ORDER,
    MSG_NOT_FOUND,
    SandboxError,
    invalid,
)
from sandbox.transaction import Refund, Transaction
from sandbox.validation import Charge, RefundAsk, check_refund

log = logging.getLogger(__name__)

#: A refund is allowed from these.
REFUNDABLE = frozenset({"settlement", "partial_refund"})
#: The expiry timer re-checks at least this often (an injected or adjusted clock may jump).
EXPIRY_WAIT_MAX_S = 60.0
#: GET /status/b2b pages: the default page size and the largest.
B2B_PER_PAGE = 10
B2B_MAX_PER_PAGE = 100


@dataclass(frozen=True)
class Merchant:
    """Whose QR codes these are: written into every qr_string and answer."""

    merchant_id: str = "G000000001"
    name: str = "DRINK MACHINE"
    city: str = "JAKARTA"


class Ledger:
    """The transactions, by Unix-seconds `clock`. `on_change(txn)` follows every change."""

    def __init__(
        self,
        clock: Callable[[], float],
        merchant: Merchant,
        on_change: Callable[[Transaction], None],
    ) -> None:
        self._clock = clock
        self.merchant = merchant
        self._on_change = on_change
        self._lock = threading.Lock()
        self._expiry_cond = threading.Condition(self._lock)
        self._txns: list[Transaction] = []
        self._by_tid: dict[str, Transaction] = {}
        self._by_order: dict[str, Transaction] = {}
        self._by_ref: dict[str, Transaction] = {}
        self._pending: dict[str, Transaction] = {}
        self._next_expiry: float | None = None
        self._refund_keys: dict[str, tuple[Transaction, Refund]] = {}
        self._chargeback_seq = itertools.count(1)
        self._journal: Journal | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self, directory: Path | str | None) -> None:
        """Replay the journal in `directory` and record every change there from now on; with
        None, keep the ledger in memory only."""
        if directory is None:
            return
        journal = Journal(directory)
        records = journal.open()
        with self._lock:
            for record in records:
                try:
                    txn = Transaction.from_record(record)
                except (KeyError, TypeError) as exc:
                    log.warning(
                        "sandbox ledger record skipped: %r", exc, extra=kv(path=journal.path)
                    )
                    continue
                self._add(txn)
            seen = [r.chargeback_id for t in self._txns for r in t.refunds]
            self._chargeback_seq = itertools.count(max(seen, default=0) + 1)
            self._journal = journal

    def close(self) -> None:
        """End the expiry timer and close the journal."""
        with self._lock:
            self._closed = True
            self._expiry_cond.notify_all()
            if self._journal is not None:
                self._journal.close()

    def run_expiry_timer(self) -> None:
        """Expire pending transactions as their QR runs out, until `close()`."""
        with self._lock:
            while not self._closed:
                now = self._clock()
                self._expire_due(now)
                timeout = None
                if self._next_expiry is not None:
                    timeout = min(max(self._next_expiry - now, 0.01), EXPIRY_WAIT_MAX_S)
                self._expiry_cond.wait(timeout)

    def check_expiries(self) -> None:
        """Expire what is due by the clock now."""
        with self._lock:
            self._expire_due(self._clock())

    # -- reads -------------------------------------------------------------------------------

    def status(self, ident: str, hide_paid_s: float = 0) -> dict[str, Any]:
        """The status answer of a transaction (by order_id or transaction_id); 404."""
        with self._lock:
            now = self._clock()
            self._expire_due(now)
            return bodies.status_body(self._find(ident), now, hide_paid_s)

    def status_b2b(
        self, ident: str, page: int = 0, per_page: int = B2B_PER_PAGE, hide_paid_s: float = 0
    ) -> dict[str, Any]:
        """Every transaction of the order `ident` names, newest first, one page of them; 404."""
        with self._lock:
            now = self._clock()
            self._expire_due(now)
            order_id = self._find(ident).order_id
            same = [t for t in reversed(self._txns) if t.order_id == order_id]
            shown = same[page * per_page : (page + 1) * per_page]
            return {
                "status_code": "200",
                "status_message": "Success, transactions are retrieved",
                "transactions": [bodies.status_body(t, now, hide_paid_s) for t in shown],
            }

    def entries(self, base: str, status: str | None = None) -> list[dict[str, Any]]:
        """The ledger as status bodies with the true status, QR and refunds, oldest first;
        only those with `status` when given."""
        with self._lock:
            self._expire_due(self._clock())
            return [
                bodies.ledger_body(t, base)
                for t in self._txns
                if status is None or t.status == status
            ]

    def qr_png(self, tid: str | None = None, ref: str | None = None) -> bytes:
        """The PNG of a transaction's QR, by transaction_id or QR reference; 404."""
        with self._lock:
            txn = self._by_tid.get(tid or "") if tid else self._by_ref.get(ref or "")
            if txn is None:
                raise SandboxError("404", MSG_NOT_FOUND)
            png, payload = txn.png, txn.qr_string
        if png is None:
            buffer = io.BytesIO()
            segno.make_qr(payload, error="m").save(buffer, kind="png", scale=6, border=4)
            png = buffer.getvalue()
            with self._lock:
                txn.png = png
        return png

    # -- changes -----------------------------------------------------------------------------

    def charge(
        self, charge: Charge, server_key: str, urls: list[str], base: str, *, bad_qr: bool = False
    ) -> dict[str, Any]:
        """A new pending transaction and its charge answer; 406 while the order_id is pending
        or paid. `bad_qr` (the BAD_QR fault): its qr_string carries a wrong CRC."""
        with self._lock:
            now = self._clock()
            self._expire_due(now)
            existing = self._by_order.get(charge.order_id)
            if existing is not None and existing.status not in FINAL_UNPAID_STATUSES:
                raise SandboxError("406", MSG_DUPLICATE_ORDER)
            tid = str(uuid.uuid4())
            ref = "A" + tid.replace("-", "")[:24].upper()
            qr_string = qris.build(
                merchant_name=self.merchant.name,
                merchant_city=self.merchant.city,
                merchant_id=self.merchant.merchant_id,
                reference=ref,
                amount=charge.gross_amount,
                acquirer=charge.acquirer,
            )
            if bad_qr:
                qr_string = qr_string[:-4] + ("0000" if qr_string[-4:] != "0000" else "FFFF")
            txn = Transaction(
                order_id=charge.order_id,
                transaction_id=tid,
                merchant_id=self.merchant.merchant_id,
                charged_type=charge.payment_type,
                acquirer=charge.acquirer,
                gross_amount=charge.gross_amount,
                created_at=now,
                expires_at=now + charge.expiry_s,
                server_key=server_key,
                notify_urls=urls,
                qr_string=qr_string,
                qr_ref=ref,
                metadata=charge.metadata,
            )
            self._add(txn)
            self._expiry_cond.notify_all()
            self._change(txn, "pending")
            return bodies.charge_answer(txn, base)

    def settle(self, ident: str, status: str, base: str) -> dict[str, Any]:
        """The simulator: the customer paid ("settlement") or was refused ("deny"). Answers
        the ledger entry; 404 unknown, 412 not pending."""
        with self._lock:
            txn, now = self._pending_txn(ident)
            if status == "settlement":
                txn.paid_at = now
                # A GoPay QR scanned by any QRIS app settles as qris (shared/midtrans.md).
                txn.payment_type = "qris"
            self._change(txn, status)
            return bodies.ledger_body(txn, base)

    def end(self, ident: str, action: str, body_problem: str | None = None) -> dict[str, Any]:
        """POST cancel / expire: 404 unknown, 412 not pending, then 400 for `body_problem`."""
        with self._lock:
            txn, _ = self._pending_txn(ident)
            if body_problem is not None:
                raise invalid(body_problem)
            if action == "cancel":
                self._change(txn, "cancel")
                return bodies.action_answer(txn, "200", "Success, transaction is canceled")
            self._change(txn, "expire")
            return bodies.action_answer(txn, "407", "Success, transaction is expired")

    def refund(self, ident: str, ask: RefundAsk, *, enabled: bool = True) -> dict[str, Any]:
        """POST refund, in Midtrans's order of checks: 404 unknown; a replayed refund_key
        gets its first answer, one reused for another refund 406; 412 when the state (or
        `enabled`, the REFUND_DISABLED fault) forbids it; 400 malformed; 414 bad amount."""
        with self._lock:
            now = self._clock()
            self._expire_due(now)
            txn = self._find(ident)
            key, amount = ask.refund_key, ask.amount
            if isinstance(key, str) and key in self._refund_keys:
                used_txn, used = self._refund_keys[key]
                if used_txn is txn and (amount is None or amount == used.amount):
                    return dict(used.answer)
                raise SandboxError(
                    "406", f"refund_key {key} has already been used for another refund"
                )
            if txn.status not in REFUNDABLE or not enabled:
                raise SandboxError("412", MSG_CANNOT_MODIFY)
            check_refund(ask)
            left = txn.gross_amount - txn.refunded
            if amount is None:
                amount = left
            assert isinstance(amount, int | float)
            if amount != int(amount) or not 0 < amount <= left:
                raise SandboxError("414", "Refund amount is invalid")
            refund = Refund(
                key=key if isinstance(key, str) else f"sb-{uuid.uuid4()}",
                amount=int(amount),
                reason=str(ask.reason),
                at=now,
                chargeback_id=next(self._chargeback_seq),
                chargeback_uuid=str(uuid.uuid4()),
            )
            txn.refunds.append(refund)
            self._refund_keys[refund.key] = (txn, refund)
            status = "refund" if txn.refunded >= txn.gross_amount else "partial_refund"
            refund.answer = bodies.refund_answer(txn, refund, status)
            self._change(txn, status)
            return dict(refund.answer)

    def judge_challenge(self, ident: str) -> NoReturn:
        """POST approve / deny: only a card transaction in review (fraud_status challenge)
        may be judged, and this sandbox makes none: 404 unknown, else 412."""
        with self._lock:
            self._expire_due(self._clock())
            self._find(ident)
            raise SandboxError("412", MSG_CANNOT_MODIFY)

    # -- with the lock held ------------------------------------------------------------------

    def _add(self, txn: Transaction) -> None:
        self._txns.append(txn)
        self._by_tid[txn.transaction_id] = txn
        self._by_order[txn.order_id] = txn
        self._by_ref[txn.qr_ref] = txn
        for refund in txn.refunds:
            self._refund_keys[refund.key] = (txn, refund)
        if txn.status == "pending":
            self._pending[txn.transaction_id] = txn
            if self._next_expiry is None or txn.expires_at < self._next_expiry:
                self._next_expiry = txn.expires_at

    def _find(self, ident: str) -> Transaction:
        txn = self._by_tid.get(ident) or self._by_order.get(ident)
        if txn is None:
            raise SandboxError("404", MSG_NOT_FOUND)
        return txn

    def _pending_txn(self, ident: str) -> tuple[Transaction, float]:
        """The pending transaction `ident` and the time now; 404 unknown, 412 not pending."""
        now = self._clock()
        self._expire_due(now)
        txn = self._find(ident)
        if txn.status != "pending":
            raise SandboxError("412", MSG_CANNOT_MODIFY)
        return txn, now

    def _change(self, txn: Transaction, status: str) -> None:
        """Move `txn` to `status`: log it, record it, notify."""
        txn.status = status
        if status != "pending":
            self._pending.pop(txn.transaction_id, None)
        log.info(
            "transaction %s",
            status,
            extra=kv(
                order_id=txn.order_id,
                transaction_id=txn.transaction_id,
                status=status,
                payment_type=txn.payment_type,
                amount=txn.gross_amount,
                refunded=txn.refunded,
            ),
        )
        if self._journal is not None:
            self._journal.append(txn.record())
        self._on_change(txn)

    def _expire_due(self, now: float) -> None:
        if self._next_expiry is None or now < self._next_expiry:
            return
        for txn in list(self._pending.values()):
            if txn.expires_at <= now:
                self._change(txn, "expire")
        self._next_expiry = min((t.expires_at for t in self._pending.values()), default=None)
