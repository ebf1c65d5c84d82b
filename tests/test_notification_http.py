"""The notification receiver's connections (services/notification_http.py), over real sockets
to the receiver in-process: many senders at once, slow senders, senders that hang up, floods
of forged notifications, refusals, and Redis down or hanging.

Midtrans waits 15 s for an answer and sends a notification again only when it gets none or
an error (shared/midtrans.md, "HTTP notifications"): every sender here must get an answer it
can read, in time, and no sender may hold up another.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from constants.tunables import NOTIFICATION_MAX_BYTES, NOTIFICATION_REFUSALS_BURST
from cores.broker import Broker
from cores.config import LOCAL_SANDBOX_KEY
from cores.midtrans import MidtransClient, signature
from cores.redis_process import free_port
from services.notification_service import NotificationServer, RefusalBox
from tests.fuzz_helpers import exchange
from tests.machine_helpers import desk_result, eventually

#: A sender held up by a full listen queue waits for its SYN to be sent again, after 1 s.
SYN_RETRY_S = 1.0


#: How long Midtrans waits for the answer to a notification before it counts it as lost.
MIDTRANS_WAITS_S = 15.0


@dataclass
class Answer:
    status: int
    body: dict
    seconds: float  # from the request's first byte to the end of the answer
    done_at: float  # time.monotonic() at the end of the answer


def signed(order_id: str) -> bytes:
    body = {
        "order_id": order_id,
        "status_code": "200",
        "gross_amount": "7000.00",
        "transaction_status": "settlement",
        "signature_key": signature(order_id, "200", "7000.00", LOCAL_SANDBOX_KEY),
    }
    return json.dumps(body).encode()


def forged(order_id: str) -> bytes:
    body = json.loads(signed(order_id))
    body["signature_key"] = "0" * 128
    return json.dumps(body).encode()


def post(
    port: int, body: bytes, path: str = "/notification", headers: dict[str, str] | None = None
) -> Answer:
    """One POST on a connection of its own, as Midtrans sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.monotonic()
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    done = time.monotonic()
    return Answer(response.status, json.loads(data), done - started, done)


def all_at_once(requests: list[Callable[[], Answer]]) -> list[Answer]:
    """Run the requests in threads of their own, released together."""
    start = threading.Barrier(len(requests))

    def run(request: Callable[[], Answer]) -> Answer:
        start.wait()
        return request()

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(run, requests))


