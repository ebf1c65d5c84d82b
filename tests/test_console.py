"""The operator's console over HTTP (services/operator_service.py and its pages), on a real
redis-server: log-in and its backoff, sessions and their expiry, CSRF, and each action with its
audit entry. What a refused request must leave alone is compared with machine_helpers.machine_state.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator

import pytest

from constants.orders import OperatorKind
from constants.states import State
from cores.accounts import Accounts
from cores.alert_store import AlertStore
from cores.alerts import Alert, AlertKind, Changes
from cores.broker import Broker
from cores.config import ConfigError, Settings
from cores.operations import Operations
from services.operator_service import create_app
from tests.console_helpers import OPERATOR, PASSWORD, TestClient, csrf_of, log_in, post
from tests.machine_helpers import Clock, machine_state


@pytest.fixture
def clock() -> Clock:
    """The console's clock, moved by hand (session expiry, the log-in backoff)."""
    return Clock()


@pytest.fixture
def client(broker: Broker, settings: Settings, clock: Clock) -> Iterator[TestClient]:
    """The console of the test machine, with one operator (not logged in yet)."""
    Accounts(broker.redis).add(OPERATOR, PASSWORD)
    app = create_app(settings, broker, clock=clock)
    with TestClient(app, base_url="http://127.0.0.1:3336") as c:
        yield c


@pytest.fixture
def token(client: TestClient) -> str:
    """Logged in: the session's CSRF token."""
    return log_in(client)


def audit(broker: Broker) -> list[dict]:
    return Operations(broker).audit()


# --- log-in, sessions ---------------------------------------------------------------------------


