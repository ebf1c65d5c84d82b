"""sandbox.ledger: state changes, QR expiry by the injected clock and by the timer, one
settlement however many pay at once, and a ledger that survives a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import Sandbox, SandboxError
from tests import sandbox_helpers
from tests.sandbox_helpers import KEY, WAIT_S, Api, FakeClock, Receiver, of, signed

clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES


# --------------------------------------------------------------------------------------------
# Expiry


def test_status_read_after_custom_expiry_says_expire_407_and_notifies(api, clock, receiver):
    api.charge("vm-1-ex", custom_expiry={"expiry_duration": 2, "unit": "minute"})
    clock.advance(115)
    assert api.status("vm-1-ex").json()["transaction_status"] == "pending"
    clock.advance(10)
    r = api.status("vm-1-ex")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("407", "expire")
    assert signed(r.json())
    posts = receiver.wait_count(2)
    expired = posts[-1]
    assert (expired["transaction_status"], expired["status_code"]) == ("expire", "202")
    assert signed(expired)


def test_default_expiry_is_reached_after_15_minutes(api, clock):
    api.charge("vm-1-ex15")
    clock.advance(15 * 60 - 5)
    assert api.status("vm-1-ex15").json()["transaction_status"] == "pending"
    clock.advance(5)
    assert api.status("vm-1-ex15").json()["transaction_status"] == "expire"


def test_expired_transaction_cannot_be_paid_or_cancelled(api, sandbox, clock):
    api.charge("vm-1-ex2", custom_expiry={"expiry_duration": 1, "unit": "minute"})
    clock.advance(61)
    with pytest.raises(SandboxError) as caught:
        sandbox.pay("vm-1-ex2")
    assert caught.value.status_code == "412"
    assert api.post("/v2/vm-1-ex2/cancel").status_code == 412


def test_expiry_timer_expires_and_notifies_without_any_read(api, receiver):
    api.charge("vm-1-timer", custom_expiry={"expiry_duration": 1, "unit": "second"})
    posts = receiver.wait_for(lambda ps: "expire" in of(ps, "vm-1-timer"))
    assert of(posts, "vm-1-timer") == ["pending", "expire"]


def test_check_expiries_applies_a_moved_clock_at_once(api, sandbox, clock, receiver):
    api.charge("vm-1-chk", custom_expiry={"expiry_duration": 1, "unit": "hour"})
    clock.advance(3601)
    sandbox.check_expiries()
    receiver.wait_for(lambda ps: "expire" in of(ps, "vm-1-chk"))


# --------------------------------------------------------------------------------------------
# Concurrency


def test_concurrent_pays_of_one_order_settle_it_once(api, sandbox, receiver):
    api.charge("vm-1-race")
    codes: list[int] = []

    def pay() -> None:
        with requests.Session() as s:
            codes.append(s.post(sandbox.url + "/simulator/pay/vm-1-race", timeout=10).status_code)

    threads = [threading.Thread(target=pay) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert sorted(codes) == [200] + [412] * 9
    receiver.wait_for(lambda ps: "settlement" in of(ps, "vm-1-race"))
    sandbox.stop()
    assert of(receiver.posts, "vm-1-race") == ["pending", "settlement"]


# --------------------------------------------------------------------------------------------
# A ledger that survives a restart


@contextmanager
def restarted(
    directory: Path, clock: FakeClock, receiver: Receiver
) -> Iterator[tuple[Sandbox, Api]]:
    """A new sandbox on `directory`, and an API session with KEY."""
    with (
        Sandbox(
            port=0, server_key=KEY, notification_url=receiver.url, clock=clock, directory=directory
        ) as again,
        requests.Session() as session,
    ):
        session.auth = (KEY, "")
        yield again, Api(session, again.url)


def without_urls(ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger without its QR image URLs (they name the sandbox's port)."""
    return [{k: v for k, v in t.items() if k != "qr_image_url"} for t in ledger]


def test_a_restarted_sandbox_still_answers_a_charge_and_can_settle_it(
    api, sandbox, clock, receiver, tmp_path
):
    charged = api.charge("vm-1-keep", metadata={"machine_id": "vm-1"}).json()
    sandbox.stop()
    with restarted(tmp_path / "sandbox", clock, receiver) as (again, api2):
        status = api2.status("vm-1-keep").json()
        assert status["transaction_id"] == charged["transaction_id"]
        assert (status["status_code"], status["transaction_status"]) == ("201", "pending")
        assert status["metadata"] == {"machine_id": "vm-1"}
        assert signed(status)
        paid = api2.post("/simulator/pay/vm-1-keep").json()
        assert paid["transaction_status"] == "settlement"
        assert api2.status(charged["transaction_id"]).json()["transaction_status"] == "settlement"
        assert "settlement" in of(receiver.wait_count(2), "vm-1-keep")


def test_a_restarted_sandbox_keeps_every_status_and_refund_and_answers_a_replayed_refund_key(
    api, sandbox, clock, receiver, tmp_path
):
    api.charge("vm-1-kp")
    api.charge("vm-1-kr")
    sandbox.pay("vm-1-kr")
    first = api.post("/v2/vm-1-kr/refund", json={"refund_key": "kr-1", "amount": 2000}).json()
    api.charge("vm-1-kc")
    api.post("/v2/vm-1-kc/cancel")
    before = sandbox.transactions()
    sandbox.stop()
    with restarted(tmp_path / "sandbox", clock, receiver) as (again, api2):
        assert without_urls(again.transactions()) == without_urls(before)
        replay = api2.post("/v2/vm-1-kr/refund", json={"refund_key": "kr-1", "amount": 2000})
        assert replay.json() == first
        second = api2.post("/v2/vm-1-kr/refund", json={"refund_key": "kr-2"}).json()
        assert (second["transaction_status"], second["refund_amount"]) == ("refund", "5000.00")
        assert int(second["refund_chargeback_id"]) > int(first["refund_chargeback_id"])
        assert api2.charge("vm-1-kc").json()["status_code"] == "201"  # cancelled: reusable
        assert api2.charge("vm-1-kp").status_code == 406  # still pending


def test_a_charge_that_expired_while_the_sandbox_was_down_reads_expired_and_is_notified(
    api, sandbox, clock, receiver, tmp_path
):
    api.charge("vm-1-kx", custom_expiry={"expiry_duration": 1, "unit": "minute"})
    sandbox.stop()
    clock.advance(61)
    with restarted(tmp_path / "sandbox", clock, receiver) as (again, api2):
        status = api2.status("vm-1-kx").json()
        assert (status["status_code"], status["transaction_status"]) == ("407", "expire")
        receiver.wait_for(lambda posts: "expire" in of(posts, "vm-1-kx"))


def test_a_second_sandbox_on_a_directory_in_use_refuses_to_start(sandbox, tmp_path):
    with pytest.raises(RuntimeError, match="uses"):
        Sandbox(port=0, directory=tmp_path / "sandbox").start()
    assert sandbox.transactions() == []


def test_without_a_directory_the_ledger_is_in_memory_and_starts_empty():
    with Sandbox(port=0, server_key=KEY) as first, requests.Session() as session:
        session.auth = (KEY, "")
        assert Api(session, first.url).charge("vm-1-mem").json()["status_code"] == "201"
    with Sandbox(port=0, server_key=KEY) as second:
        assert second.transactions() == []