def read_to_close(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything the receiver sends until it closes its side."""
    sock.settimeout(timeout_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def assert_readable(status: int, body: object) -> None:
    """The receiver's answer shape, for every answer."""
    assert isinstance(body, dict)
    assert body == {"status_code": str(status), "status_message": body["status_message"]}
    assert isinstance(body["status_message"], str) and body["status_message"]


@pytest.fixture
def gateway(sandbox) -> Iterator[MidtransClient]:
    client = MidtransClient(sandbox.url, LOCAL_SANDBOX_KEY)
    yield client
    client.close()


@pytest.fixture
def receiver_with(gateway) -> Iterator[Callable[..., NotificationServer]]:
    """Start receivers of the test's own (another broker, a short deadline), without desk;
    all are stopped after the test."""
    started: list[NotificationServer] = []

    def start(broker: Broker, deadline_s: float = 5.0) -> NotificationServer:
        server = NotificationServer(broker, gateway, LOCAL_SANDBOX_KEY, deadline_s=deadline_s)
        started.append(server.start(desk=False))
        return server

    yield start
    for server in started:
        server.stop()


# --- many senders ------------------------------------------------------------------------------


def test_twenty_five_midtrans_notifications_at_once_are_all_answered_200_without_delay(
    notification_server,
):
    port = notification_server.port
    order_ids = [f"vm-1-burst-{i}" for i in range(25)]
    answers = all_at_once([lambda oid=oid: post(port, signed(oid)) for oid in order_ids])
    assert [a.status for a in answers] == [200] * 25  # no reset, no refusal
    # No sender waited for its connection to be accepted again (a full listen queue).
    assert max(a.seconds for a in answers) < SYN_RETRY_S
    for order_id in order_ids:  # each reached the desk, which knows no such order
        assert desk_result(notification_server, order_id) == "unknown_order"


def test_a_flood_of_forged_notifications_does_not_hold_up_a_genuine_one(notification_server):
    port = notification_server.port
    flood = [lambda i=i: post(port, forged(f"vm-1-forged-{i}")) for i in range(200)]
    genuine = "vm-1-genuine"
    answers = all_at_once([*flood, lambda: post(port, signed(genuine))])
    *refused, accepted = answers
    assert {a.status for a in refused} == {401}
    for a in refused:
        assert_readable(401, a.body)
    assert accepted.status == 200
    assert accepted.seconds < MIDTRANS_WAITS_S  # answered while Midtrans still waits
    assert desk_result(notification_server, genuine) == "unknown_order"
    assert not [oid for oid, _ in notification_server.desk.handled if "forged" in oid]


def test_a_sender_refused_too_often_is_answered_429_unread_and_others_are_not(
    broker, receiver_with
):
    """A forger's flood (through a proxy: X-Forwarded-For) gets its burst of 401s, then 429
    without its body being read, while a genuine notification sent in the middle of the
    flood, from another address, is answered 200 and scheduled."""
    server = receiver_with(broker)
    forger = {"X-Forwarded-For": "1.2.3.4"}  # a public address
    flood = [
        lambda i=i: post(server.port, forged(f"vm-1-forged-{i}"), headers=forger)
        for i in range(200)
    ]
    genuine = "vm-1-genuine"
    *refused, accepted = all_at_once([*flood, lambda: post(server.port, signed(genuine))])
    statuses = collections.Counter(a.status for a in refused)
    assert set(statuses) <= {401, 429} and statuses[429] > 0
    assert statuses[401] <= NOTIFICATION_REFUSALS_BURST + 5  # refills while the flood lasts
    for a in refused:
        assert_readable(a.status, a.body)
    assert accepted.status == 200
    assert broker.redis.zscore(broker.recheck_key, genuine) is not None
    assert not any("forged" in o for o in broker.redis.zrange(broker.recheck_key, 0, -1))


def test_the_refusal_box_lets_a_sender_back_as_its_bucket_refills_and_forgets_the_quiet():
    """The box's rule: an address is boxed once its refusals pass the burst, let back at the
    refill rate; other addresses are untouched; the oldest quiet address is forgotten when
    more than `senders` are remembered; a loopback or private address (a proxy that does not
    forward the client's address) is never boxed, so Midtrans is never held back with it."""
    now = [0.0]
    box = RefusalBox(per_s=2.0, burst=3, senders=2, clock=lambda: now[0])
    a, b, c = "1.2.3.4", "5.6.7.8", "9.10.11.12"  # public (documentation nets count as private)
    for _ in range(3):
        assert not box.boxed(a)
        box.refused(a)
    assert box.boxed(a) and not box.boxed(b)
    now[0] += 0.5  # one token back at 2 a second
    assert not box.boxed(a)
    box.refused(a)
    assert box.boxed(a)
    box.refused(b)
    box.refused(c)  # a third address: a, the longest quiet, is forgotten
    assert list(box.buckets) == [b, c] and not box.boxed(a)
    for local in ("127.0.0.1", "10.0.0.5", "192.168.1.9", "::1", "-"):  # a proxy's, say
        for _ in range(10):
            box.refused(local)
        assert not box.boxed(local)


# --- slow senders, and senders that go away -----------------------------------------------------


#: The start of a request, and the byte its sender then trickles.
TRICKLED = {
    "body": (b"POST /notification HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{", b" "),
    "headers": (b"POST /notification HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"),
}


@pytest.mark.parametrize("part", list(TRICKLED))
def test_a_sender_trickling_its_request_is_cut_at_the_deadline_while_others_are_answered(
    broker, receiver_with, part
):
    deadline_s = 1.0
    server = receiver_with(broker, deadline_s=deadline_s)
    stop = threading.Event()
    start, byte = TRICKLED[part]
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        began = time.monotonic()
        slow.sendall(start)

        def trickle() -> None:  # a byte every 50 ms: never silent, never done
            while not stop.wait(0.05):
                try:
                    slow.sendall(byte)
                except OSError:
                    return

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            others = all_at_once(
                [lambda i=i: post(server.port, signed(f"o-{i}")) for i in range(20)]
            )
            status, headers, body = parse(read_to_close(slow))
            cut_at = time.monotonic()
        finally:
            stop.set()
            trickler.join()
    assert status == 408
    assert_readable(408, body)
    assert headers["connection"] == "close"
    assert deadline_s <= cut_at - began < deadline_s + 1.0
    assert [a.status for a in others] == [200] * 20
    assert max(a.done_at for a in others) < cut_at  # answered while the trickler was held


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(broker, receiver_with):
    server = receiver_with(broker, deadline_s=0.5)
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        began = time.monotonic()
        assert read_to_close(idle) == b""
        assert 0.5 <= time.monotonic() - began < 1.5


@pytest.mark.parametrize("how", ["closes_mid_body", "resets_mid_body", "resets_before_its_answer"])
def test_a_sender_that_hangs_up_leaves_no_traceback_and_the_receiver_serves_on(
    notification_server, errors, caplog, capsys, how
):
    caplog.set_level(logging.DEBUG)
    port = notification_server.port
    state = notification_server.http.server.server_state
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if how.startswith("resets"):  # close with an RST, not a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if how.endswith("mid_body"):
            sock.sendall(b"POST /notification HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        else:
            body = signed("vm-1-hung-up")
            head = f"POST /notification HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
    eventually(lambda: not state.connections and not state.tasks, 5, "the connection to end")
    assert post(port, signed("vm-1-next")).status == 200
    errors.check()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in capsys.readouterr().err


# --- refusals ----------------------------------------------------------------------------------


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


HOST = {"Host": "127.0.0.1"}
TOO_BIG = b"x" * (NOTIFICATION_MAX_BYTES + 1)
REFUSALS = {
    "an oversized body": (
        request("POST", "/notification", {**HOST, "Content-Length": str(len(TOO_BIG))}, TOO_BIG),
        413,
    ),
    "an oversized chunked body": (
        request(
            "POST", "/notification", {**HOST, "Transfer-Encoding": "chunked"}, chunked(TOO_BIG)
        ),
        413,
    ),
    "no Content-Length": (request("POST", "/notification", HOST, b"{}"), 411),
    "a body that is not JSON": (
        request("POST", "/notification", {**HOST, "Content-Length": "8"}, b"not json"),
        400,
    ),
    "a body shorter than its Content-Length": (
        request("POST", "/notification", {**HOST, "Content-Length": "80"}, b'{"order_id": "x"}'),
        400,
    ),
    "a Content-Length that is not a number": (
        request("POST", "/notification", {**HOST, "Content-Length": "abc"}, b"{}"),
        400,
    ),
    "no Host header": (request("POST", "/notification", {"Content-Length": "2"}, b"{}"), 400),
    "a request cut in its headers": (b"POST /notification HTTP/1.1\r\nHost: x\r\nContent-Le", 400),
    "a wrong path": (request("POST", "/v2/charge", {**HOST, "Content-Length": "2"}, b"{}"), 404),
    "a GET of the notification path": (request("GET", "/notification", HOST), 405),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_request_gets_its_code_in_a_json_body_it_can_read(
    notification_server, errors, case
):
    raw, status = REFUSALS[case]
    answer = exchange(notification_server.port, raw)  # sent whole, then the sender's side shut
    assert answer is not None, "closed without an answer"
    assert answer.status == status
    assert_readable(status, answer.json())
    assert answer.headers["connection"] == "close"
    assert not notification_server.desk.handled
    errors.check()


def test_an_oversized_body_is_refused_at_once_and_the_sender_reads_the_answer_without_a_reset(
    notification_server,
):
    body = b"x" * (4 * 1024 * 1024)  # far more than the socket buffers hold
    head = request("POST", "/notification", {**HOST, "Content-Length": str(len(body))})
    with socket.create_connection(("127.0.0.1", notification_server.port), timeout=10) as sock:
        sock.sendall(head + body)  # the receiver drops it unread; a reset would fail this send
        status, headers, answer = parse(read_to_close(sock))
    assert status == 413
    assert_readable(413, answer)


def test_a_chunked_notification_within_the_limit_is_accepted(notification_server):
    raw = request(
        "POST",
        "/notification",
        {**HOST, "Transfer-Encoding": "chunked"},
        chunked(signed("c-1"), 50),
    )
    answer = exchange(notification_server.port, raw)
    assert answer is not None and answer.status == 200
    assert desk_result(notification_server, "c-1") == "unknown_order"


def test_the_health_check_answers_200(notification_server):
    answer = exchange(notification_server.port, request("GET", "/healthz", HOST))
    assert answer is not None and answer.status == 200
    assert_readable(200, answer.json())


# --- Redis -------------------------------------------------------------------------------------


def test_a_genuine_notification_is_answered_503_while_redis_is_down(receiver_with, errors):
    down = redis.Redis(port=free_port(), socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        server = receiver_with(Broker(down, "vm-1"))
        answer = post(server.port, signed("vm-1-000001"))
    finally:
        down.close()
    assert answer.status == 503  # not acknowledged: Midtrans sends it again
    assert_readable(503, answer.body)
    errors.check()


def test_a_notification_redis_cannot_store_by_the_deadline_is_answered_503(receiver_with):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        hung = redis.Redis(
            port=silent.getsockname()[1], socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        try:
            server = receiver_with(Broker(hung, "vm-1"), deadline_s=0.3)
            answer = post(server.port, signed("vm-1-000001"))
            server.stop()  # waits for the Redis call in hand, which fails after 1 s
        finally:
            hung.close()
    assert answer.status == 503
    assert_readable(503, answer.body)
    assert 0.3 <= answer.seconds < 0.9