def test_the_console_root_sends_a_stranger_to_the_log_in_form(client: TestClient) -> None:
    answer = client.get("/", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"
    for page in ("/machines", "/machines/vm-1/", "/machines/vm-1/menu", "/machines/vm-1/sales.csv"):
        assert client.get(page, follow_redirects=False).headers["location"] == "/login"
    form = client.get("/login")
    assert 'name="password"' in form.text and 'type="password"' in form.text


def test_an_operator_logs_in_sees_the_machine_list_and_logs_out(client: TestClient) -> None:
    token = log_in(client)
    home = client.get("/")
    assert home.url.path == "/machines"
    assert 'href="/machines/vm-1/"' in home.text
    cookie = client.cookies.jar
    assert any(c.name == "console_session" for c in cookie)
    set_cookie = client.get("/machines").headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie

    answer = post(client, "/logout", token)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert client.get("/machines", follow_redirects=False).headers["location"] == "/login"


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(
    client: TestClient, clock: Clock
) -> None:
    token = csrf_of(client.get("/login").text)
    wrong = client.post("/login", data={"name": OPERATOR, "password": "nope", "csrf": token})
    clock.now += 3600  # past the backoff of the first failure
    unknown = client.post("/login", data={"name": "nobody", "password": "nope", "csrf": token})
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong user name or password." in wrong.text
    assert wrong.text.replace(OPERATOR, "NAME") == unknown.text.replace("nobody", "NAME")
    assert client.get("/machines", follow_redirects=False).headers["location"] == "/login"


def test_failed_log_ins_back_off_doubling_up_to_a_minute_even_for_the_right_password(
    client: TestClient, clock: Clock
) -> None:
    token = csrf_of(client.get("/login").text)

    def attempt(password: str) -> int:
        data = {"name": OPERATOR, "password": password, "csrf": token}
        return client.post("/login", data=data, follow_redirects=False).status_code

    for delay in (1, 2, 4, 8, 16, 32, 60, 60):
        assert attempt("wrong password") == 401
        clock.now += delay - 0.5
        answer = client.post("/login", data={"name": OPERATOR, "password": PASSWORD, "csrf": token})
        assert answer.status_code == 429  # not even heard
        assert "Too many failed log-ins" in answer.text
        clock.now += 0.5
    assert attempt(PASSWORD) == 303


def test_backoff_counts_per_client_address_across_account_names(
    client: TestClient, clock: Clock
) -> None:
    token = csrf_of(client.get("/login").text)
    for n, name in enumerate(("a1", "a2", "a3")):
        clock.now += 2 ** (n - 1) if n else 0  # the address's backoff after n failures
        answer = client.post("/login", data={"name": name, "password": "x", "csrf": token})
        assert answer.status_code == 401
    # Three failures from this address: 4 s to wait, whatever the name.
    clock.now += 3
    answer = client.post("/login", data={"name": OPERATOR, "password": PASSWORD, "csrf": token})
    assert answer.status_code == 429
    assert "try again in" in answer.text


def test_a_session_expires_after_console_session_s(
    client: TestClient, clock: Clock, settings: Settings
) -> None:
    log_in(client)
    clock.now += settings.console_session_s - 1
    assert client.get("/machines/vm-1/", follow_redirects=False).status_code == 200
    clock.now += 2
    answer = client.get("/machines/vm-1/", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"


def test_a_post_of_an_expired_session_changes_nothing(
    client: TestClient, broker: Broker, clock: Clock, settings: Settings, token: str
) -> None:
    before = machine_state(broker)
    clock.now += settings.console_session_s + 1
    answer = post(client, "/machines/vm-1/stock/cola", token, stock="1", capacity="10")
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert machine_state(broker) == before
    assert audit(broker) == []


@pytest.mark.parametrize("sent", [None, "", "forged-token"], ids=["missing", "empty", "wrong"])
def test_a_post_without_the_right_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, broker: Broker, token: str, sent: str | None
) -> None:
    before = machine_state(broker)
    for path, fields in (
        ("/machines/vm-1/menu", {"id": "cola", "price": "9000"}),
        ("/machines/vm-1/stock/cola/refill", {}),
        ("/machines/vm-1/maintenance", {"mode": "on"}),
        ("/machines/vm-1/menu/cola/remove", {}),
        ("/logout", {}),
    ):
        answer = post(client, path, sent, **fields)
        assert answer.status_code == 403, path
        assert "security token" in answer.text
    assert machine_state(broker) == before
    assert audit(broker) == []
    assert client.get("/machines", follow_redirects=False).status_code == 200  # still logged in


def test_a_log_in_without_the_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/login")
    answer = client.post("/login", data={"name": OPERATOR, "password": PASSWORD})
    assert answer.status_code == 403
    assert client.get("/machines", follow_redirects=False).headers["location"] == "/login"


def test_the_session_secret_is_generated_once_and_kept_private(
    broker: Broker, settings: Settings
) -> None:
    create_app(settings, broker)
    path = settings.console_secret_file
    first = path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    create_app(settings, broker)
    assert path.read_text() == first


def test_a_secret_file_cut_short_is_replaced_never_used(broker: Broker, settings: Settings) -> None:
    """A console that died between making the file and writing it leaves it empty: signing
    sessions with an empty key would let anyone forge one."""
    path = settings.console_secret_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    create_app(settings, broker)
    assert len(path.read_text().strip()) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_log_ins_sent_together_back_off_like_log_ins_sent_one_by_one(
    client: TestClient, clock: Clock
) -> None:
    """Each try is counted before its password is checked: of tries that arrive together only
    the first is heard; the rest wait, whatever the password."""
    from concurrent.futures import ThreadPoolExecutor

    token = csrf_of(client.get("/login").text)

    def guess(n: int) -> int:
        data = {"name": OPERATOR, "password": f"guess-{n}", "csrf": token}
        return client.post("/login", data=data).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(guess, range(8)))
    assert codes == [401] + [429] * 7


def test_removing_an_account_ends_its_sessions(client: TestClient, broker: Broker) -> None:
    log_in(client)
    assert client.get("/machines/vm-1/", follow_redirects=False).status_code == 200
    Accounts(broker.redis).remove(OPERATOR)
    answer = client.get("/machines/vm-1/", follow_redirects=False)
    assert answer.status_code in (302, 303, 307)
    assert answer.headers["location"].endswith("/login")


def test_redis_down_is_a_page_that_says_so_not_a_traceback(
    client: TestClient, broker: Broker, settings: Settings
) -> None:
    import redis

    from cores.redis_process import free_port

    token = log_in(client)
    dead = Broker(redis.Redis(port=free_port(), socket_connect_timeout=1), broker.machine_id)
    client.app.state.console.brokers = {broker.machine_id: dead}
    for answer in (
        client.get("/machines/vm-1/menu"),
        post(client, "/machines/vm-1/stock/cola/refill", token),
    ):
        assert answer.status_code == 503
        assert "cannot be reached" in answer.text and "Traceback" not in answer.text


