"""sandbox.faults: the SANDBOX_FAULT_* switches of shared/midtrans.md on the API (never the
simulator), and the Idempotency-Key memory.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from cores import qris
from sandbox import FAULTS, Sandbox
from tests import sandbox_helpers
from tests.sandbox_helpers import KEY, WAIT_S, details, good_charge, of, signed

clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES


# --------------------------------------------------------------------------------------------
# Idempotency-Key


def test_same_idempotency_key_gets_the_same_answer_and_one_transaction(api, sandbox):
    key = {"Idempotency-Key": "0d8178e1-aaaa-bbbb-cccc-000000000001"}
    first = api.charge("vm-1-idem", headers=key)
    second = api.charge("vm-1-idem", headers=key)
    other_body = api.charge("vm-1-idem-other", headers=key)
    assert first.status_code == second.status_code == other_body.status_code == 200
    assert first.json() == second.json() == other_body.json()
    assert [t["order_id"] for t in sandbox.transactions()] == ["vm-1-idem"]


def test_failed_answers_are_not_stored_under_the_idempotency_key(api, sandbox):
    key = {"Idempotency-Key": "k-failed"}
    assert api.charge("vm-1-if", amount=-1, headers=key).status_code == 400
    assert api.charge("vm-1-if", headers=key).json()["status_code"] == "201"


def test_idempotency_key_is_forgotten_after_5_minutes(api, clock):
    key = {"Idempotency-Key": "k-old"}
    assert api.charge("vm-1-iold", headers=key).status_code == 200
    clock.advance(299)
    assert api.charge("vm-1-iold", headers=key).status_code == 200
    clock.advance(2)
    assert api.charge("vm-1-iold", headers=key).status_code == 406


def test_idempotency_key_longer_than_46_characters_is_400(api, sandbox):
    r = api.charge("vm-1-ilong", headers={"Idempotency-Key": "k" * 47})
    assert r.status_code == 400
    assert sandbox.transactions() == []


def test_idempotency_key_also_covers_refunds(api, paid, sandbox):
    key = {"Idempotency-Key": "refund-key-1"}
    first = api.post(f"/v2/{paid}/refund", json={"amount": 1000}, headers=key)
    second = api.post(f"/v2/{paid}/refund", json={"amount": 1000}, headers=key)
    assert first.json() == second.json()
    assert len(sandbox.transactions()[0]["refunds"]) == 1


def test_repeat_while_the_first_is_in_flight_gets_http_202(sandbox):
    sandbox.set_faults(LATENCY_MS=800)
    body = good_charge(transaction_details=details(order_id="vm-1-fly"))
    headers = {"Idempotency-Key": "k-in-flight"}
    barrier = threading.Barrier(2)
    answers: list[requests.Response] = []

    def send() -> None:
        with requests.Session() as s:
            barrier.wait(WAIT_S)
            answers.append(
                s.post(
                    sandbox.url + "/v2/charge",
                    json=body,
                    headers=headers,
                    auth=(KEY, ""),
                    timeout=10,
                )
            )

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    answers.sort(key=lambda r: r.status_code)
    assert [r.status_code for r in answers] == [200, 202]
    assert answers[1].json() == {
        "status_code": "202",
        "status_message": "Request with this Idempotency-Key is being processed",
    }
    sandbox.set_faults(LATENCY_MS=0)
    with requests.Session() as s:
        again = s.post(
            sandbox.url + "/v2/charge", json=body, headers=headers, auth=(KEY, ""), timeout=10
        )
    assert again.json() == answers[0].json()
    assert len(sandbox.transactions()) == 1


# --------------------------------------------------------------------------------------------
# Faults


def test_latency_is_added_to_api_answers(api, sandbox):
    api.charge("vm-1-lat")
    sandbox.set_faults(LATENCY_MS=300)
    start = time.monotonic()
    assert api.status("vm-1-lat").status_code == 200
    assert time.monotonic() - start >= 0.3


def test_error_rate_answers_500_503_or_429_and_changes_nothing(api, sandbox):
    sandbox.set_faults(ERROR_RATE=1)
    codes = set()
    for i in range(12):
        r = api.charge(f"vm-1-err-{i}")
        assert r.status_code in (500, 503, 429)
        assert r.json()["status_code"] == str(r.status_code)
        assert r.json()["status_message"]
        codes.add(r.status_code)
    assert len(codes) > 1
    assert sandbox.transactions() == []


def test_error_rate_covers_the_qr_image_too(api, anon, sandbox):
    url = api.charge("vm-1-err-qr").json()["actions"][0]["url"]
    sandbox.set_faults(ERROR_RATE=1)
    assert anon.session.get(url, timeout=10).status_code in (500, 503, 429)


def test_drop_rate_closes_the_connection_after_carrying_out_the_call(api, sandbox):
    sandbox.set_faults(DROP_RATE=1)
    key = {"Idempotency-Key": "k-dropped"}
    with pytest.raises(requests.ConnectionError):
        api.charge("vm-1-drop", headers=key)
    sandbox.set_faults(DROP_RATE=0)
    [txn] = sandbox.transactions()
    retry = api.charge("vm-1-drop", headers=key).json()
    assert retry["transaction_id"] == txn["transaction_id"]


def test_http200_errors_moves_every_error_code_into_the_body(api, sandbox):
    sandbox.set_faults(HTTP200_ERRORS=1)
    r = api.status("nope")
    assert (r.status_code, r.json()["status_code"]) == (200, "404")
    with requests.Session() as s:
        r = s.get(sandbox.url + "/v2/nope/status", timeout=10)
    assert (r.status_code, r.json()["status_code"]) == (200, "401")
    assert api.charge("vm-1-h", amount=0).json()["status_code"] == "400"
    sandbox.set_faults(ERROR_RATE=1)
    r = api.status("nope")
    assert r.status_code == 200 and r.json()["status_code"] in ("500", "503", "429")


def test_pending_after_pay_hides_the_payment_from_status_reads_for_a_while(
    api, sandbox, clock, receiver
):
    sandbox.set_faults(PENDING_AFTER_PAY_S=60)
    api.charge("vm-1-pap", payment_type="gopay")
    sandbox.pay("vm-1-pap")
    status = api.status("vm-1-pap").json()
    assert (status["status_code"], status["transaction_status"]) == ("201", "pending")
    assert status["payment_type"] == "gopay"
    assert signed(status)
    assert api.post("/v2/vm-1-pap/cancel").status_code == 412
    assert api.post("/v2/vm-1-pap/expire").status_code == 412
    assert sandbox.transactions()[0]["transaction_status"] == "settlement"
    receiver.wait_for(lambda ps: "settlement" in of(ps, "vm-1-pap"))
    clock.advance(61)
    assert api.status("vm-1-pap").json()["transaction_status"] == "settlement"


def test_refund_disabled_answers_412_by_either_door(api, paid, sandbox):
    sandbox.set_faults(REFUND_DISABLED=1)
    for path in (f"/v2/{paid}/refund", f"/v2/{paid}/refund/online/direct"):
        r = api.post(path, json={"refund_key": "x", "amount": 7000})
        assert (r.status_code, r.json()["status_code"]) == (412, "412")
    assert api.status(paid).json()["transaction_status"] == "settlement"


def test_channel_disabled_answers_402_to_charges(api, sandbox):
    sandbox.set_faults(CHANNEL_DISABLED=1)
    r = api.charge("vm-1-402")
    assert (r.status_code, r.json()["status_code"]) == (402, "402")
    assert sandbox.transactions() == []


def test_bad_qr_fault_hands_out_an_unparsable_qr_string(api, sandbox):
    sandbox.set_faults(BAD_QR=1)
    assert not qris.is_valid(api.charge("vm-1-badqr").json()["qr_string"])


def test_faults_never_touch_the_simulator(api, anon, sandbox):
    api.charge("vm-1-sim-f")
    sandbox.set_faults(ERROR_RATE=1, DROP_RATE=1)
    assert anon.get("/simulator/transactions").status_code == 200
    assert anon.get("/simulator").status_code == 200
    assert anon.post("/simulator/pay/vm-1-sim-f").status_code == 200


# --------------------------------------------------------------------------------------------
# Fault switches


def test_faults_endpoint_shows_and_changes_the_switches(anon, sandbox):
    shown = anon.get("/simulator/faults").json()
    assert set(shown) == set(FAULTS)
    assert all(v == 0 for v in shown.values())
    r = anon.post("/simulator/faults", json={"LATENCY_MS": 5, "SANDBOX_FAULT_ERROR_RATE": 0.5})
    assert r.status_code == 200
    assert (r.json()["LATENCY_MS"], r.json()["ERROR_RATE"]) == (5, 0.5)
    assert sandbox.faults["ERROR_RATE"] == 0.5


@pytest.mark.parametrize(
    "body",
    [
        b'{"NOPE": 1}',
        b'{"ERROR_RATE": 2}',
        b'{"LATENCY_MS": -1}',
        b'{"LATENCY_MS": 1.5}',
        b'{"ERROR_RATE": "x"}',
        b"not json",
        b"[]",
    ],
)
def test_faults_endpoint_refuses_bad_settings_and_changes_nothing(anon, sandbox, body):
    r = anon.post("/simulator/faults", data=body)
    assert (r.status_code, r.json()["status_code"]) == (400, "400")
    assert r.json()["validation_messages"]
    assert all(v == 0 for v in sandbox.faults.values())


def test_set_faults_refuses_unknown_names():
    sb = Sandbox()
    with pytest.raises(ValueError):
        sb.set_faults(SOMETHING=1)


def test_constructor_faults_are_applied():
    sb = Sandbox(faults={"LATENCY_MS": 20, "SANDBOX_FAULT_REFUND_DISABLED": 1})
    assert sb.faults["LATENCY_MS"] == 20
    assert sb.faults["REFUND_DISABLED"] == 1
