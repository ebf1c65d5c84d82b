"""sandbox.routes over real HTTP: the Core API subset of shared/midtrans.md (charge, status,
status/b2b, cancel, expire, refund and its direct door, approve, deny, the QR image) with
Midtrans's shapes, codes and auth.
"""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
import requests

from cores import qris
from sandbox import Sandbox
from tests import sandbox_helpers
from tests.sandbox_helpers import KEY, Api, jakarta, png_size, signed

clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES


# --------------------------------------------------------------------------------------------
# POST /v2/charge


def test_qris_charge_answers_pending_with_a_valid_qr_string_and_qr_actions(api, sandbox):
    r = api.charge("vm-1-0001", metadata={"machine_id": "vm-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["status_code"] == "201"
    assert body["status_message"] == "QRIS transaction is created"
    assert body["transaction_status"] == "pending"
    assert body["payment_type"] == "qris"
    assert body["gross_amount"] == "7000.00"
    assert body["currency"] == "IDR"
    assert body["fraud_status"] == "accept"
    assert body["acquirer"] == "gopay"
    assert body["merchant_id"] == "G000000001"
    assert qris.is_valid(body["qr_string"])
    assert qris.parse(body["qr_string"])["54"] == "7000"
    actions = {a["name"]: a for a in body["actions"]}
    tid = body["transaction_id"]
    assert actions["generate-qr-code"]["url"] == f"{sandbox.url}/v2/qris/{tid}/qr-code"
    assert actions["generate-qr-code"]["method"] == "GET"
    assert "generate-qr-code-v2" in actions


def test_gopay_charge_answers_gopay_actions_and_no_qr_string(api, sandbox):
    body = api.charge("vm-1-gp", payment_type="gopay").json()
    assert body["status_code"] == "201"
    assert body["status_message"] == "GO-PAY transaction is created"
    assert body["payment_type"] == "gopay"
    assert "qr_string" not in body
    names = [a["name"] for a in body["actions"]]
    assert names == ["generate-qr-code", "deeplink-redirect", "get-status", "cancel"]
    assert body["actions"][0]["url"].endswith(f"/v2/gopay/{body['transaction_id']}/qr-code")


def test_charge_times_are_jakarta_and_expiry_defaults_to_15_minutes(api, clock):
    body = api.charge("vm-1-time").json()
    created = jakarta(body["transaction_time"])
    assert abs(created.timestamp() - clock()) < 5
    assert jakarta(body["expiry_time"]) - created == timedelta(minutes=15)


@pytest.mark.parametrize(
    ("duration", "unit", "seconds"),
    [(30, "second", 30), (2, "minute", 120), (1, "hour", 3600), (1, "day", 86400)],
)
def test_custom_expiry_sets_the_expiry_time(api, duration, unit, seconds):
    body = api.charge(
        f"vm-1-exp-{unit}", custom_expiry={"expiry_duration": duration, "unit": unit}
    ).json()
    delta = jakarta(body["expiry_time"]) - jakarta(body["transaction_time"])
    assert delta == timedelta(seconds=seconds)


def test_order_id_of_50_allowed_characters_is_accepted(api):
    order_id = ("aZ09-_~." * 7)[:50]
    assert api.charge(order_id).json()["order_id"] == order_id


def test_qris_acquirer_shopee_is_reflected_in_answer_and_qr(api):
    body = api.charge("vm-1-sp", qris={"acquirer": "airpay shopee"}).json()
    assert body["acquirer"] == "airpay shopee"
    assert qris.parse(qris.parse(body["qr_string"])["26"])["00"] == "ID.CO.SHOPEE.WWW"


def test_duplicate_order_id_gets_406_while_pending_and_once_paid(api, sandbox):
    assert api.charge("vm-1-dup").json()["status_code"] == "201"
    r = api.charge("vm-1-dup")
    assert (r.status_code, r.json()["status_code"]) == (406, "406")
    sandbox.pay("vm-1-dup")
    assert api.charge("vm-1-dup").status_code == 406
    assert len(sandbox.transactions()) == 1


@pytest.mark.parametrize("ending", ["cancel", "expire", "deny"])
def test_order_id_may_be_charged_again_after_it_ended_unpaid(api, sandbox, ending):
    first = api.charge("vm-1-again").json()
    if ending == "deny":
        sandbox.deny("vm-1-again")
    else:
        assert api.post(f"/v2/vm-1-again/{ending}").status_code == 200
    second = api.charge("vm-1-again").json()
    assert second["status_code"] == "201"
    assert second["transaction_id"] != first["transaction_id"]
    assert api.status("vm-1-again").json()["transaction_id"] == second["transaction_id"]
    assert api.status(first["transaction_id"]).json()["transaction_status"] == ending
    assert [t["transaction_status"] for t in sandbox.transactions()] == [ending, "pending"]


# --------------------------------------------------------------------------------------------
# Auth


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Basic " + base64.b64encode(b"SB-Mid-server-other:").decode(),
        "Bearer " + KEY,
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(KEY.encode()[:-1] + b":").decode(),
    ],
    ids=["missing", "wrong-key", "not-basic", "garbage", "prefix-of-key"],
)
def test_bad_or_missing_server_key_gets_401_on_every_api_call(sandbox, auth):
    headers = {"Authorization": auth} if auth else {}
    with requests.Session() as s:
        for method, path in [
            ("POST", "/v2/charge"),
            ("GET", "/v2/anything/status"),
            ("POST", "/v2/anything/cancel"),
            ("POST", "/v2/anything/expire"),
            ("POST", "/v2/anything/refund"),
            ("GET", "/v2/anything/status/b2b"),
            ("POST", "/v2/anything/refund/online/direct"),
            ("POST", "/v2/anything/approve"),
            ("POST", "/v2/anything/deny"),
        ]:
            r = s.request(method, sandbox.url + path, json={}, headers=headers, timeout=10)
            assert r.status_code == 401, path
            assert r.json()["status_code"] == "401"