# --- actions and their audit ----------------------------------------------------------------------


def test_the_operator_changes_a_price_and_the_audit_names_them(
    client: TestClient, broker: Broker, token: str
) -> None:
    answer = post(
        client,
        "/machines/vm-1/menu",
        token,
        id="cola",
        name="Cola",
        name_en="Cola",
        price="9000",
        icon="assets/cola.svg",
        slot="1",
    )
    assert answer.status_code == 303
    assert next(d for d in broker.menu() if d.id == "cola").price == 9000
    page = client.get("/machines/vm-1/menu")
    assert "cola saved." in page.text
    assert "Rp 9.000" in page.text
    entry = audit(broker)[0]
    assert entry["actor"] == f"console:{OPERATOR}"
    assert entry["action"] == "put_drink" and entry["target"] == "cola"
    assert entry["after"]["price"] == 9000 and entry["before"]["price"] != 9000
    assert "put_drink" in client.get("/machines/vm-1/audit").text


def test_the_operator_adds_disables_enables_and_removes_a_drink(
    client: TestClient, broker: Broker, token: str
) -> None:
    fields = {"id": "kopi", "name": "Kopi Susu", "name_en": "Milk coffee", "price": "12000"}
    assert post(client, "/machines/vm-1/menu", token, new="1", **fields).status_code == 303
    kopi = next(d for d in broker.menu() if d.id == "kopi")
    assert (kopi.name, kopi.name_en, kopi.price, kopi.enabled) == (
        "Kopi Susu",
        "Milk coffee",
        12000,
        True,
    )
    assert kopi.slot > 0

    assert post(client, "/machines/vm-1/menu/kopi/enabled", token, enabled="0").status_code == 303
    assert not next(d for d in broker.menu() if d.id == "kopi").enabled
    assert post(client, "/machines/vm-1/menu/kopi/enabled", token, enabled="1").status_code == 303
    assert next(d for d in broker.menu() if d.id == "kopi").enabled
    assert post(client, "/machines/vm-1/menu/kopi/remove", token).status_code == 303
    assert "kopi" not in {d.id for d in broker.menu()}
    actions = [(e["action"], e["target"]) for e in reversed(audit(broker))]
    assert actions == [
        ("put_drink", "kopi"),
        ("set_enabled", "kopi"),
        ("set_enabled", "kopi"),
        ("remove_drink", "kopi"),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"price": "0"}, "price"),
        ({"price": "10000001"}, "price"),
        ({"price": "7.5"}, "price"),
        ({"price": "tujuh ribu"}, "price"),
        ({"name": ""}, "name"),
        ({"name": "x" * 41}, "name"),
        ({"slot": "99999"}, "slot"),
        ({"icon": "https://evil.example/x.png"}, "icon"),
    ],
)
def test_a_refused_menu_input_shows_its_error_and_changes_nothing(
    client: TestClient, broker: Broker, token: str, fields: dict, message: str
) -> None:
    before = machine_state(broker)
    answer = post(client, "/machines/vm-1/menu", token, id="cola", **fields)
    assert answer.status_code == 400
    assert 'data-testid="error"' in answer.text and message in answer.text
    assert machine_state(broker) == before
    assert audit(broker) == []


def test_adding_a_drink_with_an_id_on_the_menu_is_refused(
    client: TestClient, broker: Broker, token: str
) -> None:
    before = machine_state(broker)
    answer = post(client, "/machines/vm-1/menu", token, new="1", id="cola", name="X", price="1")
    assert answer.status_code == 400 and "on the menu already" in answer.text
    assert machine_state(broker) == before


def test_an_unknown_drink_is_refused_on_every_action(
    client: TestClient, broker: Broker, token: str
) -> None:
    before = machine_state(broker)
    for path, fields in (
        ("/machines/vm-1/menu/nope/enabled", {"enabled": "0"}),
        ("/machines/vm-1/menu/nope/remove", {}),
        ("/machines/vm-1/stock/nope", {"stock": "1"}),
        ("/machines/vm-1/stock/nope/refill", {}),
    ):
        answer = post(client, path, token, **fields)
        assert answer.status_code == 400, path
        assert "no drink" in answer.text
    assert machine_state(broker) == before


