"""cores.midtrans against the local sandbox over real HTTP: every call, every error family,
retries under the sandbox's faults, idempotent charges, and signed notifications."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cores.midtrans import (
    GatewayRefused,
    GatewayTimeout,
    GatewayUnreachable,
    MidtransClient,
    Transaction,
    verify_signature,
)
from sandbox import Sandbox
from tests import sandbox_helpers

KEY = "SB-Mid-server-client-tests"
ITEMS = [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}]
_serial = itertools.count(1)


def new_order_id() -> str:
    return f"vm-t-{time.strftime('%Y%m%d')}-{next(_serial):06d}-{random.randrange(16**6):06x}"


class RecordingSession(requests.Session):
    """A real session that remembers the HTTP status of every answer it got."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().request(*args, **kwargs)
        self.statuses.append(response.status_code)
        return response


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(host="127.0.0.1", port=0, server_key=KEY)
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture
def sandbox(shared_sandbox: Sandbox) -> Iterator[Sandbox]:
    """The module's sandbox (each test uses its own order_ids), its faults off after a test."""
    yield shared_sandbox
    shared_sandbox.set_faults(**dict.fromkeys(shared_sandbox.faults, 0))


@pytest.fixture
def seeded_sandbox() -> Iterator[Sandbox]:
    """A sandbox of its own whose random faults roll the same way on every run."""
    sb = Sandbox(host="127.0.0.1", port=0, server_key=KEY, seed=1234)
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture
def make_client(sandbox: Sandbox) -> Iterator[Any]:
    """Clients with test-sized timeouts; each records the HTTP statuses it saw."""
    made: list[MidtransClient] = []

    def make(key: str = KEY, *, gateway: Sandbox = sandbox, **options: Any) -> MidtransClient:
        settings: dict[str, Any] = {
            "connect_timeout": 0.5,
            "read_timeout": 0.5,
            "retry_attempts": 4,
            "retry_budget_s": 3.0,
            "retry_base_s": 0.01,
            "rng": random.Random(1),
        }
        settings.update(options)
        client = MidtransClient(gateway.url, key, RecordingSession(), **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.session.close()


@pytest.fixture
def client(make_client: Any) -> MidtransClient:
    return make_client()


receiver = sandbox_helpers.receiver


def charge(client: MidtransClient, order_id: str | None = None, **options: Any) -> Transaction:
    order_id = order_id or new_order_id()
    options.setdefault("idempotency_key", f"key-{order_id}")
    return client.charge(order_id, 7000, ITEMS, **options)


def ledger(sandbox: Sandbox, order_id: str) -> list[dict[str, Any]]:
    return [t for t in sandbox.transactions() if t["order_id"] == order_id]


# --------------------------------------------------------------------------------------------
# Every call


def test_qris_charge_is_pending_with_a_qr_string_an_image_url_and_an_expiry(client):
    order_id = new_order_id()
    before = time.time()
    txn = charge(client, order_id, expiry_minutes=15)
    assert txn.order_id == order_id and txn.transaction_id
    assert (txn.status_code, txn.transaction_status) == ("201", "pending")
    assert txn.is_pending and txn.payment_type == "qris"
    assert txn.gross_amount == "7000.00" and txn.amount_idr == 7000
    assert txn.qr_string
    assert txn.qr_image_url and txn.qr_image_url.startswith("http")
    assert txn.expiry_epoch is not None
    assert before + 14 * 60 < txn.expiry_epoch < before + 16 * 60


def test_gopay_charge_has_no_qr_string_and_settles_as_qris_when_scanned(client, sandbox):
    order_id = new_order_id()
    txn = charge(client, order_id, payment_type="gopay")
    assert txn.is_pending and txn.payment_type == "gopay"
    assert txn.qr_string is None
    assert txn.qr_image_url
    sandbox.pay(order_id)
    paid = client.status(order_id)
    assert paid.is_paid and paid.payment_type == "qris"


def test_status_of_a_pending_charge_is_pending(client):
    order_id = charge(client).order_id
    txn = client.status(order_id)
    assert (txn.status_code, txn.transaction_status) == ("201", "pending")
    assert txn.raw["order_id"] == order_id


def test_status_after_payment_is_settlement_and_paid(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    txn = client.status(order_id)
    assert (txn.status_code, txn.transaction_status) == ("200", "settlement")
    assert txn.is_paid and txn.settlement_time


def test_status_after_the_simulator_http_pay_is_settlement(client, sandbox):
    order_id = charge(client).order_id
    requests.post(f"{sandbox.url}/simulator/pay/{order_id}", timeout=5).raise_for_status()
    assert client.status(order_id).is_paid


def test_status_after_a_deny_is_202_and_final_unpaid(client, sandbox):
    order_id = charge(client).order_id
    sandbox.deny(order_id)
    txn = client.status(order_id)
    assert (txn.status_code, txn.transaction_status) == ("202", "deny")
    assert txn.is_final_unpaid


def test_expire_answers_407_and_status_then_says_expired(client):
    order_id = charge(client).order_id
    expired = client.expire(order_id)
    assert (expired.status_code, expired.transaction_status) == ("407", "expire")
    txn = client.status(order_id)
    assert (txn.status_code, txn.transaction_status) == ("407", "expire")
    assert txn.is_final_unpaid


def test_cancel_of_a_pending_charge_answers_cancel(client, sandbox):
    order_id = charge(client).order_id
    txn = client.cancel(order_id)
    assert (txn.status_code, txn.transaction_status) == ("200", "cancel")
    assert client.status(order_id).is_final_unpaid
    assert [t["transaction_status"] for t in ledger(sandbox, order_id)] == ["cancel"]


def test_a_second_cancel_is_refused_412_so_callers_re_read_the_status(client):
    order_id = charge(client).order_id
    client.cancel(order_id)
    with pytest.raises(GatewayRefused) as caught:
        client.cancel(order_id)
    assert caught.value.code == "412"
    assert client.status(order_id).transaction_status == "cancel"


def test_a_cancel_whose_answer_was_lost_is_retried_and_still_answers_cancel(make_client, sandbox):
    order_id = charge(make_client()).order_id
    sandbox.set_faults(DROP_RATE=1)  # carried out, answer lost

    def sleep(seconds: float) -> None:
        sandbox.set_faults(DROP_RATE=0)

    txn = make_client(sleep=sleep).cancel(order_id)
    assert txn.transaction_status == "cancel"
    assert [t["transaction_status"] for t in ledger(sandbox, order_id)] == ["cancel"]


def test_cancel_of_a_paid_charge_is_refused_412(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    with pytest.raises(GatewayRefused) as caught:
        client.cancel(order_id)
    assert caught.value.code == "412"
    assert client.status(order_id).is_paid


def test_refund_of_a_settled_charge_answers_refund(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    txn = client.refund(order_id, refund_key=f"{order_id}-r1", amount=7000, reason="jammed")
    assert txn.status_code == "200"
    assert txn.transaction_status == "refund" and txn.is_refunded
    assert txn.refund_amount == "7000.00"
    assert client.status(order_id).transaction_status == "refund"


def test_a_refund_repeated_with_its_key_refunds_once(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    first = client.refund(order_id, refund_key=f"{order_id}-r1", amount=7000, reason="jammed")
    again = client.refund(order_id, refund_key=f"{order_id}-r1", amount=7000, reason="jammed")
    assert again.transaction_status == first.transaction_status == "refund"
    assert client.status(order_id).refund_amount == "7000.00"


def test_refund_when_the_merchant_has_no_online_refunds_is_refused_412(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    sandbox.set_faults(REFUND_DISABLED=1)
    with pytest.raises(GatewayRefused) as caught:
        client.refund(order_id, refund_key=f"{order_id}-r1", amount=7000, reason="jammed")
    assert caught.value.code == "412"
    assert client.status(order_id).is_paid


def test_partial_refunds_add_up_and_more_than_is_left_is_refused_414(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    part = client.refund(order_id, refund_key=f"{order_id}-r1", amount=3000, reason="half")
    assert part.transaction_status == "partial_refund"
    assert part.refund_amount == "3000.00"
    with pytest.raises(GatewayRefused) as caught:
        client.refund(order_id, refund_key=f"{order_id}-r2", amount=5000, reason="too much")
    assert caught.value.code == "414"


def test_a_refund_key_reused_for_another_amount_is_refused_406(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    client.refund(order_id, refund_key=f"{order_id}-r1", amount=3000, reason="half")
    with pytest.raises(GatewayRefused) as caught:
        client.refund(order_id, refund_key=f"{order_id}-r1", amount=2000, reason="other")
    assert caught.value.code == "406"


def test_refund_of_a_pending_charge_is_refused_412(client):
    order_id = charge(client).order_id
    with pytest.raises(GatewayRefused) as caught:
        client.refund(order_id, refund_key=f"{order_id}-r1", amount=7000, reason="x")
    assert caught.value.code == "412"


# --------------------------------------------------------------------------------------------
# Refusals


def test_a_wrong_server_key_is_refused_401(make_client):
    with pytest.raises(GatewayRefused) as caught:
        charge(make_client(key="SB-Mid-server-not-this-one"))
    assert caught.value.code == "401"
    assert caught.value.attempts == 1


def test_status_of_an_unknown_order_is_refused_404(client):
    with pytest.raises(GatewayRefused) as caught:
        client.status(new_order_id())
    assert caught.value.code == "404"


def test_charging_a_pending_order_id_again_with_another_key_is_refused_406(client):
    order_id = charge(client).order_id
    with pytest.raises(GatewayRefused) as caught:
        charge(client, order_id, idempotency_key=f"other-{order_id}")
    assert caught.value.code == "406"


def test_a_charge_whose_items_do_not_add_up_is_refused_400_with_reasons(client):
    with pytest.raises(GatewayRefused) as caught:
        client.charge(new_order_id(), 8000, ITEMS, idempotency_key="k-mismatch")
    assert caught.value.code == "400"
    assert caught.value.validation_messages
    assert any("gross_amount" in m for m in caught.value.validation_messages)


def test_an_unknown_payment_type_is_refused_400(client):
    with pytest.raises(GatewayRefused) as caught:
        charge(client, payment_type="bitcoin")
    assert caught.value.code == "400"
    assert caught.value.validation_messages


def test_a_disabled_payment_channel_is_refused_402(client, sandbox):
    sandbox.set_faults(CHANNEL_DISABLED=1)
    with pytest.raises(GatewayRefused) as caught:
        charge(client)
    assert caught.value.code == "402"


def test_an_error_body_with_http_200_still_raises(make_client, sandbox):
    sandbox.set_faults(HTTP200_ERRORS=1)
    client = make_client()
    with pytest.raises(GatewayRefused) as caught:
        client.status(new_order_id())
    assert caught.value.code == "404"
    with pytest.raises(GatewayRefused) as caught:
        charge(make_client(key="SB-Mid-server-not-this-one"))
    assert caught.value.code == "401"
    assert client.session.statuses == [200]


# --------------------------------------------------------------------------------------------
# Retries


def test_a_slow_gateway_raises_gateway_timeout_within_the_budget(make_client, sandbox):
    order_id = charge(make_client()).order_id
    sandbox.set_faults(LATENCY_MS=2000)
    client = make_client(read_timeout=0.2, retry_attempts=10, retry_budget_s=0.8)
    start = time.monotonic()
    with pytest.raises(GatewayTimeout) as caught:
        client.status(order_id)
    elapsed = time.monotonic() - start
    assert caught.value.attempts >= 2
    assert elapsed < 0.8 + 1.0  # the budget, plus slack for a busy machine


def test_status_reads_under_server_errors_succeed_after_retries(make_client, seeded_sandbox):
    order_id = charge(make_client(gateway=seeded_sandbox)).order_id
    seeded_sandbox.set_faults(ERROR_RATE=0.5)
    client = make_client(gateway=seeded_sandbox, retry_attempts=25, retry_budget_s=10.0)
    reads = [client.status(order_id) for _ in range(10)]
    assert all(txn.is_pending for txn in reads)
    failures = [s for s in client.session.statuses if s != 200]
    assert len(client.session.statuses) == 10 + len(failures)
    assert failures, "ERROR_RATE=0.5 over 10 reads produced no error to retry"
    assert set(failures) <= {429, 500, 503}


def test_status_reads_survive_dropped_connections(make_client, seeded_sandbox):
    order_id = charge(make_client(gateway=seeded_sandbox)).order_id
    seeded_sandbox.set_faults(DROP_RATE=0.5)
    client = make_client(gateway=seeded_sandbox, retry_attempts=25, retry_budget_s=10.0)
    assert all(client.status(order_id).is_pending for _ in range(10))


def test_a_gateway_that_drops_every_connection_is_unreachable_after_the_attempts(
    make_client, sandbox
):
    order_id = charge(make_client()).order_id
    sandbox.set_faults(DROP_RATE=1)
    with pytest.raises(GatewayUnreachable) as caught:
        make_client(retry_attempts=3).status(order_id)
    assert not isinstance(caught.value, GatewayTimeout)
    assert caught.value.attempts == 3


def test_a_charge_repeated_with_its_idempotency_key_gets_the_same_transaction(client, sandbox):
    order_id = new_order_id()
    first = charge(client, order_id, idempotency_key=f"key-{order_id}")
    again = charge(client, order_id, idempotency_key=f"key-{order_id}")
    assert again.transaction_id == first.transaction_id
    assert again.qr_string == first.qr_string
    assert len(ledger(sandbox, order_id)) == 1


def test_a_timed_out_charge_retried_with_the_same_key_makes_one_transaction(make_client, sandbox):
    """The first attempt times out while the sandbox is slow; the retry, once it is fast
    again, gets the stored answer (or "in flight" first, then the stored answer)."""
    sandbox.set_faults(LATENCY_MS=600)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        sandbox.set_faults(LATENCY_MS=0)
        time.sleep(seconds)  # the client's back-off itself, taken for real

    client = make_client(read_timeout=0.2, retry_attempts=30, retry_budget_s=5.0, sleep=sleep)
    client.retry_base_s = 0.05
    order_id = new_order_id()
    txn = charge(client, order_id, idempotency_key=f"key-{order_id}")
    assert txn.is_pending and txn.qr_string
    assert slept, "the first attempt was expected to time out"
    assert len(ledger(sandbox, order_id)) == 1
    assert client.status(order_id).transaction_id == txn.transaction_id


# --------------------------------------------------------------------------------------------
# Notifications


def test_sandbox_notifications_verify_and_tampered_ones_do_not(make_client, sandbox, receiver):
    client = make_client(notification_url=receiver.url)
    order_id = charge(client).order_id
    pending = receiver.wait_status(order_id, "pending")
    assert verify_signature(pending, KEY)
    sandbox.pay(order_id)
    settled = receiver.wait_status(order_id, "settlement")
    assert settled["status_code"] == "200"
    assert verify_signature(settled, KEY)
    assert Transaction.from_body(settled).is_paid
    assert not verify_signature({**settled, "gross_amount": "1.00"}, KEY)
    assert not verify_signature(
        {**settled, "transaction_status": "settlement", "status_code": "201"}, KEY
    )
    assert not verify_signature(settled, "SB-Mid-server-someone-else")
    forged = dict(settled)
    del forged["signature_key"]
    assert not verify_signature(forged, KEY)


def test_status_answers_carry_a_signature_of_their_own_code(client, sandbox):
    order_id = charge(client).order_id
    sandbox.pay(order_id)
    assert verify_signature(client.status(order_id).raw, KEY)