def test_without_a_configured_key_any_sandbox_key_works_and_signs(caplog):
    with Sandbox(port=0) as sb, requests.Session() as s:
        assert any("ANY server key" in r.getMessage() for r in caplog.records)
        s.auth = ("SB-Mid-server-whatever", "")
        body = Api(s, sb.url).charge("vm-1-any").json()
        assert body["status_code"] == "201"
        status = Api(s, sb.url).status("vm-1-any").json()
        assert signed(status, "SB-Mid-server-whatever")
        for key in ("Mid-server-production", "SB-Mid-server-", "SB-Mid-client-x"):
            s.auth = (key, "")
            assert Api(s, sb.url).status("vm-1-any").status_code == 401, key


def test_an_empty_configured_server_key_is_refused():
    with pytest.raises(ValueError):
        Sandbox(server_key=" ")


# --------------------------------------------------------------------------------------------
# GET /v2/{id}/status


def test_status_by_order_id_and_by_transaction_id_is_the_same_signed_answer(api):
    charged = api.charge("vm-1-st", metadata={"machine_id": "vm-1"}).json()
    by_order = api.status("vm-1-st")
    by_tid = api.status(charged["transaction_id"])
    assert by_order.status_code == by_tid.status_code == 200
    assert by_order.json() == by_tid.json()
    body = by_order.json()
    assert body["status_code"] == "201"
    assert body["transaction_status"] == "pending"
    assert body["gross_amount"] == "7000.00"
    assert body["metadata"] == {"machine_id": "vm-1"}
    assert body["expiry_time"] == charged["expiry_time"]
    assert signed(body)


def test_status_of_unknown_order_is_404(api):
    r = api.status("no-such-order")
    assert r.status_code == 404
    assert r.json()["status_code"] == "404"
    assert r.json()["status_message"] == "Transaction doesn't exist."


def test_status_after_payment_is_settlement_with_settlement_fields(api, sandbox):
    api.charge("vm-1-paid")
    sandbox.pay("vm-1-paid")
    body = api.status("vm-1-paid").json()
    assert body["status_code"] == "200"
    assert body["transaction_status"] == "settlement"
    assert body["transaction_type"] == "on-us"
    assert body["issuer"] == "gopay"
    assert body["acquirer"] == "gopay"
    assert "settlement_time" in body
    assert signed(body)


