"""The kiosk page (web/) in a real browser: Debian's Chromium driven by Playwright, against the
real machine (`python main.py up` through bench.harness).

Most tests share one machine and start from, and leave it at, the attract screen (IDLE); a
second machine with a short menu timeout and a dispenser that always fails covers the screens
that need those settings. Payments are made through the sandbox's simulator API, as a
customer's e-wallet would. Waits are Playwright's `expect` with a timeout, the machine's events
stream, or `eventually` pausing in Playwright (which delivers the page's events meanwhile).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import segno
from playwright.sync_api import Locator, Page, expect

from bench.harness import Launched
from constants.orders import OrderField
from constants.states import RESULT_STATES, Sale, State
from cores.broker import CommandRefused
from tests.machine_helpers import ROOT, eventually, launch, need, wait_for

#: Chromium against `python main.py up`: processes of the machine, a real redis-server.
pytestmark = [pytest.mark.browser, pytest.mark.integration]

MENU = json.loads((ROOT / "menu.json").read_text(encoding="utf-8"))
PORTRAIT = {"width": 1080, "height": 1920}
LANDSCAPE = {"width": 1920, "height": 1080}
#: How long a screen may take to appear (Playwright timeouts are in ms).
WAIT_MS = 15_000
#: Short, but long enough for a websocket-server restart in the middle of a payment.
MACHINE_ENV = {
    "PAYMENT_DEADLINE_S": "10",
    "RESULT_SCREEN_S": "1",
    "DISPENSE_S": "0.5",
    "MENU_IDLE_S": "300",
}
#: The two screens the kiosk is designed for, then common 4:3, 5:4, 16:10 and 10:16 ones.
SCREEN_SIZES = [
    PORTRAIT,
    LANDSCAPE,
    {"width": 1024, "height": 768},
    {"width": 1280, "height": 1024},
    {"width": 1280, "height": 800},
    {"width": 800, "height": 1280},
]
#: The smallest comfortable touch target on a kiosk (px).
MIN_TARGET_PX = 64
#: The QR's side, at least, as a share of the screen's short side (phones scan it from afar).
MIN_QR_SHARE = 0.4
#: WCAG 2.x level AA for normal text.
MIN_CONTRAST = 4.5

# Every screen the page shows, in order, with its heading: a screen that lasts a few
# milliseconds (PAYMENT_SUCCESS) is still seen. The page sets body[data-screen] after it has
# drawn the screen, so the heading read here is the new one.
SCREEN_LOG_JS = """
window.__screens = [];
new MutationObserver(function () {
  var body = document.body;
  if (!body || !body.dataset.screen) return;
  var log = window.__screens;
  if (log.length && log[log.length - 1].screen === body.dataset.screen) return;
  var title = document.querySelector("[data-testid=screen] .title");
  log.push({screen: body.dataset.screen, title: title ? title.textContent : ""});
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-screen"]});
"""

# Visible interactive elements: what a finger can hit.
TARGETS_JS = """
() => Array.from(document.querySelectorAll(
  "button, a[href], input, select, textarea, [role=button], [tabindex]:not([tabindex='-1'])"
)).filter((e) => e.getClientRects().length && getComputedStyle(e).visibility !== "hidden")
  .map((e) => {
    var r = e.getBoundingClientRect();
    return {name: e.dataset.testid || e.id || e.className, left: r.left, top: r.top,
            right: r.right, bottom: r.bottom, width: r.width, height: r.height};
  })
"""

# Texts of a drink card drawn outside the card (too long for it).
SPILLS_JS = """
() => Array.from(document.querySelectorAll(".drink")).flatMap((card) => {
  var box = card.getBoundingClientRect();
  return Array.from(card.querySelectorAll(".drink-name, .drink-price, .badge"))
    .map((e) => [e, e.getBoundingClientRect()])
    .filter(([e, r]) => r.left < box.left - 1 || r.right > box.right + 1
                        || r.top < box.top - 1 || r.bottom > box.bottom + 1)
    .map(([e, r]) => card.dataset.testid + " " + e.className);
})
"""

# WCAG 2.x contrast of an element's text against the first opaque background behind it.
CONTRAST_JS = """
(selectors) => {
  function rgba(text) {
    var n = (text.match(/[\\d.]+/g) || []).map(Number);
    return n.length === 3 ? n.concat([1]) : n;
  }
  function luminance(c) {
    var f = function (v) {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  }
  function background(el) {
    for (var e = el; e; e = e.parentElement) {
      var c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) return c;
    }
    return [255, 255, 255, 1];
  }
  return selectors.map(function (sel) {
    var el = document.querySelector(sel);
    if (!el) return {sel: sel, ratio: null};
    var a = luminance(rgba(getComputedStyle(el).color));
    var b = luminance(background(el));
    return {sel: sel, ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)};
  });
}
"""

# The QR modules as drawn on the canvas (quiet zone 4, an integer number of pixels each).
CANVAS_MODULES_JS = """
([canvas, size]) => {
  var w = canvas.width;
  var scale = w / (size + 8);
  if (canvas.height !== w || scale !== Math.floor(scale)) return {error: "canvas " + w + " px"};
  var data = canvas.getContext("2d").getImageData(0, 0, w, w).data;
  var dark = function (x, y) { return data[(y * w + x) * 4] < 128 ? "1" : "0"; };
  var rows = [];
  for (var r = -4; r < size + 4; r++) {
    var row = "";
    for (var c = -4; c < size + 4; c++) {
      row += dark((c + 4) * scale + (scale >> 1), (r + 4) * scale + (scale >> 1));
    }
    rows.push(row);
  }
  return {rows: rows};
}
"""


def rupiah(amount: int) -> str:
    return "Rp " + f"{amount:,}".replace(",", ".")


# --- machines ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    """Every page opens on a portrait kiosk screen, 1080x1920."""
    return {**browser_context_args, "viewport": PORTRAIT}


@pytest.fixture(scope="module")
def machine(
    tmp_path_factory: pytest.TempPathFactory, browser_type_launch_args: dict
) -> Iterator[Launched]:
    """The shared machine. It asks for Chromium first, so that a laptop without it skips
    before starting anything."""
    up = launch(tmp_path_factory.mktemp("kiosk"), **MACHINE_ENV)
    yield up
    assert up.stop() == 0, up.log()


@pytest.fixture
def up(machine: Launched) -> Iterator[Launched]:
    """The shared machine, at IDLE with full stock and no sandbox fault; left the same way."""
    back_to_idle(machine)
    yield machine
    back_to_idle(machine)


@pytest.fixture(scope="module")
def strict_machine(
    tmp_path_factory: pytest.TempPathFactory, browser_type_launch_args: dict
) -> Iterator[Launched]:
    """A machine whose menu gives up after 2 s of inactivity and whose every vend fails."""
    up = launch(
        tmp_path_factory.mktemp("strict"),
        **{**MACHINE_ENV, "MENU_IDLE_S": "2", "DISPENSE_FAILURE_RATE": "1"},
    )
    yield up
    assert up.stop() == 0, up.log()


def back_to_idle(up: Launched, timeout_s: float = 30.0) -> None:
    """Clear the sandbox's faults and bring the machine back to IDLE the way a kiosk would
    (cancel, or dismiss a result screen), then restock. After each nudge, wait on the events
    stream for the machine to move (a worker may have to finish first)."""
    up.faults(LATENCY_MS=0, CHANNEL_DISABLED=0)
    deadline = time.monotonic() + timeout_s
    while (snap := up.broker.snapshot()).state != State.IDLE:
        state = snap.state
        try:
            if state in RESULT_STATES:
                up.broker.show_menu()
            elif state == State.SHOW_MENU:
                up.broker.request_cancel()
            elif state in (State.MENU_CLICKED, State.ORDER_CREATED):
                order = up.broker.current_order()
                if order is not None and not order.flag(OrderField.CANCEL_REQUESTED):
                    up.broker.request_cancel()
        except CommandRefused:
            pass  # it moved on meanwhile
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"machine stuck in {state}: {up.log()}")
        wait_for(up.broker, lambda s, v=snap.version: s.version != v, left, f"a move from {state}")
    for drink in MENU:
        up.broker.set_stock(drink["id"], 10)


# --- the page ----------------------------------------------------------------------------------


def open_kiosk(page: Page, up: Launched) -> Page:
    page.add_init_script(SCREEN_LOG_JS)
    page.goto(f"http://127.0.0.1:{up.ws_port}/")
    expect_screen(page, "IDLE")
    return page


def expect_screen(page: Page, screen: str, timeout_ms: int = WAIT_MS) -> None:
    expect(page.locator("body")).to_have_attribute("data-screen", screen, timeout=timeout_ms)


def screens_seen(page: Page) -> list[dict[str, str]]:
    return page.evaluate("window.__screens")


def record_sent(page: Page) -> list[dict]:
    """Every frame the page sends from now on, over any of its websockets."""
    sent: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda data: sent.append(json.loads(data))))
    return sent


def to_menu(page: Page) -> None:
    """From the attract screen to the menu, with a tap on start."""
    page.get_by_test_id("start").click()
    expect_screen(page, "SHOW_MENU")


def to_qr(page: Page, drink: str = "cola") -> str:
    """From the attract screen to the QR of `drink`; returns the order id on screen."""
    to_menu(page)
    page.get_by_test_id(f"drink-{drink}").click()
    expect_screen(page, "ORDER_CREATED")
    expect(page.get_by_test_id("qr-canvas")).to_be_visible()
    return page.get_by_test_id("order-id").inner_text()


def qr_modules(canvas: Locator, size: int) -> list[str]:
    """The canvas read back as rows of modules, quiet zone included."""
    drawn = canvas.evaluate(f"(c) => ({CANVAS_MODULES_JS})([c, {size}])")
    assert "error" not in drawn, drawn["error"]
    return drawn["rows"]


def segno_modules(text: str, mask: int | None = None) -> list[str]:
    """The symbol kiosk.js must draw: byte mode, level M, no error boost, the smallest version
    (tests/test_web_static), with a quiet zone of 4."""
    code = segno.make(text, error="m", mode="byte", boost_error=False, micro=False, mask=mask)
    return ["".join(str(bit) for bit in row) for row in code.matrix_iter(border=4)]


def sales_of(up: Launched, order_id: str) -> list[str]:
    return [s["kind"] for s in up.broker.sales() if s["order_id"] == order_id]


# --- the purchase ------------------------------------------------------------------------------


def test_a_customer_buys_a_cola_by_tapping_and_paying_the_qr(up: Launched, page: Page) -> None:
    open_kiosk(page, up)
    order_id = to_qr(page)
    assert order_id == up.broker.snapshot().order_id
    expect(page.get_by_test_id("amount")).to_have_text("Rp 7.000")
    assert up.pay(order_id) == 200
    expect_screen(page, "DISPENSED")
    expect(page.get_by_role("heading", level=1)).to_have_text("Selamat menikmati!")
    expect_screen(page, "IDLE")  # after RESULT_SCREEN_S, without a tap

    seen = screens_seen(page)
    screens = [s["screen"] for s in seen]
    assert screens[screens.index("ORDER_CREATED") :] == [
        "ORDER_CREATED",
        "PAYMENT_SUCCESS",
        "DISPENSING",
        "DISPENSED",
        "IDLE",
    ]
    titles = {s["screen"]: s["title"] for s in seen}
    assert titles["PAYMENT_SUCCESS"] == "Pembayaran berhasil!"
    assert titles["DISPENSING"] == "Minuman Anda sedang disiapkan…"
    assert sales_of(up, order_id) == [Sale.ORDERED, Sale.CHARGED, Sale.PAID, Sale.DISPENSED]


def test_done_on_the_enjoy_screen_returns_to_attract_at_once(up: Launched, page: Page) -> None:
    sent = record_sent(page)
    open_kiosk(page, up)
    up.pay(to_qr(page, "water"))
    expect_screen(page, "DISPENSED")
    page.get_by_test_id("done").click()
    expect_screen(page, "IDLE")
    assert [f["event"] for f in sent] == ["SHOW_MENU", "ORDER", "SHOW_MENU"]


def test_cancel_on_the_qr_screen_cancels_the_payment_at_midtrans(up: Launched, page: Page) -> None:
    open_kiosk(page, up)
    order_id = to_qr(page, "tea")
    page.get_by_test_id("cancel").click()
    expect_screen(page, "PAYMENT_FAILED")
    reason = page.get_by_test_id("reason")
    expect(reason).to_have_attribute("data-reason", "cancelled")
    expect(reason).to_contain_text("Pesanan dibatalkan")
    expect(page.get_by_test_id("order-id")).to_have_text(order_id)
    assert [t["transaction_status"] for t in up.ledger_of(order_id)] == ["cancel"]
    assert Sale.PAID not in sales_of(up, order_id)
    expect_screen(page, "IDLE")


def test_a_sold_out_drink_is_greyed_and_tapping_it_sends_nothing(up: Launched, page: Page) -> None:
    up.broker.set_stock("lemon", 0)
    sent = record_sent(page)
    open_kiosk(page, up)
    to_menu(page)
    lemon = page.get_by_test_id("drink-lemon")
    expect(lemon).to_be_disabled()
    expect(lemon).to_have_attribute("data-sold-out", "true")
    expect(lemon).to_contain_text("Habis")
    expect(page.get_by_test_id("drink-cola")).to_be_enabled()

    lemon.click(force=True)  # a real tap on the disabled button
    lemon.evaluate("(button) => button.click()")
    assert up.broker.snapshot().state == State.SHOW_MENU
    # Frames go out in order: once the Back tap's CANCEL has been answered, an ORDER sent by
    # the taps above would have been seen first.
    page.get_by_test_id("cancel").click()
    expect_screen(page, "IDLE")
    assert [f["event"] for f in sent] == ["SHOW_MENU", "CANCEL"]
    expect(page.get_by_test_id("toast")).to_be_hidden()
    assert not [s for s in up.broker.sales() if s.get("drink_id") == "lemon"]


def test_a_gateway_refusal_shows_its_reason(up: Launched, page: Page) -> None:
    up.faults(CHANNEL_DISABLED=1)
    open_kiosk(page, up)
    to_menu(page)
    page.get_by_test_id("drink-coffee").click()
    expect_screen(page, "PAYMENT_FAILED")
    reason = page.get_by_test_id("reason")
    expect(reason).to_have_attribute("data-reason", "gateway_refused")
    expect(reason).to_contain_text("Pembayaran tidak dapat dibuat")
    expect(reason).to_contain_text("Tidak ada biaya yang dikenakan")
    expect_screen(page, "IDLE")


def test_a_second_tap_while_the_order_is_created_sends_no_second_order(
    up: Launched, page: Page
) -> None:
    up.faults(LATENCY_MS=1500)  # the charge takes a while: MENU_CLICKED stays on screen
    sent = record_sent(page)
    open_kiosk(page, up)
    to_menu(page)
    ordered = sum(s["kind"] == Sale.ORDERED for s in up.broker.sales())

    cola = page.get_by_test_id("drink-cola")
    box = cola.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cola.dblclick()
    page.mouse.click(x, y)  # a third tap: on the menu still, or on the "preparing" screen
    expect_screen(page, "MENU_CLICKED")
    page.mouse.click(x, y)
    expect_screen(page, "ORDER_CREATED")
    assert [f["event"] for f in sent].count("ORDER") == 1
    assert sum(s["kind"] == Sale.ORDERED for s in up.broker.sales()) == ordered + 1
    order_id = page.get_by_test_id("order-id").inner_text()
    assert len(up.ledger_of(order_id)) == 1


# --- the QR ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("segno_standard_padding")
def test_the_qr_is_drawn_in_the_page_and_scans_to_the_payment_string(
    up: Launched, page: Page, tmp_path: Path
) -> None:
    requests: list[tuple[str, str]] = []
    page.on("request", lambda r: requests.append((r.url, r.resource_type)))
    page.on("websocket", lambda ws: requests.append((ws.url, "websocket")))
    open_kiosk(page, up)
    to_menu(page)
    page.get_by_test_id("drink-orange").click()
    expect_screen(page, "ORDER_CREATED")
    canvas = page.get_by_test_id("qr-canvas")
    expect(canvas).to_be_visible()
    page.wait_for_function("() => Array.from(document.images).every((i) => i.complete)")

    # From the first byte of the page to the QR on screen, nothing leaves the kiosk's own
    # server: the QR is drawn from qr_string, never fetched as an image.
    home = f"127.0.0.1:{up.ws_port}"
    assert {kind for _, kind in requests} >= {"document", "script", "websocket"}, requests
    for url, kind in requests:
        parts = urlsplit(url)
        assert parts.netloc == home, f"{kind} request to {url}"
        assert kind != "websocket" or parts.path == "/ws", url
        assert kind != "image" or parts.path.startswith("/assets/"), url
    assert page.locator("[data-testid=qr-image]").count() == 0

    qr_string = up.broker.snapshot().frame["values"]["qr_string"]
    assert qr_string.startswith("000201")
    # The vendored qrcode-generator picks its mask by its own penalty score, not segno's, so
    # the drawn symbol must be segno's for one of the eight masks.
    expected = [segno_modules(qr_string, mask) for mask in range(8)]
    assert qr_modules(canvas, len(expected[0]) - 8) in expected
    expect(canvas).to_have_attribute("aria-label", "Kode QR pembayaran sebesar Rp 8.000")

    zbarimg = shutil.which("zbarimg")
    need(zbarimg is not None, "zbarimg is not installed (apt-get install -y zbar-tools)")
    shot = tmp_path / "qr.png"
    canvas.screenshot(path=str(shot))
    done = subprocess.run(
        [zbarimg, "--raw", "-q", str(shot)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == qr_string


def test_after_a_websocket_server_restart_the_page_shows_the_same_qr_and_countdown(
    up: Launched, page: Page
) -> None:
    frames: list[tuple[int, str]] = []
    sockets: list[Any] = []

    def on_websocket(ws: Any) -> None:
        index = len(sockets)
        sockets.append(ws)
        ws.on("framereceived", lambda data: frames.append((index, json.loads(data)["event"])))

    page.on("websocket", on_websocket)
    open_kiosk(page, up)
    order_id = to_qr(page)
    countdown = page.get_by_test_id("countdown")
    expires_at = countdown.get_attribute("data-expires-at")

    old = up.kill9("websocket")
    assert old is not None
    up.wait_restarted("websocket", old)
    eventually(
        lambda: any(i > 0 and e == "ORDER_CREATED" for i, e in frames),
        15,
        "the screen's frame on a new connection",
        interval_s=0.05,
        pause=lambda s: page.wait_for_timeout(s * 1000),
    )
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected")
    expect_screen(page, "ORDER_CREATED")
    expect(page.get_by_test_id("order-id")).to_have_text(order_id)
    expect(page.get_by_test_id("qr-canvas")).to_be_visible()
    expect(countdown).to_have_attribute("data-expires-at", expires_at)
    shown = countdown.inner_text()
    expect(countdown).not_to_have_text(shown, timeout=3000)  # still counting down

    page.get_by_test_id("cancel").click()  # and the new connection carries taps
    expect(page.get_by_test_id("reason")).to_have_attribute(
        "data-reason", "cancelled", timeout=WAIT_MS
    )


def test_two_pages_on_one_machine_show_the_same_screens_throughout(
    up: Launched, new_context: Any
) -> None:
    first, second = (open_kiosk(new_context().new_page(), up) for _ in range(2))
    first.get_by_test_id("start").click()
    for page in (first, second):
        expect_screen(page, "SHOW_MENU")
    second.get_by_test_id("drink-cola").click()
    for page in (first, second):
        expect_screen(page, "ORDER_CREATED")
        expect(page.get_by_test_id("qr-canvas")).to_be_visible()
    order_id = first.get_by_test_id("order-id").inner_text()
    expect(second.get_by_test_id("order-id")).to_have_text(order_id)
    expires_at = first.get_by_test_id("countdown").get_attribute("data-expires-at")
    expect(second.get_by_test_id("countdown")).to_have_attribute("data-expires-at", expires_at)
    up.pay(order_id)
    for page in (first, second):
        expect_screen(page, "DISPENSED")
    for page in (first, second):
        expect_screen(page, "IDLE")
    assert screens_seen(first) == screens_seen(second)
    assert [s["screen"] for s in screens_seen(first)][-5:] == [
        "ORDER_CREATED",
        "PAYMENT_SUCCESS",
        "DISPENSING",
        "DISPENSED",
        "IDLE",
    ]


# --- touch screen ------------------------------------------------------------------------------


def check_touch_layout(page: Page, where: str) -> None:
    """On every screen size: big enough targets, all on screen, each drink's name and price
    inside its card, a QR of a good size, and nothing to scroll."""
    for size in SCREEN_SIZES:
        page.set_viewport_size(size)
        label = f"{where} {size['width']}x{size['height']}"
        if page.get_by_test_id("qr-canvas").count():
            # kiosk.js redraws the QR for the new size 100 ms after the resize.
            page.wait_for_function(
                "() => { var c = document.querySelector('canvas.qr-canvas');"
                " var box = c.parentNode; var side = Math.min(box.clientWidth, box.clientHeight);"
                " return c.offsetWidth <= side && c.offsetWidth > side * 0.8; }"
            )
            side = page.get_by_test_id("qr-canvas").evaluate("(c) => c.offsetWidth")
            assert side >= MIN_QR_SHARE * min(size["width"], size["height"]), (label, side)
        targets = page.evaluate(TARGETS_JS)
        assert targets, label
        for t in targets:
            assert t["width"] >= MIN_TARGET_PX and t["height"] >= MIN_TARGET_PX, (label, t)
            assert t["left"] >= 0 and t["top"] >= 0, (label, t)
            assert t["right"] <= size["width"] and t["bottom"] <= size["height"], (label, t)
        assert page.evaluate(SPILLS_JS) == [], label
        scroll = page.evaluate(
            "() => ({h: document.documentElement.scrollHeight, w: document.documentElement.scrollWidth,"
            " bh: document.body.scrollHeight, bw: document.body.scrollWidth})"
        )
        assert max(scroll["h"], scroll["bh"]) <= size["height"], (label, scroll)
        assert max(scroll["w"], scroll["bw"]) <= size["width"], (label, scroll)
    page.set_viewport_size(PORTRAIT)


def test_on_common_screens_targets_are_large_drinks_fit_and_nothing_scrolls(
    up: Launched, page: Page
) -> None:
    up.broker.set_stock("tea", 0)
    open_kiosk(page, up)
    check_touch_layout(page, "attract")
    to_menu(page)
    expect(page.get_by_test_id("drink-tea")).to_be_disabled()
    check_touch_layout(page, "menu")
    page.get_by_test_id("lang-switch").click()  # longer words in English
    expect(page.locator("html")).to_have_attribute("lang", "en")
    check_touch_layout(page, "menu en")
    page.get_by_test_id("drink-coffee").click()
    expect_screen(page, "ORDER_CREATED")
    check_touch_layout(page, "qr en")
    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "id")
    check_touch_layout(page, "qr")
    page.get_by_test_id("cancel").click()
    expect_screen(page, "PAYMENT_FAILED")
    check_touch_layout(page, "payment failed")


def test_the_page_cannot_be_selected_dragged_or_given_a_context_menu(
    up: Launched, page: Page
) -> None:
    sent = record_sent(page)
    open_kiosk(page, up)
    to_menu(page)
    assert page.evaluate("getComputedStyle(document.body).userSelect") == "none"
    prevented = page.evaluate("""() => ["contextmenu", "selectstart", "dragstart"].map((type) => {
        var event = new MouseEvent(type, {bubbles: true, cancelable: true});
        document.querySelector("[data-testid=drink-cola]").dispatchEvent(event);
        return [type, event.defaultPrevented];
    })""")
    assert prevented == [["contextmenu", True], ["selectstart", True], ["dragstart", True]]
    page.get_by_test_id("drink-cola").click(button="right")  # a long press, with a mouse
    page.locator(".screen-menu .subtitle").dblclick()  # selects a word on a normal page
    page.locator(".screen-menu .title").click(click_count=3)  # a whole line
    assert page.evaluate("String(window.getSelection())") == ""
    assert [f["event"] for f in sent] == ["SHOW_MENU"]
    expect_screen(page, "SHOW_MENU")


# --- language, money, time ---------------------------------------------------------------------


def test_the_page_speaks_indonesian_and_the_english_switch_survives_a_reload(
    up: Launched, page: Page
) -> None:
    sent = record_sent(page)
    open_kiosk(page, up)
    html = page.locator("html")
    start = page.get_by_test_id("start")
    switch = page.get_by_test_id("lang-switch")
    expect(html).to_have_attribute("lang", "id")
    expect(start).to_have_attribute("aria-label", "Sentuh untuk mulai")
    expect(switch).to_have_attribute("aria-label", "Ganti bahasa ke English")

    switch.click()
    expect(html).to_have_attribute("lang", "en")
    expect(start).to_have_attribute("aria-label", "Tap to start")
    page.reload()
    expect_screen(page, "IDLE")
    expect(html).to_have_attribute("lang", "en")
    expect(start).to_have_attribute("aria-label", "Tap to start")
    start.click()
    expect_screen(page, "SHOW_MENU")
    expect(page.get_by_role("heading", level=1)).to_have_text("Choose your drink")
    expect(page.get_by_test_id("cancel")).to_have_text("Back")

    switch.click()
    expect(html).to_have_attribute("lang", "id")
    expect(page.get_by_role("heading", level=1)).to_have_text("Pilih minuman")
    expect_screen(page, "SHOW_MENU")
    assert [f["event"] for f in sent] == ["SHOW_MENU"]  # the language is the page's own


def test_prices_are_shown_in_rupiah_with_dot_grouping_in_both_languages(
    up: Launched, page: Page
) -> None:
    open_kiosk(page, up)
    to_menu(page)
    for lang in ("id", "en"):
        for drink in MENU:
            button = page.get_by_test_id(f"drink-{drink['id']}")
            expect(button).to_contain_text(rupiah(drink["price"]))
            expect(button).to_contain_text(drink["name"])
        if lang == "id":
            page.get_by_test_id("lang-switch").click()
    assert rupiah(10000) == "Rp 10.000"
    page.get_by_test_id("drink-lemon").click()
    expect_screen(page, "ORDER_CREATED")
    expect(page.get_by_test_id("amount")).to_have_text("Rp 10.000")


def test_an_untouched_menu_returns_to_the_attract_screen(
    strict_machine: Launched, page: Page
) -> None:
    back_to_idle(strict_machine)
    sent = record_sent(page)
    open_kiosk(page, strict_machine)
    to_menu(page)
    expect_screen(page, "IDLE", timeout_ms=10_000)  # MENU_IDLE_S=2, decided by the backend
    assert [f["event"] for f in sent] == ["SHOW_MENU"]
    expect(page.get_by_test_id("start")).to_be_enabled()


def test_a_failed_vend_shows_that_the_money_was_returned(
    strict_machine: Launched, page: Page
) -> None:
    back_to_idle(strict_machine)
    open_kiosk(page, strict_machine)
    order_id = to_qr(page)
    assert strict_machine.pay(order_id) == 200
    expect_screen(page, "DISPENSE_FAILED")
    reason = page.get_by_test_id("reason")
    expect(reason).to_have_attribute("data-refund", "refunded")
    expect(reason).to_contain_text("Uang Anda sebesar Rp 7.000 sudah dikembalikan")
    expect(page.get_by_test_id("order-id")).to_have_text(order_id)
    assert Sale.REFUNDED in sales_of(strict_machine, order_id)


# --- accessibility -----------------------------------------------------------------------------


def test_images_have_alt_text_and_each_screen_is_announced(up: Launched, page: Page) -> None:
    announcer = page.get_by_test_id("announcer")
    no_alt = page.locator("img:not([alt])")
    open_kiosk(page, up)
    expect(announcer).to_have_attribute("aria-live", "polite")
    expect(announcer).to_have_text("Sentuh untuk mulai")
    assert no_alt.count() == 0
    to_menu(page)
    expect(announcer).to_have_text("Pilih minuman")
    assert no_alt.count() == 0
    for drink in MENU:
        expect(page.get_by_test_id(f"drink-{drink['id']}").locator("img")).to_have_attribute(
            "alt", drink["name"]
        )
    page.get_by_test_id("drink-cola").click()
    expect_screen(page, "ORDER_CREATED")
    expect(announcer).to_have_text("Scan kode QR untuk membayar Rp 7.000")
    assert no_alt.count() == 0
    page.get_by_test_id("cancel").click()
    expect_screen(page, "PAYMENT_FAILED")
    expect(announcer).to_contain_text("Pesanan dibatalkan")
    assert no_alt.count() == 0


def test_key_text_colours_have_enough_contrast_on_screen(up: Launched, page: Page) -> None:
    open_kiosk(page, up)
    to_menu(page)
    menu = page.evaluate(
        CONTRAST_JS,
        [
            ".screen-menu .title",
            ".screen-menu .subtitle",
            "[data-testid=drink-cola] .drink-name",
            "[data-testid=drink-cola] .drink-price",
            "[data-testid=cancel]",
            ".lang-switch span.active",
            ".lang-switch span:not(.active)",
        ],
    )
    page.get_by_test_id("drink-cola").click()
    expect_screen(page, "ORDER_CREATED")
    pay = page.evaluate(
        CONTRAST_JS,
        [
            ".qr-card-title",
            "[data-testid=amount]",
            ".pay-total-label",
            ".pay-hint",
            "[data-testid=countdown]",
            ".order-id-label",
            "[data-testid=cancel]",
        ],
    )
    for pair in menu + pay:
        assert pair["ratio"] is not None, f"{pair['sel']} not on screen"
        assert pair["ratio"] >= MIN_CONTRAST, pair


def test_html_in_a_drink_name_is_shown_as_text_on_the_kiosk(up: Launched, page: Page) -> None:
    """An operator's drink name is text, never markup, in both languages."""
    from cores.operations import Operations

    ops = Operations(up.broker)
    original = ops.drink("cola")
    name = "<img src=x onerror=__owned=1>Cola"  # 33 characters: a valid name
    ops.put_drink({"id": "cola", "name": name, "name_en": name}, "test:kiosk")
    try:
        open_kiosk(page, up)
        to_menu(page)
        expect(page.get_by_test_id("drink-cola")).to_contain_text(name)
        assert page.locator("[data-testid=drink-cola] img[src=x]").count() == 0
        assert page.evaluate("window.__owned") is None
    finally:
        ops.put_drink(
            {"id": "cola", "name": original.name, "name_en": original.name_en}, "test:kiosk"
        )