def test_html_in_a_drink_name_is_shown_as_text_on_every_page(
    client: TestClient, broker: Broker, token: str
) -> None:
    evil = "<script>alert(1)</script>"
    Operations(broker).put_drink({"id": "evil", "name": evil, "price": 5000}, "test")
    for page in ("menu", "stock", "audit", "sales"):
        text = client.get(f"/machines/vm-1/{page}").text
        assert evil not in text, page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/machines/vm-1/menu").text


def test_stock_units_capacity_and_threshold_are_set_together_and_refill_fills_to_capacity(
    client: TestClient, broker: Broker, token: str
) -> None:
    answer = post(
        client, "/machines/vm-1/stock/cola", token, stock="3", capacity="12", low_stock="4"
    )
    assert answer.status_code == 303
    cola = next(d for d in broker.menu() if d.id == "cola")
    assert (broker.stock()["cola"], cola.capacity, cola.low_stock) == (3, 12, 4)
    assert 'data-testid="level-cola">Low' in client.get("/machines/vm-1/stock").text

    assert post(client, "/machines/vm-1/stock/cola/refill", token).status_code == 303
    assert broker.stock()["cola"] == 12
    # Units and limits were one write, audited once.
    assert [e["action"] for e in audit(broker)] == ["refill", "set_stock_and_limits"]


@pytest.mark.parametrize(
    "fields",
    [
        {"stock": "-1", "capacity": "10"},
        {"stock": "11", "capacity": "10"},
        {"stock": "5", "capacity": "0"},
        {"stock": "5", "capacity": "10", "low_stock": "11"},
        {"stock": "lots", "capacity": "10"},
    ],
)
def test_a_refused_stock_input_changes_nothing(
    client: TestClient, broker: Broker, token: str, fields: dict
) -> None:
    before = machine_state(broker)
    answer = post(client, "/machines/vm-1/stock/cola", token, **fields)
    assert answer.status_code == 400
    assert 'data-testid="error"' in answer.text
    assert machine_state(broker) == before


def test_maintenance_goes_on_and_off_and_is_refused_mid_purchase(
    client: TestClient, broker: Broker, token: str
) -> None:
    assert post(client, "/machines/vm-1/maintenance", token, mode="on").status_code == 303
    assert broker.snapshot().state == State.OUT_OF_SERVICE
    assert "out of service" in client.get("/machines/vm-1/maintenance").text
    assert post(client, "/machines/vm-1/maintenance", token, mode="off").status_code == 303
    assert broker.snapshot().state == State.IDLE
    audit = Operations(broker).audit()
    assert [(e["action"], e["before"], e["after"]) for e in audit[:2]] == [
        ("maintenance", "OUT_OF_SERVICE", "IDLE"),
        ("maintenance", "IDLE", "OUT_OF_SERVICE"),
    ]

    broker.show_menu()
    broker.place_order("cola")  # a customer is buying
    before = machine_state(broker)
    answer = post(client, "/machines/vm-1/maintenance", token, mode="on")
    assert answer.status_code == 409
    assert "a customer is buying right now" in answer.text
    assert machine_state(broker) == before


def test_the_overview_shows_state_order_heartbeats_and_todays_sales(
    client: TestClient, broker: Broker, token: str
) -> None:
    broker.show_menu()
    order_id = broker.place_order("cola")
    values = client.get("/machines/vm-1/overview.json").json()
    assert values["state"] == str(State.MENU_CLICKED)
    assert values["order"]["order_id"] == order_id
    assert values["order"]["amount_text"].startswith("Rp ")
    assert {b["service"] for b in values["heartbeats"]} >= {"ORDER", "DISPENSE"}
    assert values["redis"] == "reachable"
    assert values["today"] == {"count": 0, "takings_text": "Rp 0"}
    page = client.get("/machines/vm-1/")
    assert order_id in page.text and 'data-live="/machines/vm-1/live"' in page.text


def test_an_unknown_machine_is_not_found(client: TestClient, token: str) -> None:
    assert client.get("/machines/vm-9/").status_code == 404


# --- sales and the queue --------------------------------------------------------------------------


def paid_order(broker: Broker, drink: str = "cola") -> str:
    """A sale of `drink`, recorded as the workers would: ordered, paid, dispensed (now: the
    sales stream's ids are its entries' real times)."""
    broker.show_menu()
    order_id = broker.place_order(drink)
    amount = next(d.price for d in broker.menu() if d.id == drink)
    broker.record_sale(order_id, "paid", amount=amount, payment_type="qris")
    broker.record_sale(order_id, "dispensed", amount=amount)
    return order_id


