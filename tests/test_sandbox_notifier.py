"""sandbox.notifier: signed notifications of every change, to the URLs a charge names, retried
when a receiver fails, delivered side by side so that one hung receiver delays no other, and
the NOTIFY_* faults.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib

import pytest

from sandbox.notifier import NOTIFY_LANES
from tests import sandbox_helpers
from tests.sandbox_helpers import WAIT_S, Receiver, free_port, of, signed

clock, receiver, sandbox, api, anon, paid = sandbox_helpers.FIXTURES


class HangingReceiver:
    """A notification URL that accepts connections and never answers, until closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.accepted = threading.Condition()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hang"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.accepted:
                self.connections.append(conn)
                self.accepted.notify_all()

    def wait_connections(self, n: int) -> None:
        with self.accepted:
            assert self.accepted.wait_for(lambda: len(self.connections) >= n, WAIT_S)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        self.thread.join(WAIT_S)
        for conn in self.connections:
            conn.close()


# --------------------------------------------------------------------------------------------
# Notifications


def test_each_change_is_notified_signed_with_string_values_and_metadata_object(
    api, sandbox, receiver
):
    api.charge("vm-1-n", metadata={"machine_id": "vm-1", "n": 1})
    sandbox.pay("vm-1-n")
    api.post("/v2/vm-1-n/refund", json={"refund_key": "n1", "amount": 2000})
    posts = receiver.wait_count(3)
    assert [(p["transaction_status"], p["status_code"]) for p in posts] == [
        ("pending", "201"),
        ("settlement", "200"),
        ("partial_refund", "200"),
    ]
    for post in posts:
        assert signed(post)
        assert post["metadata"] == {"machine_id": "vm-1", "n": 1}
        assert post["status_message"] == "midtrans payment notification"
        for name, value in post.items():
            if name not in ("metadata", "refunds"):
                assert isinstance(value, str), name
    assert posts[2]["refund_amount"] == "2000.00"


@pytest.mark.parametrize(
    ("ending", "status"), [("cancel", "cancel"), ("expire", "expire"), ("deny", "deny")]
)
def test_cancel_expire_and_deny_are_notified_with_202(api, sandbox, receiver, ending, status):
    api.charge("vm-1-n2")
    if ending == "deny":
        api.post("/simulator/deny/vm-1-n2")
    else:
        api.post(f"/v2/vm-1-n2/{ending}")
    last = receiver.wait_count(2)[-1]
    assert (last["transaction_status"], last["status_code"]) == (status, "202")
    assert signed(last)


def test_x_override_notification_sends_to_each_listed_url_instead(api, sandbox, receiver):
    second, third = Receiver(), Receiver()
    try:
        api.charge("vm-1-ov", headers={"X-Override-Notification": f"{second.url}, {third.url}"})
        sandbox.pay("vm-1-ov")
        for r in (second, third):
            assert of(r.wait_count(2), "vm-1-ov") == ["pending", "settlement"]
        api.charge("vm-1-plain")
        assert of(receiver.wait_count(1), "vm-1-plain") == ["pending"]
        assert of(receiver.posts, "vm-1-ov") == []
    finally:
        second.close()
        third.close()


def test_failing_receiver_is_retried_until_it_accepts(api):
    flaky = Receiver(fail_first=2)
    try:
        api.charge("vm-1-flaky", headers={"X-Override-Notification": flaky.url})
        posts = flaky.wait_count(1)
        assert flaky.attempts == 3
        assert of(posts, "vm-1-flaky") == ["pending"]
    finally:
        flaky.close()


def test_unreachable_receiver_does_not_stop_other_deliveries(api, sandbox):
    good = Receiver()
    dead = f"http://127.0.0.1:{free_port()}/gone"
    try:
        api.charge("vm-1-dead", headers={"X-Override-Notification": f"{dead},{good.url}"})
        sandbox.pay("vm-1-dead")
        assert of(good.wait_count(2), "vm-1-dead") == ["pending", "settlement"]
        assert api.status("vm-1-dead").json()["transaction_status"] == "settlement"
    finally:
        good.close()


def test_a_receiver_that_hangs_delays_no_other_receiver(api, sandbox):
    # Far longer than the test waits: were deliveries made one after the other, the good
    # receiver would hear nothing until the hung one timed out.
    sandbox.notify_timeout_s = 60
    hung, good = HangingReceiver(), Receiver()
    try:
        api.charge("vm-1-hang", headers={"X-Override-Notification": f"{hung.url},{good.url}"})
        hung.wait_connections(1)  # the pending notification is stuck there
        sandbox.pay("vm-1-hang")
        assert of(good.wait_count(2), "vm-1-hang") == ["pending", "settlement"]
        # The hung receiver's settlement waits behind its pending one: one connection only.
        assert len(hung.connections) == 1
    finally:
        hung.close()
        good.close()


def test_one_receiver_gets_several_transactions_at_once_each_in_its_own_lane(api, sandbox):
    """A receiver is sent the notifications of several transactions at once (one connection
    per lane in use), not one after the other: a busy backend is not held behind one POST;
    each transaction keeps to one lane, so its own notifications stay in order."""
    sandbox.notify_timeout_s = 60
    hung = HangingReceiver()
    try:
        lanes = set()
        for n in range(12):
            reply = api.charge(f"vm-1-lanes-{n}", headers={"X-Override-Notification": hung.url})
            lanes.add(zlib.crc32(reply.json()["transaction_id"].encode()) % NOTIFY_LANES)
        assert len(lanes) > 1
        hung.wait_connections(len(lanes))  # one pending notification stuck in each lane
        assert len(hung.connections) == len(lanes)
    finally:
        hung.close()


def test_stop_cuts_off_a_delivery_to_a_receiver_that_hangs(api, sandbox):
    sandbox.notify_timeout_s = 60
    hung = HangingReceiver()
    try:
        api.charge("vm-1-hang-stop", headers={"X-Override-Notification": hung.url})
        hung.wait_connections(1)
        stopper = threading.Thread(target=sandbox.stop)
        stopper.start()
        stopper.join(WAIT_S)  # the 60 s timeout would hold it far longer
        assert not stopper.is_alive()
    finally:
        hung.close()


# --------------------------------------------------------------------------------------------
# NOTIFY_* faults


def test_notify_delay_holds_notifications_back(api, sandbox, receiver):
    sandbox.set_faults(NOTIFY_DELAY_S=0.4)
    start = time.monotonic()
    api.charge("vm-1-late")
    receiver.wait_count(1)
    assert receiver.arrivals[0] - start >= 0.4


def test_notify_duplicate_rate_sends_each_notification_twice(api, sandbox, receiver):
    sandbox.set_faults(NOTIFY_DUPLICATE_RATE=1)
    api.charge("vm-1-twice")
    posts = receiver.wait_count(2)
    assert posts[0] == posts[1]


def test_notify_reorder_sends_a_transactions_notifications_newest_first(api, sandbox, receiver):
    sandbox.set_faults(NOTIFY_REORDER=1)
    api.charge("vm-1-rev")
    sandbox.pay("vm-1-rev")
    assert of(receiver.wait_count(2), "vm-1-rev") == ["settlement", "pending"]
