"""`main.py`'s operator commands as processes against a private redis-server, and the money
paths behind them (a price changed mid-order, a refund retried through the sandbox)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from constants.orders import OperatorKind
from constants.states import Sale, State
from cores.midtrans import MidtransClient
from cores.operations import Operations
from services import resolutions
from services.refunds import Refunder
from tests.machine_helpers import cli, wait_state
from tests.test_purchase import Machine

pytestmark = pytest.mark.integration


@pytest.fixture
def machine(broker, sandbox, settings):
    m = Machine(broker, sandbox, settings).start()
    yield m
    m.stop()


def test_redis_down_is_one_line_and_exit_1_for_every_command(tmp_path):
    for args in (["status"], ["menu"], ["price", "cola", "7500"], ["sales", "--csv"]):
        done = cli("redis://127.0.0.1:1/0", tmp_path, *args)
        assert done.returncode == 1, done
        assert done.stderr.startswith("redis unreachable at redis://127.0.0.1:1/0: ")
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_price_and_stock_take_effect_at_once_and_are_audited(redis_server, broker, tmp_path):
    done = cli(redis_server.url, tmp_path, "price", "cola", "7500")
    assert done.returncode == 0 and "Rp 7.000 -> Rp 7.500" in done.stdout
    assert cli(redis_server.url, tmp_path, "stock", "cola", "3").returncode == 0
    assert {d.id: d.price for d in broker.menu()}["cola"] == 7500
    assert broker.stock()["cola"] == 3
    audit = json.loads(cli(redis_server.url, tmp_path, "audit", "--json").stdout)
    assert [(e["actor"], e["action"]) for e in audit] == [
        ("cli:ana", "set_stock"),
        ("cli:ana", "set_price"),
    ]


def test_refused_input_is_one_line_exit_1_and_changes_nothing(redis_server, broker, tmp_path):
    before = (broker.menu(), broker.stock())
    for args in (
        ["price", "cola", "0"],
        ["stock", "cola", "999"],
        ["price", "juice", "1"],
        ["resolve", "nope", "refund"],
    ):
        done = cli(redis_server.url, tmp_path, *args)
        assert done.returncode == 1 and done.stderr.startswith("refused: "), done
        assert len(done.stderr.strip().splitlines()) == 1
    assert (broker.menu(), broker.stock()) == before
    assert cli(redis_server.url, tmp_path, "price", "cola").returncode == 2


def test_operator_add_reads_the_password_from_stdin(redis_server, broker, tmp_path, real_redis):
    from cores.accounts import Accounts

    assert (
        cli(
            redis_server.url, tmp_path, "operator", "add", "ana", stdin="a long passphrase\n"
        ).returncode
        == 0
    )
    assert Accounts(real_redis).verify("ana", "a long passphrase")
    listed = cli(redis_server.url, tmp_path, "operator", "list", "--json")
    assert json.loads(listed.stdout) == ["ana"]
    assert cli(redis_server.url, tmp_path, "operator", "remove", "ana").returncode == 0
    audit = json.loads(cli(redis_server.url, tmp_path, "audit", "--json").stdout)
    assert [(e["action"], e["target"], e["before"], e["after"]) for e in audit] == [
        ("operator_remove", "ana", True, False),
        ("operator_add", "ana", False, True),
    ]
    assert "passphrase" not in json.dumps(audit) and "argon2" not in json.dumps(audit)


def test_menu_import_shows_the_changes_and_applies_them_with_yes(redis_server, broker, tmp_path):
    menu = tmp_path / "menu.json"
    menu.write_text(json.dumps([{"id": "cola", "name": "Cola", "price": 8000}]))
    dry = cli(redis_server.url, tmp_path, "menu", "import", str(menu))
    assert dry.returncode == 1 and "change cola price: Rp 7.000 -> Rp 8.000" in dry.stdout
    assert {d.id for d in broker.menu()} != {"cola"}
    done = cli(redis_server.url, tmp_path, "menu", "import", str(menu), "--yes")
    assert done.returncode == 0 and [d.id for d in broker.menu()] == ["cola"]


def test_a_price_changed_while_the_qr_is_shown_applies_to_the_next_order_only(machine):
    ops = Operations(machine.broker)
    order_id = machine.order("cola")
    ops.set_price("cola", 7500, "cli:ana")
    [txn] = [t for t in machine.sandbox.transactions() if t["order_id"] == order_id]
    assert int(float(txn["gross_amount"])) == 7000
    assert machine.broker.snapshot().frame["values"]["amount"] == 7000
    machine.sandbox.pay(order_id)
    wait_state(machine.broker, State.DISPENSED)
    paid = [
        s for s in machine.broker.sales() if s["order_id"] == order_id and s["kind"] == Sale.PAID
    ]
    assert paid[0]["amount"] == "7000"
    wait_state(machine.broker, State.IDLE)
    second = machine.order("cola")
    assert machine.broker.order(second).amount == 7500


def test_sales_csv_has_a_header_and_one_line_per_order_after_a_purchase(
    machine, redis_server, tmp_path
):
    order_id = machine.order("cola")
    machine.sandbox.pay(order_id)
    wait_state(machine.broker, State.DISPENSED)
    done = cli(redis_server.url, tmp_path, "sales", "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert done.stdout.splitlines()[0].startswith("order_id,")
    assert [(r["order_id"], r["status"], r["paid"]) for r in rows] == [
        (order_id, "dispensed", "7000")
    ]
    report = json.loads(cli(redis_server.url, tmp_path, "sales", "--json").stdout)
    assert report["takings"] == 7000 and report["reconciliation"]["balanced"] is True


def test_retry_refund_goes_through_midtrans_with_the_same_refund_key(machine):
    order_id = machine.order("cola")
    machine.sandbox.pay(order_id)
    wait_state(machine.broker, State.DISPENSED)
    ops = Operations(machine.broker)
    machine.broker.flag_for_operator(order_id, OperatorKind.REFUND_OWED, amount=7000, drink="cola")
    client = MidtransClient.from_settings(machine.settings)
    try:
        done = resolutions.resolve(
            ops, Refunder(client, lambda s: None), order_id, "retry_refund", "cli:ana"
        )
    finally:
        client.close()
    assert done.done and ops.queue() == []
    [txn] = [t for t in machine.sandbox.transactions() if t["order_id"] == order_id]
    assert txn["transaction_status"] == "refund"
    sale = machine.broker.sales()[-1]
    assert (sale["kind"], sale["refund_key"], sale["resolved_by"]) == (
        Sale.REFUNDED,
        f"{order_id}-r1",
        "cli:ana",
    )


def test_a_refund_made_while_another_operator_resolved_the_entry_is_still_recorded(machine):
    """Two operators at once: the refund went through at Midtrans, so it is in the sales
    record and the audit even though the queue entry was taken meanwhile."""
    from constants.orders import Resolution

    order_id = machine.order("cola")
    machine.sandbox.pay(order_id)
    wait_state(machine.broker, State.DISPENSED)
    ops = Operations(machine.broker)
    machine.broker.flag_for_operator(order_id, OperatorKind.REFUND_OWED, amount=7000, drink="cola")
    client = MidtransClient.from_settings(machine.settings)
    real = Refunder(client, lambda s: None)

    class Racing:
        def refund(self, oid: str, amount: int, reason: str):
            ops.close_entry(oid, Resolution.MARK_REFUNDED, "console:bo", "cash from the till")
            return real.refund(oid, amount, reason)

    try:
        done = resolutions.resolve(ops, Racing(), order_id, "retry_refund", "cli:ana")
    finally:
        client.close()
    assert done.done and "meanwhile" in done.message
    refunds = [s for s in machine.broker.sales() if s["order_id"] == order_id]
    assert [(s["kind"], s["resolved_by"]) for s in refunds if "resolved_by" in s] == [
        (Sale.REFUNDED, "console:bo"),
        (Sale.REFUNDED, "cli:ana"),
    ]
    assert [e["actor"] for e in ops.audit()[:2]] == ["cli:ana", "console:bo"]


def test_the_same_refund_resolved_twice_at_once_is_recorded_once(machine):
    """A double click on Refund: both calls reach Midtrans with the one refund key, which
    answers the second with the first's answer; the money moved once, and is recorded once."""
    order_id = machine.order("cola")
    machine.sandbox.pay(order_id)
    wait_state(machine.broker, State.DISPENSED)
    ops = Operations(machine.broker)
    machine.broker.flag_for_operator(order_id, OperatorKind.REFUND_OWED, amount=7000, drink="cola")
    client = MidtransClient.from_settings(machine.settings)
    real = Refunder(client, lambda s: None)

    class DoubleClick:
        def refund(self, oid: str, amount: int, reason: str):
            first = resolutions.resolve(ops, real, oid, "retry_refund", "console:bo")
            assert first.done
            return real.refund(oid, amount, reason)

    try:
        done = resolutions.resolve(ops, DoubleClick(), order_id, "retry_refund", "console:bo")
    finally:
        client.close()
    assert done.done and "recorded already" in done.message
    kinds = [s["kind"] for s in machine.broker.sales() if s["order_id"] == order_id]
    assert kinds.count(Sale.REFUNDED) == 1