def test_sales_show_totals_reconciliation_charts_and_csv(
    client: TestClient, broker: Broker, clock: Clock, token: str
) -> None:
    clock.now = time.time()
    order_id = paid_order(broker)
    price = next(d.price for d in broker.menu() if d.id == "cola")
    day = client.app.state.console.today()
    report = client.get(f"/machines/vm-1/sales.json?from={day}&to={day}").json()
    assert (report["sales"], report["takings"]) == (1, price)
    assert report["reconciliation"]["balanced"]
    assert report["charts"]["by_drink"] == {"labels": ["cola"], "count": [1], "takings": [price]}
    assert sum(report["charts"]["by_hour"]["count"]) == 1

    page = client.get(f"/machines/vm-1/sales?from={day}&to={day}")
    assert order_id in page.text and 'data-testid="balanced">balanced' in page.text
    csv = client.get(f"/machines/vm-1/sales.csv?from={day}&to={day}")
    assert csv.headers["content-type"].startswith("text/csv")
    header, line = csv.text.splitlines()
    assert header.split(",")[0] == "order_id" and line.startswith(order_id)


def test_a_bad_sales_range_shows_its_error(client: TestClient, token: str) -> None:
    answer = client.get("/machines/vm-1/sales?from=2027-02-01&to=2027-01-01")
    assert answer.status_code == 400 and "ends before it starts" in answer.text
    assert client.get("/machines/vm-1/sales?from=yesterday").status_code == 400


def test_a_vend_unknown_is_marked_vended_and_leaves_the_queue(
    client: TestClient, broker: Broker, token: str
) -> None:
    broker.flag_for_operator("vm-1-x-1", OperatorKind.VEND_UNKNOWN, amount=5000, drink="cola")
    page = client.get("/machines/vm-1/queue")
    assert 'data-testid="mark_vended-vm-1-x-1"' in page.text
    answer = post(client, "/machines/vm-1/queue/vm-1-x-1", token, action="mark_vended")
    assert answer.status_code == 303, answer.text
    assert broker.operator_queue() == {}
    assert audit(broker)[0]["action"] == "mark_vended"
    assert "Nothing needs a person" in client.get("/machines/vm-1/queue").text


def test_marking_a_refund_owed_refunded_needs_a_note(
    client: TestClient, broker: Broker, token: str
) -> None:
    broker.flag_for_operator("vm-1-x-2", OperatorKind.REFUND_OWED, amount=5000, drink="cola")
    before = machine_state(broker)
    answer = post(client, "/machines/vm-1/queue/vm-1-x-2", token, action="mark_refunded")
    assert answer.status_code == 400 and "needs a note" in answer.text
    assert machine_state(broker) == before
    answer = post(
        client, "/machines/vm-1/queue/vm-1-x-2", token, action="mark_refunded", note="cash back"
    )
    assert answer.status_code == 303
    assert broker.operator_queue() == {}
    entry = audit(broker)[0]
    assert (entry["action"], entry["after"]["note"]) == ("mark_refunded", "cash back")


def test_a_wrong_resolution_for_the_kind_is_refused(
    client: TestClient, broker: Broker, token: str
) -> None:
    broker.flag_for_operator("vm-1-x-3", OperatorKind.VEND_UNKNOWN, amount=5000, drink="cola")
    before = machine_state(broker)
    answer = post(client, "/machines/vm-1/queue/vm-1-x-3", token, action="mark_refunded", note="x")
    assert answer.status_code == 400
    assert machine_state(broker) == before
    assert json.loads(broker.redis.hget(broker.operator_key, "vm-1-x-3"))["kind"] == "vend_unknown"


# --- settings -------------------------------------------------------------------------------------


