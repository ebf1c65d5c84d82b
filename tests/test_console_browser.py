"""The operator's console in a real browser (Debian's Chromium driven by Playwright), against
the real machine (`python main.py up` through bench.harness, which starts the console too).

An operator logs in and uses every page and action; a price and a stock changed on the console
show on the kiosk page; a drink bought on the kiosk (paid through the sandbox's simulator API)
shows in the sales page, its chart data and its CSV. Waits are Playwright's `expect` with a
timeout, or the machine's events stream.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from bench.harness import Launched
from constants.orders import OperatorKind
from constants.states import State
from cores.accounts import Accounts
from cores.alert_store import AlertStore
from cores.alerts import Alert, AlertKind, Changes
from cores.operations import Operations
from tests.console_helpers import OPERATOR, PASSWORD
from tests.machine_helpers import ROOT, launch, wait_state

pytestmark = [pytest.mark.browser, pytest.mark.integration]

MENU = json.loads((ROOT / "menu.json").read_text(encoding="utf-8"))
WAIT_MS = 15_000
MACHINE_ENV = {
    "PAYMENT_DEADLINE_S": "30",
    "RESULT_SCREEN_S": "1",
    "DISPENSE_S": "0.3",
    "MENU_IDLE_S": "300",
}


@pytest.fixture(scope="module")
def machine(
    tmp_path_factory: pytest.TempPathFactory, browser_type_launch_args: dict
) -> Iterator[Launched]:
    """One machine for the module, with one operator. It asks for Chromium first, so that a
    laptop without it skips before starting anything."""
    up = launch(tmp_path_factory.mktemp("console"), **MACHINE_ENV)
    Accounts(up.redis).add(OPERATOR, PASSWORD)
    yield up
    assert up.stop() == 0, up.log()


@pytest.fixture
def up(machine: Launched) -> Iterator[Launched]:
    """The machine at IDLE with menu.json's menu and full stock, nothing in the queue."""
    reset(machine)
    yield machine
    reset(machine)


def reset(up: Launched) -> None:
    state = up.broker.snapshot().state
    if state == State.OUT_OF_SERVICE:
        up.broker.set_out_of_service(False)
    elif state == State.SHOW_MENU:
        up.broker.request_cancel()
    elif state != State.IDLE:
        up.broker.show_menu()  # a result screen: dismiss it
    wait_state(up.broker, State.IDLE)
    up.redis.delete(up.broker.operator_key)
    for key in up.redis.scan_iter("console:{login}:fails:*"):  # a test's failed log-ins
        up.redis.delete(key)
    up.redis.delete(up.broker.menu_key)
    up.redis.delete(up.broker.stock_key)
    up.broker.ensure_ready(MENU)
    for drink in MENU:
        up.broker.set_stock(drink["id"], 10)


def log_in(page: Page, up: Launched) -> None:
    page.goto(up.console + "/")
    expect(page).to_have_url(up.console + "/login")
    page.get_by_test_id("login-name").fill(OPERATOR)
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(up.console + "/machines")
    page.get_by_test_id("machine-vm-1").click()
    expect(page.get_by_test_id("state")).to_be_visible()


def nav(page: Page, name: str) -> None:
    page.get_by_test_id(f"nav-{name}").click()
    expect(page.locator("body")).to_have_attribute("data-page", name)


def notice(page: Page, text: str) -> None:
    expect(page.get_by_test_id("notice")).to_contain_text(text, timeout=WAIT_MS)