def test_status_of_a_denied_payment_is_202_with_http_200(api, sandbox):
    api.charge("vm-1-den")
    sandbox.deny("vm-1-den")
    r = api.status("vm-1-den")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("202", "deny")


def test_gopay_paid_by_scanning_settles_as_qris(api, sandbox, receiver):
    api.charge("vm-1-gq", payment_type="gopay")
    paid = api.post("/simulator/pay/vm-1-gq").json()
    assert paid["payment_type"] == "qris"
    assert api.status("vm-1-gq").json()["payment_type"] == "qris"
    posts = receiver.wait_count(2)
    assert [(p["transaction_status"], p["payment_type"]) for p in posts] == [
        ("pending", "gopay"),
        ("settlement", "qris"),
    ]


# --------------------------------------------------------------------------------------------
# GET /v2/{id}/status/b2b


def test_status_b2b_lists_every_transaction_of_the_order_newest_first(api, sandbox):
    first = api.charge("vm-1-b2b").json()
    api.post("/v2/vm-1-b2b/cancel")
    second = api.charge("vm-1-b2b").json()
    api.charge("vm-1-b2b-other")
    for ident in ("vm-1-b2b", first["transaction_id"], second["transaction_id"]):
        r = api.get(f"/v2/{ident}/status/b2b")
        assert r.status_code == 200
        body = r.json()
        assert (body["status_code"], body["status_message"]) == (
            "200",
            "Success, transactions are retrieved",
        )
        listed = [(t["transaction_id"], t["transaction_status"]) for t in body["transactions"]]
        assert listed == [
            (second["transaction_id"], "pending"),
            (first["transaction_id"], "cancel"),
        ]
        assert all(signed(t) for t in body["transactions"])
        assert body["transactions"][0] == api.status(second["transaction_id"]).json()


def test_status_b2b_pages_with_page_and_per_page(api):
    tids = []
    for _ in range(3):
        tids.append(api.charge("vm-1-b2bp").json()["transaction_id"])
        api.post("/v2/vm-1-b2bp/cancel")
    newest_first = tids[::-1]

    def page(query: str) -> list[str]:
        body = api.get(f"/v2/vm-1-b2bp/status/b2b?{query}").json()
        return [t["transaction_id"] for t in body["transactions"]]

    assert page("") == newest_first
    assert page("per_page=2") == newest_first[:2]
    assert page("per_page=2&page=1") == newest_first[2:]
    assert page("per_page=2&page=5") == []


@pytest.mark.parametrize("query", ["page=-1", "page=x", "per_page=0", "per_page=101"])
def test_status_b2b_refuses_a_bad_page_with_400(api, query):
    api.charge("vm-1-b2bq")
    r = api.get(f"/v2/vm-1-b2bq/status/b2b?{query}")
    assert (r.status_code, r.json()["status_code"]) == (400, "400")
    assert r.json()["validation_messages"]


def test_status_b2b_of_an_unknown_order_is_404(api):
    r = api.get("/v2/no-such-order/status/b2b")
    assert (r.status_code, r.json()["status_code"]) == (404, "404")


# --------------------------------------------------------------------------------------------
# cancel / expire


def test_cancel_of_pending_answers_200_cancel_then_412(api, sandbox):
    api.charge("vm-1-c")
    r = api.post("/v2/vm-1-c/cancel")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("200", "cancel")
    assert api.status("vm-1-c").json()["transaction_status"] == "cancel"
    again = api.post("/v2/vm-1-c/cancel")
    assert (again.status_code, again.json()["status_code"]) == (412, "412")


def test_cancel_by_transaction_id_works(api):
    tid = api.charge("vm-1-ct", payment_type="gopay").json()["transaction_id"]
    assert api.post(f"/v2/{tid}/cancel").json()["transaction_status"] == "cancel"


def test_cancel_of_settled_or_unknown_is_refused(api, sandbox):
    api.charge("vm-1-cs")
    sandbox.pay("vm-1-cs")
    assert api.post("/v2/vm-1-cs/cancel").status_code == 412
    assert api.post("/v2/nope/cancel").status_code == 404
    assert api.post("/v2/nope/expire").status_code == 404


