"""Pictures of every kiosk screen, taken from the real machine in headless Chromium.

Starts `python main.py up` through bench.harness (a second machine, whose every vend fails,
gives the refund screen), drives the kiosk page with Playwright on Debian's Chromium and
writes one PNG per screen: `<name>.png` in portrait (1080x1920) and `<name>-landscape.png`
(1920x1080).

    .venv/bin/python docs/screenshots.py [--out docs/screens]

Screens: attract, menu (Lemon sold out), menu-en, creating-payment, qr, payment-success,
dispensing, enjoy, payment-failed-cancelled, dispense-failed-refunded; and the operator's
console (1280x900) after those sales: console-login, console-overview, console-menu,
console-stock, console-sales, console-queue, console-maintenance, console-audit.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Launched
from constants.orders import OperatorKind
from cores.accounts import Accounts

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("screenshots")

PORTRAIT = {"width": 1080, "height": 1920}
LANDSCAPE = {"width": 1920, "height": 1080}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Long enough that nothing moves on by itself while a picture is taken.
CALM = {
    "PAYMENT_DEADLINE_S": "120",
    "RESULT_SCREEN_S": "120",
    "MENU_IDLE_S": "120",
    "DISPENSE_S": "10",
}
#: The dispensing picture is taken with the cup well on its way to full.
CUP_FILLING = (
    "() => { var a = document.querySelector('.pour-liquid').getAnimations()[0];"
    " return a !== undefined && a.currentTime % 3000 > 1800; }"
)
WAIT_MS = 20_000


def chromium() -> str:
    for path in ("/usr/lib/chromium/chromium", "/usr/bin/chromium"):
        if Path(path).exists():
            return path
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("Chromium is not installed (apt-get install -y chromium)")
    return found


class Camera:
    """One kiosk page; `shoot(name)` saves it in both orientations."""

    def __init__(self, page: Page, out: Path) -> None:
        self.page = page
        self.out = out

    def screen(self, name: str) -> None:
        expect(self.page.locator("body")).to_have_attribute("data-screen", name, timeout=WAIT_MS)

    def shoot(self, name: str, moment: str | None = None) -> None:
        """Both orientations; `moment`: a JS predicate to wait for before each picture."""
        for size, suffix in ((PORTRAIT, ""), (LANDSCAPE, "-landscape")):
            self.page.set_viewport_size(size)
            self.settle()
            if moment:
                self.page.wait_for_function(moment, polling=50)
            path = self.out / f"{name}{suffix}.png"
            self.page.screenshot(path=str(path))
            log.info("saved %s", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        self.page.set_viewport_size(PORTRAIT)

    def settle(self) -> None:
        """Images loaded, fonts ready, entrance animations over (the looping ones are caught
        wherever they are), and the QR redrawn for the new size: kiosk.js redraws it 100 ms
        after a resize."""
        self.page.wait_for_timeout(300)
        self.page.wait_for_function(
            "() => document.fonts.status === 'loaded'"
            " && Array.from(document.images).every((i) => i.complete)"
            " && document.getAnimations().every((a) => a.playState !== 'running'"
            " || a.effect.getComputedTiming().iterations === Infinity)"
        )

    def tap(self, testid: str) -> None:
        self.page.get_by_test_id(testid).click()


@contextmanager
def machine(folder: Path, **env: str) -> Iterator[Launched]:
    folder.mkdir(parents=True, exist_ok=True)
    up = Launched(folder, **{**CALM, **env})
    try:
        yield up
    finally:
        up.stop()


@contextmanager
def paused(up: Launched, name: str) -> Iterator[None]:
    """Hold a worker still (SIGSTOP) so the screen before its step stays on show."""
    pid = up.pid(name)
    if pid is None:
        raise RuntimeError(f"no {name} process")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def purchase_screens(cam: Camera, up: Launched) -> None:
    page = cam.page
    cam.screen("IDLE")
    cam.shoot("attract")

    assert up.main("stock", "lemon", "0").returncode == 0
    cam.tap("start")
    cam.screen("SHOW_MENU")
    cam.shoot("menu")
    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    cam.shoot("menu-en")
    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "id")

    with paused(up, "order"):  # no charge yet: "preparing your payment" stays
        cam.tap("drink-cola")
        cam.screen("MENU_CLICKED")
        cam.shoot("creating-payment")
    cam.screen("ORDER_CREATED")
    expect(page.get_by_test_id("qr-canvas")).to_be_visible()
    cam.shoot("qr")

    order_id = page.get_by_test_id("order-id").inner_text()
    with paused(up, "dispense"):
        assert up.pay(order_id) == 200
        cam.screen("PAYMENT_SUCCESS")
        cam.shoot("payment-success")
    cam.screen("DISPENSING")
    cam.shoot("dispensing", moment=CUP_FILLING)
    cam.screen("DISPENSED")
    cam.shoot("enjoy")
    cam.tap("done")
    cam.screen("IDLE")

    cam.tap("start")
    cam.screen("SHOW_MENU")
    cam.tap("drink-tea")
    cam.screen("ORDER_CREATED")
    cam.tap("cancel")
    cam.screen("PAYMENT_FAILED")
    cam.shoot("payment-failed-cancelled")
    cam.tap("done")
    cam.screen("IDLE")


def refund_screen(cam: Camera, up: Launched) -> None:
    cam.screen("IDLE")
    cam.tap("start")
    cam.screen("SHOW_MENU")
    cam.tap("drink-cola")
    cam.screen("ORDER_CREATED")
    assert up.pay(cam.page.get_by_test_id("order-id").inner_text()) == 200
    cam.screen("DISPENSE_FAILED")
    expect(cam.page.get_by_test_id("reason")).to_have_attribute(
        "data-refund", "refunded", timeout=WAIT_MS
    )
    cam.shoot("dispense-failed-refunded")


CONSOLE_VIEWPORT = {"width": 1280, "height": 900}


def console_screens(browser: Browser, up: Launched, out: Path) -> None:
    """The console's pages, logged in as an operator made for the pictures, after a few
    actions (so that the audit has entries) and with one vend outcome to look at."""
    Accounts(up.redis).add("owner", "pictures-only-password")
    up.broker.flag_for_operator(
        "vm-1-20270115093000-000042-a1b2", OperatorKind.VEND_UNKNOWN, amount=6000, drink="tea"
    )
    context = browser.new_context(viewport=CONSOLE_VIEWPORT)
    page = context.new_page()

    def shoot(name: str) -> None:
        page.wait_for_load_state("networkidle")
        path = out / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        log.info("saved %s", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)

    def go(slug: str, testid: str) -> None:
        page.goto(f"{up.console}/machines/vm-1/{slug}")
        expect(page.get_by_test_id(testid).first).to_be_visible(timeout=WAIT_MS)

    page.goto(up.console + "/")
    page.get_by_test_id("login-name").fill("owner")
    shoot("login")
    page.get_by_test_id("login-password").fill("pictures-only-password")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("machines")).to_be_visible(timeout=WAIT_MS)
    go("stock", "stock")
    page.get_by_test_id("refill-lemon").click()
    expect(page.get_by_test_id("notice")).to_be_visible(timeout=WAIT_MS)
    go("menu", "menu")
    page.get_by_test_id("price-water").fill("5000")
    page.get_by_test_id("save-water").click()
    expect(page.get_by_test_id("notice")).to_be_visible(timeout=WAIT_MS)
    go("", "state")
    expect(page.get_by_test_id("live")).to_have_text("connected", timeout=WAIT_MS)
    shoot("overview")
    go("menu", "menu")
    shoot("menu")
    go("stock", "stock")
    page.get_by_test_id("units-orange").fill("2")
    page.get_by_test_id("stock-save-orange").click()
    expect(page.get_by_test_id("notice")).to_be_visible(timeout=WAIT_MS)
    shoot("stock")
    go("sales", "totals")
    page.wait_for_function("() => window.consoleCharts && window.consoleCharts.by_day")
    shoot("sales")
    go("queue", "queue-vm-1-20270115093000-000042-a1b2")
    shoot("queue")
    go("maintenance", "state")
    shoot("maintenance")
    go("audit", "audit")
    shoot("audit")
    context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screens")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            for folder, env, script in (
                ("sale", {}, purchase_screens),
                ("refund", {"DISPENSE_FAILURE_RATE": "1"}, refund_screen),
            ):
                with machine(Path(tmp) / folder, **env) as up:
                    context = browser.new_context(viewport=PORTRAIT)
                    page = context.new_page()
                    page.goto(f"http://127.0.0.1:{up.ws_port}/")
                    script(Camera(page, args.out), up)
                    context.close()
                    if folder == "sale":
                        console_screens(browser, up, args.out)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
