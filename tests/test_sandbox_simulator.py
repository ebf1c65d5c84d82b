"""sandbox.simulator: the payment simulator's page (sandbox/simulator.html), its JSON ledger
and its Pay / Deny, over HTTP and in code.
"""

from __future__ import annotations

import re

import pytest

from sandbox import SandboxError
from tests import sandbox_helpers
from tests.sandbox_helpers import png_size, raw_http, raw_json

clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES


# --------------------------------------------------------------------------------------------
# Simulator


def test_simulator_page_lists_pending_transactions_with_qr_and_buttons(api, anon, sandbox):
    api.charge("vm-1-page")
    api.charge("vm-1-page-paid")
    sandbox.pay("vm-1-page-paid")
    r = anon.get("/simulator")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    page = r.text
    assert 'data-order="vm-1-page"' in page
    assert 'data-order="vm-1-page-paid"' not in page
    assert 'data-act="pay"' in page and 'data-act="deny"' in page
    # No external resources: every src/href is relative to the sandbox.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    img = re.search(r'<img[^>]*src="([^"]+)"', page).group(1)
    assert png_size(anon.get(img).content)[0] > 0
    fragment = anon.get("/simulator?part=list").text
    assert 'data-order="vm-1-page"' in fragment and "<html" not in fragment


def test_simulator_transactions_is_the_ledger_with_a_status_filter(api, anon, sandbox):
    api.charge("vm-1-l1")
    api.charge("vm-1-l2", payment_type="gopay")
    sandbox.pay("vm-1-l2")
    api.post("/v2/vm-1-l2/refund", json={"refund_key": "l2", "amount": 7000})
    everything = anon.get("/simulator/transactions").json()
    assert [(t["order_id"], t["transaction_status"]) for t in everything] == [
        ("vm-1-l1", "pending"),
        ("vm-1-l2", "refund"),
    ]
    for t in everything:
        for name in (
            "order_id",
            "transaction_id",
            "gross_amount",
            "payment_type",
            "transaction_status",
            "transaction_time",
            "qr_image_url",
            "refunds",
        ):
            assert name in t, name
    assert everything[1]["refunds"][0]["refund_amount"] == "7000.00"
    assert everything[0]["qr_image_url"].startswith(sandbox.url + "/v2/qris/")
    pending = anon.get("/simulator/transactions?status=pending").json()
    assert [t["order_id"] for t in pending] == ["vm-1-l1"]
    assert sandbox.transactions(status="refund")[0]["order_id"] == "vm-1-l2"


def test_simulator_pay_and_deny_answer_404_unknown_and_412_not_pending(api, anon):
    r = anon.post("/simulator/pay/nope")
    assert (r.status_code, r.json()["status_code"]) == (404, "404")
    api.charge("vm-1-sp1")
    assert anon.post("/simulator/pay/vm-1-sp1").json()["transaction_status"] == "settlement"
    again = anon.post("/simulator/pay/vm-1-sp1")
    assert (again.status_code, again.json()["status_code"]) == (412, "412")
    assert anon.post("/simulator/deny/vm-1-sp1").status_code == 412
    api.charge("vm-1-sp2")
    assert anon.post("/simulator/deny/vm-1-sp2").json()["transaction_status"] == "deny"


def test_simulator_pay_works_without_content_length(api, sandbox):
    api.charge("vm-1-curl")
    answer = raw_http(
        sandbox,
        b"POST /simulator/pay/vm-1-curl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    status, body = raw_json(answer)
    assert (status, body["transaction_status"]) == (200, "settlement")


def test_programmatic_pay_and_deny_raise_sandbox_errors(api, sandbox):
    with pytest.raises(SandboxError) as caught:
        sandbox.pay("nope")
    assert caught.value.status_code == "404"
    api.charge("vm-1-prog")
    assert sandbox.deny("vm-1-prog")["transaction_status"] == "deny"
    with pytest.raises(SandboxError) as caught:
        sandbox.pay("vm-1-prog")
    assert caught.value.status_code == "412"


def test_root_redirects_to_the_simulator(anon):
    r = anon.get("/", allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (302, "/simulator")


def test_the_page_brings_its_own_style_and_script_and_leaves_no_field_unfilled(anon):
    page = anon.get("/simulator").text
    assert '<link rel="stylesheet" href="/simulator/simulator.css">' in page
    assert '<script src="/simulator/simulator.js" defer></script>' in page
    assert "<template" not in page and "$" not in page
    assert 'name="LATENCY_MS" value="0"' in page
    assert "No pending transactions" in anon.get("/simulator?part=list").text
    css = anon.get("/simulator/simulator.css")
    js = anon.get("/simulator/simulator.js")
    assert (css.status_code, css.headers["Content-Type"]) == (200, "text/css; charset=utf-8")
    assert (js.status_code, js.headers["Content-Type"]) == (
        200,
        "text/javascript; charset=utf-8",
    )
    assert "/simulator?part=list" in js.text
    assert anon.post("/simulator/simulator.js").status_code == 405
