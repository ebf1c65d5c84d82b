"""sandbox.server: HTTP that survives bad input, many clients at once, and a clean start and
stop in-process.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from typing import Any

import pytest
import requests

from sandbox import Sandbox
from tests import sandbox_helpers
from tests.sandbox_helpers import KEY, WAIT_S, Api, raw_http, raw_json

clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES


# --------------------------------------------------------------------------------------------
# Bad input


def test_body_over_64_kib_is_400_and_the_connection_stays_usable(api):
    big = json.dumps({"payment_type": "qris", "pad": "x" * 70_000}).encode()
    r = api.post("/v2/charge", data=big, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["status_code"]) == (400, "400")
    assert api.status("nope").status_code == 404


def test_post_without_content_length_is_400(sandbox):
    auth = base64.b64encode(f"{KEY}:".encode()).decode()
    answer = raw_http(
        sandbox,
        f"POST /v2/charge HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode(),
    )
    status, body = raw_json(answer)
    assert (status, body["status_code"]) == (400, "400")
    assert "Content-Length" in body["validation_messages"][0]


def test_chunked_body_is_400(api):
    r = api.post("/v2/charge", data=iter([b"{}"]), headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["status_code"]) == (400, "400")


def test_body_shorter_than_its_content_length_is_400_not_a_hang(sandbox):
    answer = raw_http(
        sandbox,
        b"POST /v2/charge HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}",
        shut_write=True,
    )
    assert raw_json(answer)[0] == 400


def test_malformed_request_line_gets_a_json_error(sandbox):
    status, body = raw_json(raw_http(sandbox, b"NOT A REQUEST\r\n\r\n"))
    assert status == 400
    assert body["status_code"] == "400"


def test_server_keeps_serving_after_bad_input(api, sandbox):
    raw_http(sandbox, b"\x00\x01garbage\r\n\r\n")
    api.post("/v2/charge", data=b"{")
    assert api.charge("vm-1-after").json()["status_code"] == "201"


# --------------------------------------------------------------------------------------------
# Concurrency and lifecycle


def test_concurrent_charges_all_succeed_with_distinct_transactions(sandbox):
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def charge(i: int) -> None:
        with requests.Session() as s:
            r = Api(s, sandbox.url)
            s.auth = (KEY, "")
            body = r.charge(f"vm-1-par-{i}").json()
            with lock:
                answers.append(body)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert len({a["transaction_id"] for a in answers if a["status_code"] == "201"}) == 20
    assert len(sandbox.transactions()) == 20


def test_stop_closes_the_port_and_open_connections():
    sb = Sandbox(port=0, server_key=KEY).start()
    port = sb.port
    assert sb.url == f"http://127.0.0.1:{port}"
    with requests.Session() as s:
        assert s.get(sb.url + "/simulator/faults", timeout=10).status_code == 200
        sb.stop()
        sb.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_serve_forever_returns_after_request_stop():
    sb = Sandbox(port=0, server_key=KEY)
    thread = threading.Thread(target=sb.serve_forever)
    thread.start()
    try:
        assert sb.ready.wait(WAIT_S)
        with requests.Session() as s:
            assert s.get(sb.url + "/simulator/faults", timeout=10).status_code == 200
    finally:
        sb.request_stop()
        thread.join(WAIT_S)
    assert not thread.is_alive()
