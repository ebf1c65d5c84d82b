"""sandbox.ledger: state changes, QR expiry by the injected clock and by the timer, one
settlement however many pay at once, and a ledger that survives a restart.
"""

from __future__ import annotations

import threading

import pytest
import requests

from sandbox import SandboxError
from tests import sandbox_helpers
from tests.sandbox_helpers import (
    WAIT_S,
    of,
    signed,
)

clock = sandbox_helpers.clock
receiver = sandbox_helpers.receiver
sandbox = sandbox_helpers.sandbox
api = sandbox_helpers.api


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