def test_cancel_checks_state_before_body(api, sandbox):
    api.charge("vm-1-cb")
    sandbox.pay("vm-1-cb")
    assert api.post("/v2/vm-1-cb/cancel", data=b"not json").status_code == 412
    api.charge("vm-1-cb2")
    r = api.post("/v2/vm-1-cb2/cancel", data=b"not json")
    assert r.status_code == 400
    assert api.status("vm-1-cb2").json()["transaction_status"] == "pending"


def test_expire_of_pending_answers_407_with_http_200(api):
    api.charge("vm-1-e")
    r = api.post("/v2/vm-1-e/expire")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("407", "expire")
    status = api.status("vm-1-e").json()
    assert (status["status_code"], status["transaction_status"]) == ("407", "expire")
    assert api.post("/v2/vm-1-e/expire").status_code == 412


def test_expire_of_settled_is_412(api, sandbox):
    api.charge("vm-1-es")
    sandbox.pay("vm-1-es")
    assert api.post("/v2/vm-1-es/expire").status_code == 412


# --------------------------------------------------------------------------------------------
# refund


def test_refund_without_body_refunds_everything_left(api, paid):
    r = api.post(f"/v2/{paid}/refund")
    assert r.status_code == 200
    body = r.json()
    assert (body["status_code"], body["transaction_status"]) == ("200", "refund")
    assert body["refund_amount"] == "7000.00"
    assert body["refund_key"]
    status = api.status(paid).json()
    assert status["transaction_status"] == "refund"
    assert status["refund_amount"] == "7000.00"


def test_partial_refunds_add_up_to_the_gross_amount(api, paid, sandbox):
    first = api.post(f"/v2/{paid}/refund", json={"refund_key": "r1", "amount": 3000}).json()
    assert (first["transaction_status"], first["refund_amount"]) == ("partial_refund", "3000.00")
    status = api.status(paid).json()
    assert (status["transaction_status"], status["refund_amount"]) == ("partial_refund", "3000.00")
    too_much = api.post(f"/v2/{paid}/refund", json={"refund_key": "r2", "amount": 4001})
    assert (too_much.status_code, too_much.json()["status_code"]) == (400, "414")
    rest = api.post(f"/v2/{paid}/refund", json={"refund_key": "r3", "amount": 4000}).json()
    assert (rest["transaction_status"], rest["refund_amount"]) == ("refund", "4000.00")
    status = api.status(paid).json()
    assert status["refund_amount"] == "7000.00"
    assert [x["refund_key"] for x in status["refunds"]] == ["r1", "r3"]
    assert api.post(f"/v2/{paid}/refund", json={"refund_key": "r4"}).status_code == 412
    [ledger] = sandbox.transactions()
    assert [x["refund_amount"] for x in ledger["refunds"]] == ["3000.00", "4000.00"]


@pytest.mark.parametrize("amount", [0, -100, 100.5, 7001])
def test_refund_of_an_invalid_amount_is_414_with_http_400(api, paid, amount):
    r = api.post(f"/v2/{paid}/refund", json={"refund_key": "k", "amount": amount})
    assert (r.status_code, r.json()["status_code"]) == (400, "414")
    assert api.status(paid).json()["transaction_status"] == "settlement"


def test_refund_key_replay_gets_the_same_answer_and_refunds_once(api, paid, sandbox):
    first = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 7000})
    again = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 7000})
    bare = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk"})
    assert first.json() == again.json() == bare.json()
    assert len(sandbox.transactions()[0]["refunds"]) == 1


def test_refund_key_reused_for_another_refund_is_406(api, paid, sandbox):
    api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 1000})
    other_amount = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 2000})
    assert (other_amount.status_code, other_amount.json()["status_code"]) == (406, "406")
    api.charge("vm-1-r-other")
    sandbox.pay("vm-1-r-other")
    other_order = api.post("/v2/vm-1-r-other/refund", json={"refund_key": "rk", "amount": 1000})
    assert other_order.status_code == 406


def test_refund_checks_in_midtrans_order(api, sandbox):
    assert api.post("/v2/nope/refund", data=b"junk").status_code == 404
    api.charge("vm-1-ro")
    assert api.post("/v2/vm-1-ro/refund", data=b"junk").status_code == 412
    assert api.post("/v2/vm-1-ro/refund", json={"amount": 0}).status_code == 412
    sandbox.pay("vm-1-ro")
    assert api.post("/v2/vm-1-ro/refund", data=b"junk").status_code == 400