def test_the_console_settings_default_to_localhost_and_refuse_bad_values() -> None:
    settings = Settings.from_env({})
    assert settings.console_url == "http://127.0.0.1:3336/"
    assert settings.console_session_s == 8 * 3600
    custom = Settings.from_env({"OPERATOR_PORT": "8080", "CONSOLE_SESSION_S": "600"})
    assert (custom.operator_port, custom.console_session_s) == (8080, 600)
    for env, var in (
        ({"OPERATOR_PORT": "70000"}, "OPERATOR_PORT"),
        ({"OPERATOR_PORT": "x"}, "OPERATOR_PORT"),
        ({"CONSOLE_SESSION_S": "5"}, "CONSOLE_SESSION_S"),
        ({"CONSOLE_SECRET": "short"}, "CONSOLE_SECRET"),
        ({"OPERATOR_HOST": " "}, "OPERATOR_HOST"),
    ):
        with pytest.raises(ConfigError, match=var):
            Settings.from_env(env)
    assert "secret" not in repr(Settings(console_secret="s" * 40))


# --- alerts on the overview -------------------------------------------------------------------


def raise_low_stock_alert(broker: Broker) -> str:
    alert = Alert(AlertKind.LOW_STOCK, "cola", "2 left", time.time())
    AlertStore(broker).apply(Changes(raised=(alert,)))
    return alert.id


def alert_state(broker: Broker) -> tuple:
    store = AlertStore(broker)
    return store.open_alerts(), store.recent(), audit(broker)


