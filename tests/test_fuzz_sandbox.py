"""Fuzzed requests against the local Midtrans sandbox (sandbox/), started in-process on port 0
and seeded with one transaction per interesting status, sent as raw bytes over a socket and
drawn by hypothesis (tests/fuzz_strategies.py).

Properties, for every request a merchant's client may send:

- the sender gets a JSON answer with a Midtrans-style status_code in bounded time, with the
  HTTP status Midtrans gives it (shared/midtrans.md); never silence, never a 500;
- a request Midtrans refuses (a bad key, an invalid charge, an action the transaction's
  status forbids, malformed HTTP) leaves the sandbox's ledger as it was.

Requests that once crashed the sandbox (an order_id ending in a newline, deeply nested
metadata) have regression tests at the end. Profiles and the count of cases run:
tests/fuzz_helpers.py.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pytest
import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sandbox import Sandbox
from tests import fuzz_strategies as fz
from tests.fuzz_helpers import (
    FUZZ,
    PINNED,
    WAIT_S,
    Answer,
    ErrorRecords,
    count,
    exchange,
    fuzz_test,
)


def midtrans_answer(answer: Answer | None, raw: bytes) -> dict:
    """The JSON body of a sandbox answer, checked for a Midtrans-style status_code."""
    assert answer is not None, f"connection closed without an answer to {raw[:200]!r}"
    assert answer.status < 500, (answer.status, answer.body[:300])
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    body = answer.json()
    assert isinstance(body, dict), body
    code = body.get("status_code")
    assert code in fz.MIDTRANS_CODES, body
    # shared/midtrans.md: answers come with HTTP 200 and the code in the body; refusals with
    # the HTTP status of their code (414, an invalid refund amount, with 400).
    if answer.status == 200:
        assert code in {"200", "201", "202", "407"}, body
    else:
        assert code == str(answer.status) or (code, answer.status) == ("414", 400), body
    assert isinstance(body.get("status_message"), str) and body["status_message"], body
    return body


@dataclass
class Ledger:
    """The seeded sandbox: one transaction per interesting status."""

    sandbox: Sandbox
    pending: tuple[str, ...]
    paid: tuple[str, ...]  # settlement or partial_refund: refundable
    closed: tuple[str, ...]  # cancel, refund: nothing more to do with them
    transaction_ids: dict[str, str]

    @property
    def port(self) -> int:
        return self.sandbox.port

    @property
    def known(self) -> tuple[str, ...]:
        return (*self.pending, *self.paid, *self.closed, *self.transaction_ids.values())

    def ids_of(self, order_ids: tuple[str, ...]) -> tuple[str, ...]:
        """Each order by its order_id and by its transaction_id."""
        return (*order_ids, *(self.transaction_ids[o] for o in order_ids))


def _call(sandbox: Sandbox, method: str, path: str, body: dict | None = None) -> dict:
    answer = requests.request(
        method,
        sandbox.url + path,
        json=body,
        headers={"Authorization": fz.GOOD_AUTH},
        timeout=WAIT_S,
    )
    return answer.json()


@pytest.fixture
def ledger(sandbox: Sandbox) -> Ledger:
    def charge(order_id: str, payment_type: str = "qris") -> str:
        answer = _call(
            sandbox,
            "POST",
            "/v2/charge",
            {
                "payment_type": payment_type,
                "transaction_details": {"order_id": order_id, "gross_amount": 7000},
                "custom_expiry": {"expiry_duration": 1, "unit": "day"},
            },
        )
        assert answer["status_code"] == "201", answer
        return answer["transaction_id"]

    tids = {
        o: charge(o) for o in ("fz-pending", "fz-paid", "fz-partial", "fz-refunded", "fz-cancelled")
    }
    tids["fz-gopay"] = charge("fz-gopay", "gopay")
    for order_id in ("fz-paid", "fz-partial", "fz-refunded"):
        sandbox.pay(order_id)
    assert (
        _call(sandbox, "POST", "/v2/fz-partial/refund", {"refund_key": "fz-r1", "amount": 1000})[
            "status_code"
        ]
        == "200"
    )
    assert (
        _call(sandbox, "POST", "/v2/fz-refunded/refund", {"refund_key": "fz-r2"})["status_code"]
        == "200"
    )
    assert _call(sandbox, "POST", "/v2/fz-cancelled/cancel")["status_code"] == "200"
    statuses = {t["order_id"]: t["transaction_status"] for t in sandbox.transactions()}
    assert statuses == {
        "fz-pending": "pending",
        "fz-paid": "settlement",
        "fz-partial": "partial_refund",
        "fz-refunded": "refund",
        "fz-cancelled": "cancel",
        "fz-gopay": "pending",
    }
    return Ledger(
        sandbox,
        pending=("fz-pending", "fz-gopay"),
        paid=("fz-paid", "fz-partial"),
        closed=("fz-refunded", "fz-cancelled"),
        transaction_ids=tids,
    )


ROUTES = {"status": "GET", "cancel": "POST", "expire": "POST", "refund": "POST"}


def percent_encoded(draw: st.DrawFn, ident: str) -> str:
    """`ident` with some of its characters written as %XX (the sandbox unquotes the path)."""
    mask = draw(st.lists(st.booleans(), min_size=len(ident), max_size=len(ident)))
    return "".join(f"%{ord(c):02X}" if m else c for c, m in zip(ident, mask, strict=True))


def api_request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    return fz.request_bytes(
        method,
        path,
        [("Host", "127.0.0.1"), *headers, ("Content-Length", str(len(body)))],
        body,
    )


def check_sandbox(ledger: Ledger, raw: bytes, before: list[dict], errors: ErrorRecords) -> dict:
    body = midtrans_answer(exchange(ledger.port, raw), raw)
    assert ledger.sandbox.transactions() == before, raw[:300]
    errors.check()
    return body


@fuzz_test
@settings(FUZZ)
@given(data=st.data())
def test_sandbox_refuses_calls_without_a_valid_key_and_keeps_its_ledger(ledger, errors, data):
    count("sandbox_auth")
    before = ledger.sandbox.transactions()
    auth = data.draw(fz.bad_auth_headers())
    route = data.draw(st.sampled_from(["charge", *ROUTES]))
    if route == "charge":
        path, method, known_route = "/v2/charge", "POST", True
    else:
        known_route = data.draw(st.booleans())
        if known_route:
            ident = data.draw(st.sampled_from(ledger.known))
            ident = percent_encoded(data.draw, ident)
        else:
            ident = data.draw(fz.path_ids(ledger.known))
        path, method = f"/v2/{ident}/{route}", ROUTES[route]
    wrong_method = data.draw(st.integers(0, 4)) == 0
    if wrong_method:
        method = data.draw(
            st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]).filter(lambda m: m != method)
        )
    body = data.draw(st.binary(max_size=200) | fz.json_values.map(lambda v: json.dumps(v).encode()))
    raw = api_request(method, path, auth, body)
    answer = check_sandbox(ledger, raw, before, errors)
    if known_route:
        assert answer["status_code"] == ("405" if wrong_method else "401"), (answer, raw[:300])
    else:
        assert answer["status_code"] in {"401", "404", "405"}, (answer, raw[:300])


@fuzz_test
@settings(FUZZ)
@given(data=st.data())
def test_sandbox_refuses_invalid_charges_and_keeps_its_ledger(ledger, errors, data):
    count("sandbox_charge")
    before = ledger.sandbox.transactions()
    kind = data.draw(st.sampled_from(["near_valid", "near_valid", "json", "bytes", "nested"]))
    if kind == "near_valid":
        fresh = data.draw(
            st.from_regex(fz.MIDTRANS_ORDER_ID, fullmatch=True).filter(
                lambda o: o not in ledger.known
            )
        )
        body = data.draw(fz.invalid_charges(fresh, ledger.pending + ledger.paid))
    elif kind == "json":
        body = json.dumps(data.draw(fz.json_values)).encode()
    elif kind == "bytes":
        body = data.draw(st.binary(max_size=300))
    else:
        depth = data.draw(st.integers(1, 5000))
        body = b'{"payment_type":' * depth + b'"qris"' + b"}" * depth
    headers = [("Authorization", fz.GOOD_AUTH), ("Content-Type", "application/json")]
    if data.draw(st.booleans()):
        headers.append(("Idempotency-Key", data.draw(fz.header_values)))
    if data.draw(st.integers(0, 3)) == 0:
        headers.append(("X-Override-Notification", data.draw(fz.header_values)))
    raw = api_request("POST", "/v2/charge", headers, body)
    answer = check_sandbox(ledger, raw, before, errors)
    assert answer["status_code"] in {"400", "406"}, (kind, answer, body[:300])


@st.composite
def invalid_refunds(draw: st.DrawFn, left: int) -> bytes:
    """A refund body the sandbox must refuse for a transaction with `left` rupiah refundable."""
    kind = draw(st.sampled_from(["amount", "refund_key", "reason", "not_object", "bytes"]))
    if kind == "not_object":
        value = draw(fz.json_values.filter(lambda v: v is not None and not isinstance(v, dict)))
        return json.dumps(value).encode()
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=100).filter(lambda b: not _json_object(b)))
    body: dict[str, object] = {}
    if kind == "amount":
        body["amount"] = draw(
            st.integers(left + 1, 10**15)
            | st.integers(-(10**6), 0)
            | st.sampled_from([0.5, left - 0.5, True, False, "1000", None, [], {}]).filter(
                lambda v: v is not None
            )
        )
    elif kind == "refund_key":
        body["refund_key"] = draw(st.sampled_from(["", "k" * 51, 7, 1.5, True, [], {"k": 1}]))
    else:
        body["reason"] = draw(
            st.sampled_from(["r" * 256, 7, None, [], {"r": 1}, True]).filter(
                lambda v: v is not None
            )
        )
    return json.dumps(body).encode()


def _json_object(raw: bytes) -> bool:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return not raw.strip()  # an empty body reads as "no body": a full refund
    return value is None or isinstance(value, dict)


@fuzz_test
@settings(FUZZ)
@given(data=st.data())
def test_sandbox_refuses_actions_it_cannot_apply_and_keeps_its_ledger(ledger, errors, data):
    count("sandbox_actions")
    before = ledger.sandbox.transactions()
    route = data.draw(st.sampled_from(list(ROUTES)))
    kind = data.draw(st.sampled_from(["unknown_id", "refused", "wrong_method"]))
    method, body = ROUTES[route], b""
    if kind == "unknown_id":
        ident = data.draw(fz.path_ids(ledger.known))
        expected = {"404"}
    else:
        if kind == "wrong_method":
            ident = data.draw(st.sampled_from(ledger.known))
            method = data.draw(
                st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]).filter(
                    lambda m: m != ROUTES[route]
                )
            )
            expected = {"405"}
        elif route == "status":
            ident = data.draw(st.sampled_from(ledger.known))
            expected = {"200", "201", "202", "407"}  # a read: answered, nothing changes
        elif route in ("cancel", "expire"):
            ident = data.draw(st.sampled_from(ledger.ids_of(ledger.paid + ledger.closed)))
            expected = {"412"}
        else:
            refundable = data.draw(st.booleans())
            if refundable:
                order = data.draw(st.sampled_from(ledger.paid))
                ident = data.draw(st.sampled_from(ledger.ids_of((order,))))
                left = 7000 - (1000 if order == "fz-partial" else 0)
                body = data.draw(invalid_refunds(left))
                expected = {"400", "406", "414"}
            else:
                ident = data.draw(st.sampled_from(ledger.ids_of(ledger.pending + ledger.closed)))
                expected = {"412"}
        ident = percent_encoded(data.draw, ident)
    headers = [("Authorization", fz.GOOD_AUTH)]
    if method == "POST" and data.draw(st.booleans()):
        headers.append(("Idempotency-Key", data.draw(fz.header_values)))
    if not body and method != "GET" and data.draw(st.booleans()):
        body = data.draw(fz.json_values.map(lambda v: json.dumps(v).encode()))
    suffix = data.draw(st.sampled_from(["", "", "?x=1", "?status=settlement"]))
    raw = api_request(method, f"/v2/{ident}/{route}{suffix}", headers, body)
    answer = check_sandbox(ledger, raw, before, errors)
    if "400" not in expected and "Idempotency-Key" in {h for h, _ in headers}:
        expected = expected | {"400"}  # a key longer than Midtrans allows, or empty
    assert answer["status_code"] in expected, (kind, route, answer, raw[:300])


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@fuzz_test
@settings(FUZZ)
@given(data=st.data())
def test_sandbox_answers_malformed_http_without_crashing_and_keeps_its_ledger(ledger, errors, data):
    count("sandbox_http")
    before = ledger.sandbox.transactions()
    method = data.draw(
        st.sampled_from(METHODS) | st.text(alphabet=fz.TOKEN, min_size=1, max_size=10)
    )
    target = data.draw(
        st.sampled_from(
            [
                "/v2/charge",
                "/v2/fz-none/status",
                "/v2/fz-none/cancel",
                "*",
                "http://127.0.0.1/v2/charge",
                "/v2/charge?x=%zz",
                "//v2/charge",
                "/v2/../v2/charge",
                "/v2/./charge",
                "/v2/charge/",
                "/v2",
                "/v3/charge",
                "/simulator/pay/fz-none",
                "/simulator/deny/",
            ]
        )
        | st.builds(lambda s: "/v2/" + s, fz.path_ids(ledger.known))
        | st.text(
            alphabet="".join(chr(c) for c in range(0x21, 0x7F)), min_size=1, max_size=60
        ).filter(
            # No simulator call, no known transaction: those could legitimately change it.
            lambda t: "simulator" not in t and not any(k in unquote(t) for k in ledger.known)
        )
    )
    version = data.draw(
        st.sampled_from(
            [
                "HTTP/1.1",
                "HTTP/1.1",
                "HTTP/1.0",
                "HTTP/2.0",
                "HTTP/1",
                "HTTP/x.y",
                "FOO/1.1",
                "HTTP/1.1 extra",
            ]
        )
    )
    body = data.draw(st.binary(max_size=300))
    auth = data.draw(st.sampled_from([[("Authorization", fz.GOOD_AUTH)], []]))
    length, _ = data.draw(fz.content_length(body))
    extra = data.draw(fz.extra_headers())
    if data.draw(st.integers(0, 5)) == 0:
        extra.append(("Transfer-Encoding", data.draw(st.sampled_from(["chunked", "gzip", "x"]))))
    headers = data.draw(st.permutations([*auth, *extra, *length]))
    raw = fz.request_bytes(method, target, headers, body, version=version)
    answer = exchange(ledger.port, raw)
    assert answer is not None, f"closed without an answer: {raw[:300]!r}"
    http_ok = method in METHODS and version in ("HTTP/1.1", "HTTP/1.0")
    if answer.status >= 500:
        # Only what HTTP itself refuses: an unknown method (501), an HTTP version (505).
        assert (answer.status == 501 and method not in METHODS) or (
            answer.status == 505 and not http_ok
        ), (answer.status, answer.body[:300], raw[:300])
    path = urlsplit(target).path
    if answer.headers.get("content-type", "").startswith("application/json") or path.startswith(
        "/v2/"
    ):
        if answer.status < 500:
            midtrans_answer(answer, raw)
        else:
            assert json.loads(answer.body)["status_code"] == str(answer.status)
    assert ledger.sandbox.transactions() == before, raw[:300]
    errors.check()


# --- defects the fuzzing found (fixed), kept as regressions ---


@fuzz_test
@PINNED
@given(order_id=st.text(max_size=52))
@example(order_id="fuzz\n")
def test_sandbox_refuses_order_ids_outside_the_midtrans_alphabet(sandbox, errors, order_id):
    count("regression_order_id")
    before = sandbox.transactions()
    body = json.dumps(
        {
            "payment_type": "qris",
            "transaction_details": {"order_id": order_id, "gross_amount": 7000},
        }
    )
    raw = api_request("POST", "/v2/charge", [("Authorization", fz.GOOD_AUTH)], body.encode())
    answer = midtrans_answer(exchange(sandbox.port, raw), raw)
    if fz.MIDTRANS_ORDER_ID.fullmatch(order_id) and order_id not in {t["order_id"] for t in before}:
        assert answer["status_code"] == "201", answer
    elif not fz.MIDTRANS_ORDER_ID.fullmatch(order_id):
        assert answer["status_code"] == "400", (order_id, answer)
        assert sandbox.transactions() == before
    errors.check()


def ledger_over_http(sandbox: Sandbox) -> list[dict]:
    raw = fz.request_bytes("GET", "/simulator/transactions", [("Host", "127.0.0.1")], b"")
    answer = exchange(sandbox.port, raw)
    assert answer is not None and answer.status == 200, answer
    ledger = answer.json()
    assert isinstance(ledger, list)
    return ledger


@fuzz_test
@PINNED
@given(share=st.floats(0.01, 1.0))
@example(share=0.7)
@example(share=0.9)
def test_sandbox_charge_it_accepts_can_be_read_back(sandbox, errors, share):
    count("regression_deep_metadata")
    # Nesting relative to the recursion limit in force (hypothesis raises it while a test
    # runs): JSON parsing takes one level of it per level of nesting, a copy takes two.
    depth = max(1, int(share * sys.getrecursionlimit()))
    order_id = f"fz-deep-{depth}-{time.monotonic_ns()}"
    metadata = '{"a":' * depth + "1" + "}" * depth
    details = json.dumps({"order_id": order_id, "gross_amount": 7000})
    body = f'{{"payment_type":"qris","transaction_details":{details},"metadata":{metadata}}}'
    body = body.encode()
    # The ledger is read over HTTP: a RecursionError stays in the sandbox's thread.
    before = ledger_over_http(sandbox)
    raw = api_request("POST", "/v2/charge", [("Authorization", fz.GOOD_AUTH)], body)
    answer = midtrans_answer(exchange(sandbox.port, raw), raw)
    if answer["status_code"] != "201":
        assert answer["status_code"] == "400", answer
        assert ledger_over_http(sandbox) == before
        return
    status_raw = api_request("GET", f"/v2/{order_id}/status", [("Authorization", fz.GOOD_AUTH)])
    status = midtrans_answer(exchange(sandbox.port, status_raw), status_raw)
    assert status["status_code"] == "201"
    assert [t["order_id"] for t in ledger_over_http(sandbox)][-1] == order_id
    errors.check()