def test_direct_refund_is_the_same_refund_by_another_door(api, paid):
    direct = api.post(f"/v2/{paid}/refund/online/direct", json={"refund_key": "d1", "amount": 3000})
    assert direct.status_code == 200
    body = direct.json()
    assert (body["status_code"], body["transaction_status"]) == ("200", "partial_refund")
    assert (body["refund_amount"], body["refund_key"]) == ("3000.00", "d1")
    replay = api.post(f"/v2/{paid}/refund", json={"refund_key": "d1", "amount": 3000})
    assert replay.json() == body
    rest = api.post(f"/v2/{paid}/refund/online/direct").json()
    assert (rest["transaction_status"], rest["refund_amount"]) == ("refund", "4000.00")
    status = api.status(paid).json()
    assert (status["transaction_status"], status["refund_amount"]) == ("refund", "7000.00")


def test_direct_refund_follows_the_refund_rules(api, sandbox):
    assert api.post("/v2/nope/refund/online/direct").status_code == 404
    api.charge("vm-1-dr")
    assert api.post("/v2/vm-1-dr/refund/online/direct").status_code == 412
    sandbox.pay("vm-1-dr")
    too_much = api.post("/v2/vm-1-dr/refund/online/direct", json={"amount": 7001})
    assert (too_much.status_code, too_much.json()["status_code"]) == (400, "414")
    assert api.post("/v2/vm-1-dr/refund/online/direct", data=b"junk").status_code == 400
    assert api.get("/v2/vm-1-dr/refund/online/direct").status_code == 405
    assert api.status("vm-1-dr").json()["transaction_status"] == "settlement"


# --------------------------------------------------------------------------------------------
# approve / deny


@pytest.mark.parametrize("judgement", ["approve", "deny"])
def test_approve_and_deny_are_refused_with_412_as_no_transaction_is_a_card_challenge(
    api, sandbox, judgement
):
    api.charge("vm-1-ch")
    api.charge("vm-1-ch-paid")
    sandbox.pay("vm-1-ch-paid")
    for order_id in ("vm-1-ch", "vm-1-ch-paid"):
        r = api.post(f"/v2/{order_id}/{judgement}")
        assert (r.status_code, r.json()["status_code"]) == (412, "412")
        assert r.json()["status_message"] == "Merchant cannot modify the status of the transaction"
    statuses = [t["transaction_status"] for t in sandbox.transactions()]
    assert statuses == ["pending", "settlement"]
    unknown = api.post(f"/v2/nope/{judgement}")
    assert (unknown.status_code, unknown.json()["status_code"]) == (404, "404")
    assert api.get(f"/v2/vm-1-ch/{judgement}").status_code == 405


# --------------------------------------------------------------------------------------------
# QR image


def test_qr_image_urls_serve_a_png_without_auth(api, anon):
    qris_body = api.charge("vm-1-png").json()
    gopay_body = api.charge("vm-1-png-gp", payment_type="gopay").json()
    for body in (qris_body, gopay_body):
        for action in body["actions"]:
            if action["name"].startswith("generate-qr-code"):
                r = anon.session.get(action["url"], timeout=10)
                assert r.status_code == 200, action
                assert r.headers["Content-Type"] == "image/png"
                width, height = png_size(r.content)
                assert width > 0 and width == height


def test_qr_image_of_unknown_transaction_is_404_json(anon):
    r = anon.get("/v2/qris/00000000-0000-0000-0000-000000000000/qr-code")
    assert (r.status_code, r.json()["status_code"]) == (404, "404")


# --------------------------------------------------------------------------------------------
# Unknown routes


def test_unknown_paths_and_methods_get_json_errors(api, anon):
    for path in ("/nope", "/v2/", "/v2/a/b/c/d/e", "/v2/x/unknown", "/simulator/nope"):
        r = anon.get(path)
        assert (r.status_code, r.json()["status_code"]) == (404, "404"), path
    assert api.get("/v2/charge").status_code == 405
    assert api.post("/v2/x/status").status_code == 405
    assert anon.session.delete(anon.base + "/simulator/faults", timeout=10).status_code == 405
