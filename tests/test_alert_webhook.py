"""The alert webhook against a local receiver (an in-process HTTP server): delivered in
order, delivered later when the receiver was down, never twice across a restart."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cores.alert_store import AlertStore
from cores.alerts import Alert, AlertKind, Changes
from cores.redis_process import free_port
from services.alert_webhook import WebhookSender
from tests.machine_helpers import eventually

BLOCK_S = 0.05
RETRY_S = (0.05, 0.1)


class Receiver:
    """An HTTP server on `port` that keeps every JSON body POSTed to it and answers
    `status` (503: it is there but failing)."""

    def __init__(self, port: int = 0, status: int = 204) -> None:
        self.bodies: list[dict] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.status < 300:
                    receiver.bodies.append(body)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_port}/hook"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(5)

    def alerts(self) -> list[tuple[str, str]]:
        return [(b["state"], f"{b['kind']}:{b['subject']}") for b in self.bodies]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def store(broker) -> AlertStore:
    return AlertStore(broker)


def raise_alert(store: AlertStore, drink: str, at: float = 1_800_000_000.0) -> None:
    store.apply(Changes(raised=(Alert(AlertKind.SOLD_OUT, drink, "sold out", at),)))


def sender(store: AlertStore, url: str) -> WebhookSender:
    return WebhookSender(store, url, retry_s=RETRY_S, timeout_s=2, block_s=BLOCK_S).start()


def test_each_alert_raised_and_cleared_is_posted_as_json_in_order(store, receiver):
    s = sender(store, receiver.url)
    try:
        raise_alert(store, "cola")
        cleared = Alert(AlertKind.SOLD_OUT, "cola", "back in stock", 1_800_000_060.0)
        store.apply(Changes(cleared=(cleared,)))
        eventually(lambda: len(receiver.bodies) == 2, what="two alerts delivered")
    finally:
        s.stop()
    assert receiver.alerts() == [("raised", "sold_out:cola"), ("cleared", "sold_out:cola")]
    first = receiver.bodies[0]
    assert first["machine_id"] == "vm-1" and first["detail"] == "sold out"
    assert first["at"] == 1_800_000_000.0 and first["id"] == s.delivered[0]


def test_a_newly_set_webhook_is_not_sent_the_alerts_raised_before_it(store, receiver):
    raise_alert(store, "tea")
    s = sender(store, receiver.url)
    try:
        eventually(lambda: store.redis.get(store.cursor_key), what="the cursor stored")
        raise_alert(store, "cola")
        eventually(lambda: receiver.bodies, what="the new alert delivered")
    finally:
        s.stop()
    assert receiver.alerts() == [("raised", "sold_out:cola")]


def test_an_alert_raised_while_the_receiver_is_down_is_delivered_once_it_comes_up(store):
    port = free_port()
    s = sender(store, f"http://127.0.0.1:{port}/hook")  # nothing listens there yet
    receiver = None
    try:
        eventually(lambda: store.redis.get(store.cursor_key), what="the cursor stored")
        raise_alert(store, "cola")
        raise_alert(store, "tea")
        eventually(lambda: not s.delivered and store.redis.xlen(store.alerts_key) == 2)
        receiver = Receiver(port)
        eventually(lambda: len(receiver.bodies) == 2, what="the alerts delivered late")
    finally:
        s.stop()
        if receiver is not None:
            receiver.stop()
    assert receiver.alerts() == [("raised", "sold_out:cola"), ("raised", "sold_out:tea")]


def test_a_receiver_answering_503_gets_the_same_alert_again_until_it_takes_it(store, receiver):
    receiver.status = 503
    s = sender(store, receiver.url)
    try:
        eventually(lambda: store.redis.get(store.cursor_key), what="the cursor stored")
        raise_alert(store, "cola")
        cursor = store.redis.get(store.cursor_key)
        eventually(lambda: not s.delivered and store.redis.get(store.cursor_key) == cursor)
        receiver.status = 200
        eventually(lambda: receiver.bodies, what="the alert taken")
    finally:
        s.stop()
    assert receiver.alerts() == [("raised", "sold_out:cola")]


def test_a_restarted_sender_resends_nothing_already_taken_and_sends_what_came_meanwhile(
    store, receiver
):
    first = sender(store, receiver.url)
    try:
        eventually(lambda: store.redis.get(store.cursor_key), what="the cursor stored")
        raise_alert(store, "cola")
        raise_alert(store, "tea")
        eventually(lambda: len(receiver.bodies) == 2, what="two alerts delivered")
    finally:
        first.stop()
    raise_alert(store, "water")  # while no sender runs
    second = sender(store, receiver.url)
    try:
        eventually(lambda: len(receiver.bodies) >= 3, what="the third alert delivered")
        raise_alert(store, "coffee")
        eventually(lambda: len(receiver.bodies) >= 4, what="the fourth alert delivered")
    finally:
        second.stop()
    subjects = [b["subject"] for b in receiver.bodies]
    assert subjects == ["cola", "tea", "water", "coffee"]
    assert len({b["id"] for b in receiver.bodies}) == 4
    assert len(second.delivered) == 2


def test_a_webhook_url_with_a_secret_in_its_path_never_reaches_the_log(store, caplog):
    """Chat webhooks carry their key in the path: the log names the host and the error's
    kind, never the URL."""
    caplog.set_level("DEBUG")
    secret = "T0K3N-d0-n0t-l0g"
    s = sender(store, f"http://127.0.0.1:{free_port()}/hooks/{secret}")  # nothing listens
    try:
        eventually(lambda: store.redis.get(store.cursor_key), what="the cursor stored")
        raise_alert(store, "cola")
        eventually(
            lambda: any(r.getMessage() == "alert webhook unreachable" for r in caplog.records),
            what="a failed delivery logged",
        )
    finally:
        s.stop()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert secret not in logged
