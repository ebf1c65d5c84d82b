"""The broker and the late-payment desk when Redis misbehaves: a reply lost after EXEC ran,
and an outage while the desk works."""

from __future__ import annotations

import threading

import redis
import requests

from constants.states import State
from cores.broker import Broker
from cores.config import LOCAL_SANDBOX_KEY
from cores.machine import Transition
from cores.midtrans import MidtransClient, signature
from services.notification_service import NotificationServer
from tests.machine_helpers import desk_result, eventually


def lose_next_reply(monkeypatch) -> list[int]:
    """The next EXEC runs, then its reply is lost: redis-py raises WatchError when the
    connection drops while keys are watched."""
    calls: list[int] = []
    original = redis.client.Pipeline.execute

    def execute(self, raise_on_error=True):
        in_multi = self.explicit_transaction
        result = original(self, raise_on_error)
        if in_multi and not calls:
            calls.append(1)
            raise redis.WatchError("connection lost while watching")
        return result

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    return calls


def test_a_transition_whose_reply_was_lost_is_reported_applied_once(broker, monkeypatch):
    lost = lose_next_reply(monkeypatch)
    events_before = broker.redis.xlen(broker.events_key)
    assert broker.transition(Transition(State.SHOW_MENU, (State.IDLE,), None, [])) is True
    assert lost == [1]
    assert broker.snapshot().state == State.SHOW_MENU
    assert broker.redis.xlen(broker.events_key) == events_before + 1  # not applied twice


def test_an_order_whose_reply_was_lost_returns_its_id_and_exists_once(broker, monkeypatch):
    broker.show_menu()
    lose_next_reply(monkeypatch)
    order_id = broker.place_order("cola")
    assert broker.snapshot().order_id == order_id
    assert [s["kind"] for s in broker.sales()].count("ordered") == 1


def test_the_desk_survives_a_redis_outage_and_answers_503_meanwhile(
    start_redis_server, menu, caplog
):
    server = start_redis_server(appendonly=True)
    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    broker = Broker(client, "vm-1")
    broker.ensure_ready(menu)
    gateway = MidtransClient("http://127.0.0.1:9", LOCAL_SANDBOX_KEY, retry_attempts=1)
    receiver = NotificationServer(broker, gateway, LOCAL_SANDBOX_KEY).start()
    desk_thread = receiver.threads[0]
    body = {"order_id": "nobody", "status_code": "200", "gross_amount": "7000.00"}
    body["signature_key"] = signature("nobody", "200", "7000.00", LOCAL_SANDBOX_KEY)
    try:
        server.stop()
        eventually(
            lambda: any(r.getMessage() == "redis unavailable" for r in caplog.records),
            10,
            "the desk to meet the outage",
        )
        assert desk_thread.is_alive()
        answer = requests.post(receiver.url, json=body, timeout=10)
        assert answer.status_code == 503  # not acknowledged, so Midtrans sends it again
        server.start()
        assert requests.post(receiver.url, json=body, timeout=10).status_code == 200
        assert desk_result(receiver, "nobody") == "unknown_order"
        assert client.zscore(broker.recheck_key, "nobody") is None
    finally:
        receiver.stop()
        gateway.close()
        client.close()
    assert not any(t.is_alive() for t in receiver.threads if t is not threading.current_thread())