def test_the_operator_acknowledges_an_open_alert_from_the_overview(
    client: TestClient, broker: Broker, token: str
) -> None:
    alert_id = raise_low_stock_alert(broker)
    page = client.get("/machines/vm-1/").text
    action = "/machines/vm-1/alerts/low_stock%3Acola/acknowledge"
    assert f'action="{action}"' in page and 'data-testid="ack-low_stock:cola"' in page
    assert f'data-csrf="{token}"' in page  # for the buttons the live overview draws

    answer = post(client, action, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/machines/vm-1/"
    assert "acknowledged" in client.get("/machines/vm-1/").text
    assert AlertStore(broker).open_alerts() == []
    assert client.get("/machines/vm-1/overview.json").json()["alerts"] == []
    [entry] = audit(broker)
    assert (entry["actor"], entry["action"]) == (f"console:{OPERATOR}", "acknowledge_alert")
    assert (entry["target"], entry["after"]) == (alert_id, {"open": False})


def test_acknowledging_an_alert_no_longer_open_is_refused_and_changes_nothing(
    client: TestClient, broker: Broker, token: str
) -> None:
    alert_id = raise_low_stock_alert(broker)
    assert post(client, f"/machines/vm-1/alerts/{alert_id}/acknowledge", token).status_code == 303
    before = alert_state(broker), machine_state(broker)
    for gone in (alert_id, "sold_out:tea"):
        answer = post(client, f"/machines/vm-1/alerts/{gone}/acknowledge", token)
        assert answer.status_code == 400
        assert 'data-testid="error"' in answer.text and "no open alert" in answer.text
        assert gone in answer.text
    assert (alert_state(broker), machine_state(broker)) == before


def test_acknowledging_an_alert_without_the_csrf_token_is_refused(
    client: TestClient, broker: Broker, token: str
) -> None:
    alert_id = raise_low_stock_alert(broker)
    before = alert_state(broker)
    answer = post(client, f"/machines/vm-1/alerts/{alert_id}/acknowledge", "forged-token")
    assert answer.status_code == 403
    assert alert_state(broker) == before


# --- the live overview and the session ----------------------------------------------------------


@pytest.fixture
def served(client: TestClient) -> Iterator[str]:
    """The console of `client` served over real HTTP (uvicorn, in-process, on a free port):
    its base URL. The socket listens before the server starts, so no wait is needed."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn.Config(
        client.app, log_config=None, access_log=False, ws="none", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def live_messages(
    base: str, cookies: dict, broker: Broker, end_session: Callable[[], None]
) -> list[dict]:
    """Open the live overview with the session `cookies`, read its first message, then
    `end_session()` and wake the stream with a machine event: every message sent, up to the
    stream's end (a read that times out fails the test)."""
    import requests

    messages = []
    with requests.get(
        base + "/machines/vm-1/live", cookies=cookies, stream=True, timeout=10
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                messages.append(json.loads(line[len("data: ") :]))
                if len(messages) == 1:
                    end_session()
                    broker.show_menu()
                elif len(messages) > 2:
                    break  # a stream that goes on: the assertion of the caller fails
    return messages


def test_the_live_overview_ends_once_the_session_expires(
    client: TestClient, served: str, broker: Broker, clock: Clock, settings: Settings
) -> None:
    log_in(client)

    def expire() -> None:
        clock.now += settings.console_session_s + 1

    messages = live_messages(served, dict(client.cookies), broker, expire)
    assert [m["state"] for m in messages] == [str(State.IDLE)]


def test_the_live_overview_ends_once_the_account_is_removed(
    client: TestClient, served: str, broker: Broker
) -> None:
    log_in(client)

    def remove() -> None:
        Accounts(broker.redis).remove(OPERATOR)

    messages = live_messages(served, dict(client.cookies), broker, remove)
    assert [m["state"] for m in messages] == [str(State.IDLE)]


def test_the_live_overview_goes_on_while_the_session_lasts(
    client: TestClient, served: str, broker: Broker, clock: Clock, settings: Settings
) -> None:
    """The control of the two above: with the session alive, the event is sent (the stream
    is then ended by expiring the session at the second message)."""
    log_in(client)
    import requests

    states = []
    with requests.get(
        served + "/machines/vm-1/live", cookies=dict(client.cookies), stream=True, timeout=10
    ) as answer:
        for line in answer.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                states.append(json.loads(line[len("data: ") :])["state"])
                if len(states) == 1:
                    clock.now += settings.console_session_s - 1  # still on
                    broker.show_menu()
                elif len(states) == 2:
                    clock.now += 2
                    broker.show_menu()  # SHOW_MENU again: an event that wakes the stream
                else:
                    break  # a stream that goes on: the assertion below fails
    assert states == [str(State.IDLE), str(State.SHOW_MENU)]


# --- dispenser slots and the dispenser -------------------------------------------------------


def test_the_stock_page_shows_each_slot_and_re_enables_a_disabled_one(
    client: TestClient, broker: Broker, token: str
) -> None:
    """A disabled slot is listed with its failures and an Enable button; the POST (with its
    CSRF token) puts it back in use, audited; without the token nothing changes."""
    broker.redis.hset(
        broker.slots_key,
        "1",
        json.dumps({"disabled": True, "fails_in_a_row": 3, "last_reason": "JAM"}),
    )
    page = client.get("/machines/vm-1/stock").text
    assert 'data-testid="slot-state-1">Disabled' in page
    assert 'data-testid="slot-enable-1"' in page and 'data-testid="slot-enable-2"' not in page
    before = machine_state(broker)
    assert post(client, "/machines/vm-1/slots/1/enable", None).status_code == 403
    assert machine_state(broker) == before and broker.redis.hexists(broker.slots_key, "1")
    answer = post(client, "/machines/vm-1/slots/1/enable", token)
    assert answer.status_code == 303
    assert not broker.redis.hexists(broker.slots_key, "1")
    entry = audit(broker)[0]
    assert (entry["action"], entry["target"], entry["actor"]) == (
        "enable_slot",
        "1",
        f"console:{OPERATOR}",
    )
    assert 'data-testid="slot-state-1">OK' in client.get("/machines/vm-1/stock").text
    refused = post(client, "/machines/vm-1/slots/1/enable", token)
    assert refused.status_code == 400 and "in use already" in refused.text


def test_the_menu_page_edits_a_drinks_slots_in_order(
    client: TestClient, broker: Broker, token: str
) -> None:
    answer = post(client, "/machines/vm-1/menu", token, id="cola", slots="1, 9")
    assert answer.status_code == 303
    assert next(d for d in broker.menu() if d.id == "cola").slots == (1, 9)
    assert 'value="1, 9"' in client.get("/machines/vm-1/menu").text
    taken = post(client, "/machines/vm-1/menu", token, id="tea", slots="9")
    assert taken.status_code == 400 and "slot 9 holds cola" in taken.text


def test_the_overview_shows_the_dispensers_firmware(
    client: TestClient, broker: Broker, token: str
) -> None:
    from services.gateway_service import record_dispenser

    assert "not reported" in client.get("/machines/vm-1/").text
    record_dispenser(broker, "serial", "drinkboard 2.1")
    values = client.get("/machines/vm-1/overview.json").json()["dispenser"]
    assert (values["driver"], values["firmware"]) == ("serial", "drinkboard 2.1")
    assert 'data-testid="dispenser-firmware">drinkboard 2.1' in client.get("/machines/vm-1/").text