def test_an_operator_logs_in_and_uses_every_page_and_action(up: Launched, page: Page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, up)

    # Overview, live: the machine's state follows without a reload.
    expect(page.get_by_test_id("live")).to_have_text("connected", timeout=WAIT_MS)
    expect(page.get_by_test_id("state")).to_have_text("IDLE")
    up.broker.show_menu()
    expect(page.get_by_test_id("state")).to_have_text("SHOW_MENU", timeout=WAIT_MS)
    up.broker.request_cancel()
    expect(page.get_by_test_id("state")).to_have_text("IDLE", timeout=WAIT_MS)
    expect(page.get_by_test_id("heartbeats")).to_contain_text("DISPENSE")

    # Maintenance on and off.
    nav(page, "maintenance")
    page.get_by_test_id("maintenance-on").click()
    notice(page, "out of service")
    assert up.broker.snapshot().state == State.OUT_OF_SERVICE
    page.get_by_test_id("maintenance-off").click()
    notice(page, "back in service")
    assert up.broker.snapshot().state == State.IDLE

    # Menu: add, a refused price, edit, disable, enable, remove.
    nav(page, "menu")
    page.get_by_test_id("new-id").fill("kopi")
    page.get_by_test_id("new-name").fill("Kopi <b>Susu</b>")
    page.get_by_test_id("new-name-en").fill("Milk coffee")
    page.get_by_test_id("new-price").fill("12000")
    page.get_by_test_id("add-submit").click()
    notice(page, "kopi added.")
    expect(page.get_by_test_id("name-kopi")).to_have_value("Kopi <b>Susu</b>")
    page.get_by_test_id("price-kopi").fill("0")
    page.get_by_test_id("save-kopi").click()
    expect(page.get_by_test_id("error")).to_contain_text("price")
    assert next(d for d in up.broker.menu() if d.id == "kopi").price == 12000
    page.get_by_test_id("price-kopi").fill("13000")
    page.get_by_test_id("save-kopi").click()
    notice(page, "kopi saved.")
    expect(page.get_by_test_id("drink-kopi")).to_contain_text("Rp 13.000")
    page.get_by_test_id("toggle-kopi").click()
    notice(page, "hidden from the kiosk")
    page.get_by_test_id("toggle-kopi").click()
    notice(page, "shown on the kiosk")
    page.get_by_test_id("remove-kopi").click()
    notice(page, "kopi removed")
    expect(page.get_by_test_id("drink-kopi")).to_have_count(0)

    # Stock: units, capacity, threshold; then refilled to capacity.
    nav(page, "stock")
    page.get_by_test_id("units-tea").fill("1")
    page.get_by_test_id("capacity-tea").fill("20")
    page.get_by_test_id("low-tea").fill("3")
    page.get_by_test_id("stock-save-tea").click()
    notice(page, "tea: stock saved.")
    expect(page.get_by_test_id("level-tea")).to_have_text("Low")
    page.get_by_test_id("units-tea").fill("21")
    page.get_by_test_id("stock-save-tea").click()
    expect(page.get_by_test_id("error")).to_contain_text("stock")
    page.get_by_test_id("refill-tea").click()
    notice(page, "tea refilled.")
    expect(page.get_by_test_id("units-tea")).to_have_value("20")
    assert up.broker.stock()["tea"] == 20

    # Sales: the range form and the charts.
    nav(page, "sales")
    page.get_by_test_id("show").click()
    expect(page.get_by_test_id("balanced")).to_have_text("balanced")
    page.wait_for_function("() => window.consoleCharts && window.consoleCharts.by_day")

    # Needs a person: a vend of unknown outcome, marked vended.
    up.broker.flag_for_operator(
        "vm-1-manual-1", OperatorKind.VEND_UNKNOWN, amount=5000, drink="cola"
    )
    nav(page, "queue")
    page.get_by_test_id("mark_vended-vm-1-manual-1").click()
    notice(page, "marked vended")
    expect(page.get_by_test_id("queue-empty")).to_be_visible()

    # Audit: every action above, by this operator; the HTML in the name shown as text.
    nav(page, "audit")
    rows = page.get_by_test_id("audit-row")
    expect(rows.first).to_contain_text("mark_vended")
    expect(page.get_by_test_id("audit")).to_contain_text(f"console:{OPERATOR}")
    expect(page.get_by_test_id("audit")).to_contain_text("Kopi <b>Susu</b>")
    for action in ("put_drink", "set_enabled", "remove_drink", "set_stock", "refill"):
        expect(page.get_by_test_id("audit")).to_contain_text(action)

    page.get_by_test_id("logout").click()
    expect(page).to_have_url(up.console + "/login")
    page.goto(up.console + "/machines/vm-1/menu")
    expect(page).to_have_url(up.console + "/login")
    # A wrong password: said so, and the next try must wait (the backoff).
    page.get_by_test_id("login-name").fill(OPERATOR)
    page.get_by_test_id("login-password").fill("not the password")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("error")).to_have_text("Wrong user name or password.")
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("error")).to_contain_text("Too many failed log-ins")