def test_maintenance_from_the_command_line_is_audited(redis_server, broker, tmp_path):
    assert cli(redis_server.url, tmp_path, "maintenance", "on").returncode == 0
    assert broker.snapshot().state == State.OUT_OF_SERVICE
    assert cli(redis_server.url, tmp_path, "maintenance", "off").returncode == 0
    audit = json.loads(cli(redis_server.url, tmp_path, "audit", "--json").stdout)
    assert [(e["actor"], e["action"], e["before"], e["after"]) for e in audit] == [
        ("cli:ana", "maintenance", "OUT_OF_SERVICE", "IDLE"),
        ("cli:ana", "maintenance", "IDLE", "OUT_OF_SERVICE"),
    ]


def test_alerts_lists_the_open_alerts_readable_and_as_json(redis_server, broker, tmp_path):
    from cores.alert_store import AlertStore
    from cores.alerts import Alert, AlertKind, Changes

    assert cli(redis_server.url, tmp_path, "alerts").stdout.strip() == "no open alerts"
    sold_out = Alert(AlertKind.SOLD_OUT, "tea", "Iced Tea is sold out", broker.clock())
    AlertStore(broker).apply(Changes(raised=(sold_out,)))
    listed = json.loads(cli(redis_server.url, tmp_path, "alerts", "--json").stdout)
    assert [row["id"] for row in listed] == ["sold_out:tea"]
    readable = cli(redis_server.url, tmp_path, "alerts").stdout
    assert "sold_out" in readable and "tea" in readable


def test_a_redis_url_is_shown_without_its_password():
    """What `main.py` prints of a Redis URL (errors, the banner, doctor): the password masked,
    for one Redis and for a cluster; a URL without one is shown as it is."""
    from services.runtime import shown_redis_url

    assert shown_redis_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    shown = shown_redis_url("redis://ana:s3cret@db.example:6380/1")
    assert "s3cret" not in shown and shown == "redis://ana:***@db.example:6380/1"
    cluster = shown_redis_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7000")
    assert "s3cret" not in cluster and cluster.startswith("redis+cluster://:***@10.0.0.1:7000")