def test_an_alert_raised_while_the_overview_is_open_is_acknowledged_from_its_live_list(
    up: Launched, page: Page
) -> None:
    log_in(page, up)
    expect(page.get_by_test_id("live")).to_have_text("connected", timeout=WAIT_MS)
    expect(page.get_by_test_id("alerts")).not_to_contain_text("sold_out: cola")
    # Sold out for real, so that the watcher's next check keeps the alert rather than clears it.
    up.broker.set_stock("cola", 0)
    alert = Alert(AlertKind.SOLD_OUT, "cola", "", up.broker.clock())
    AlertStore(up.broker).apply(Changes(raised=(alert,)))
    up.broker.show_menu()  # an event: the live overview sends the alerts at once
    button = page.get_by_test_id("ack-sold_out:cola")  # drawn by the live refresh
    expect(button).to_be_visible(timeout=WAIT_MS)
    button.click()
    notice(page, "sold_out:cola acknowledged.")
    entry = Operations(up.broker).audit(1)[0]
    assert (entry["action"], entry["target"]) == ("acknowledge_alert", "sold_out:cola")
    assert entry["actor"] == f"console:{OPERATOR}"


def test_a_price_and_a_stock_changed_on_the_console_show_on_the_kiosk(
    up: Launched, page: Page
) -> None:
    kiosk = page.context.new_page()
    kiosk.goto(f"http://127.0.0.1:{up.ws_port}/")
    expect(kiosk.locator("body")).to_have_attribute("data-screen", "IDLE", timeout=WAIT_MS)
    kiosk.get_by_test_id("start").click()
    expect(kiosk.locator("body")).to_have_attribute("data-screen", "SHOW_MENU", timeout=WAIT_MS)

    log_in(page, up)
    nav(page, "menu")
    page.get_by_test_id("price-cola").fill("8500")
    page.get_by_test_id("save-cola").click()
    notice(page, "cola saved.")
    expect(kiosk.get_by_test_id("drink-cola")).to_contain_text("Rp 8.500", timeout=WAIT_MS)

    nav(page, "stock")
    page.get_by_test_id("units-cola").fill("0")
    page.get_by_test_id("stock-save-cola").click()
    notice(page, "cola: stock saved.")
    expect(kiosk.get_by_test_id("drink-cola")).to_have_attribute(
        "data-sold-out", "true", timeout=WAIT_MS
    )
    kiosk.close()


def test_a_drink_bought_on_the_kiosk_shows_in_the_sales_page_chart_and_csv(
    up: Launched, page: Page
) -> None:
    kiosk = page.context.new_page()
    kiosk.goto(f"http://127.0.0.1:{up.ws_port}/")
    kiosk.get_by_test_id("start").click()
    kiosk.get_by_test_id("drink-tea").click()
    expect(kiosk.locator("body")).to_have_attribute("data-screen", "ORDER_CREATED", timeout=WAIT_MS)
    order_id = kiosk.get_by_test_id("order-id").inner_text()
    assert up.pay(order_id) == 200
    expect(kiosk.locator("body")).to_have_attribute("data-screen", "DISPENSED", timeout=WAIT_MS)
    kiosk.close()
    price = next(d["price"] for d in MENU if d["id"] == "tea")

    log_in(page, up)
    expect(page.get_by_test_id("today-count")).not_to_have_text("0", timeout=WAIT_MS)
    nav(page, "sales")
    expect(page.get_by_test_id("sales-rows")).to_contain_text(order_id)
    expect(page.get_by_test_id("balanced")).to_have_text("balanced")
    page.wait_for_function("() => window.consoleCharts && window.consoleCharts.by_drink")
    chart = page.evaluate(
        "() => { var c = window.consoleCharts.by_drink.data;"
        " return {labels: c.labels, takings: c.datasets[0].data, count: c.datasets[1].data}; }"
    )
    tea = chart["labels"].index("tea")
    assert chart["count"][tea] >= 1 and chart["takings"][tea] >= price

    href = page.get_by_test_id("csv").get_attribute("href")
    assert href is not None
    answer = page.request.get(up.console + href)
    assert answer.ok and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text())))
    mine = [r for r in rows if r["order_id"] == order_id]
    assert len(mine) == 1
    assert (mine[0]["drink"], int(mine[0]["paid"]), mine[0]["status"]) == (
        "tea",
        price,
        "dispensed",
    )
