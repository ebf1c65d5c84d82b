"""Checks of the kiosk page (web/) and menu.json that need no browser.

The payment QR (web/kiosk.js over the vendored qrcode-generator) and the page's pure helpers
(web/kiosk.js) are run under Node and compared with segno and with the names in
constants/states.py. Without Node those tests skip on a laptop and fail in CI (CI=true), like
the other tests that need a tool.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import segno
from segno import consts as segno_consts

from constants.states import ErrorCode, FailReason, RefundOutcome, State
from tests.machine_helpers import ROOT, need

WEB = ROOT / "web"
NODE = shutil.which("node")
QR_LIBRARY = "vendor/qrcode-generator/qrcode.js"
SCRIPTS = ("kiosk.js", QR_LIBRARY)

EXPECTED_MENU = [
    ("cola", "Cola", 7000),
    ("lemon", "Lemon", 10000),
    ("tea", "Iced Tea", 6000),
    ("coffee", "Coffee", 12000),
    ("water", "Mineral Water", 4000),
    ("orange", "Orange", 8000),
]

# A static QRIS payload as Indonesian merchants print them (EMVCo MPM, tag 63 = CRC).
QRIS_SAMPLE = (
    "00020101021126670016COM.NOBUSYSTEM.WWW01189360050300000001020214000000000001030303UMI"
    "51440014ID.CO.QRIS.WWW0215ID20232108427250303UMI5204581253033605802ID"
    "5913Drink Machine6007JAKARTA61051234062070703A016304"
)


def need_node() -> str:
    need(NODE is not None, "node, to run web/kiosk.js and its QR library")
    assert NODE is not None
    return NODE


def run_node(script: str, payload: Any) -> Any:
    """Runs `script` under Node with `input` (JSON on stdin) and returns its JSON output."""
    node = need_node()
    prelude = "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
    done = subprocess.run(
        [node, "-e", prelude + script],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def qr_js(texts: list[str]) -> list[dict[str, Any]]:
    """The symbols kiosk.js draws for `texts` (qrModules with the vendored library)."""
    script = f"""
const k = require('./web/kiosk.js');
const qrcode = require('./web/{QR_LIBRARY}');
const out = input.texts.map((t) => {{
  const rows = k.qrModules(qrcode, t).map((r) => r.map((dark) => (dark ? '1' : '0')).join(''));
  return {{version: (rows.length - 17) / 4, rows: rows}};
}});
process.stdout.write(JSON.stringify(out));
"""
    return run_node(script, {"texts": texts})


def mask_at_level_m(rows: list[str]) -> int:
    """The mask named by the format information next to the top-left finder (ISO/IEC 18004
    7.9: bits 14-7 along row 8, bits 6-0 up column 8, as segno places them); fails unless the
    error correction level it names is M."""
    bits = [rows[8][col] for col in (0, 1, 2, 3, 4, 5, 7, 8)]
    bits += [rows[row][8] for row in (7, 5, 4, 3, 2, 1, 0)]
    fmt = segno_consts.FORMAT_INFO.index(int("".join(bits), 2))
    # segno's index: the mask plus 0x00 for level M (0x08 L, 0x10 H, 0x18 Q).
    assert fmt & 0x18 == 0x00, f"format information {fmt:#04x} is not level M"
    return fmt & 0x07


def segno_rows(text: str, mask: int) -> dict[str, Any]:
    """segno's symbol for `text` (byte mode, level M, the smallest version) with `mask`."""
    code = segno.make(text, error="m", mode="byte", boost_error=False, micro=False, mask=mask)
    return {
        "version": code.version,
        "rows": ["".join(str(bit) for bit in row) for row in code.matrix],
    }


def assert_same_symbol_as_segno(text: str, ours: dict[str, Any]) -> None:
    """The library chooses its mask by its own penalty score, not that of ISO/IEC 18004
    7.8.3.1, so compare with segno's symbol for the mask it chose: level M, byte mode, the
    smallest version, standard padding and Reed-Solomon blocks then agree module for module."""
    mask = mask_at_level_m(ours["rows"])
    assert ours == segno_rows(text, mask=mask), f"{len(text)} characters"


def byte_capacity(version: int) -> int:
    """Bytes that fill a version-M symbol exactly (mode 4 bits, count 8 or 16 bits)."""
    bits = segno_consts.SYMBOL_CAPACITY[version][segno_consts.ERROR_LEVEL_M]
    return (bits - 4 - (8 if version < 10 else 16)) // 8


# --- menu.json and assets --------------------------------------------------------------------


def test_menu_lists_the_six_drinks_with_prices_icons_and_stock() -> None:
    menu = json.loads((ROOT / "menu.json").read_text(encoding="utf-8"))
    assert [(d["id"], d["name"], d["price"]) for d in menu] == EXPECTED_MENU
    for drink in menu:
        assert set(drink) == {"id", "name", "icon", "price", "stock"}
        assert drink["icon"] == f"assets/{drink['id']}.svg"
        assert drink["stock"] == 10


def test_every_drink_icon_is_an_svg_with_a_title() -> None:
    menu = json.loads((ROOT / "menu.json").read_text(encoding="utf-8"))
    for drink in menu:
        path = WEB / drink["icon"]
        assert path.is_file(), f"missing {path}"
        root = ET.parse(path).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        title = root.find("{http://www.w3.org/2000/svg}title")
        assert title is not None and title.text == drink["name"]


def test_every_asset_the_page_references_exists() -> None:
    html = (WEB / "index.html").read_text(encoding="utf-8")
    css = (WEB / "kiosk.css").read_text(encoding="utf-8")
    js = (WEB / "kiosk.js").read_text(encoding="utf-8")
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    referenced |= set(re.findall(r"url\(['\"]?([^'\")]+)", css))
    referenced |= set(re.findall(r'"(assets/[\w./-]+)"', js))
    assert {"kiosk.css", "kiosk.js", QR_LIBRARY} <= referenced
    for ref in referenced:
        assert (WEB / ref).is_file(), f"{ref} is referenced but not in web/"


def test_page_loads_nothing_from_outside() -> None:
    html = (WEB / "index.html").read_text(encoding="utf-8")
    css = (WEB / "kiosk.css").read_text(encoding="utf-8")
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)
    assert "@import" not in css and "http" not in css
    for svg in (WEB / "assets").glob("*.svg"):
        assert "href" not in svg.read_text(encoding="utf-8"), f"{svg.name} links out"


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_never_turn_text_into_html_or_code(name: str) -> None:
    source = (WEB / name).read_text(encoding="utf-8")
    sinks = r"\b(innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval|new Function)\b"
    assert not re.search(sinks, source), f"{name} uses {re.search(sinks, source)}"


def test_page_carries_the_test_hooks() -> None:
    html = (WEB / "index.html").read_text(encoding="utf-8")
    js = (WEB / "kiosk.js").read_text(encoding="utf-8")
    for testid in ("lang-switch", "connection", "announcer", "toast"):
        assert f'data-testid="{testid}"' in html
    for testid in ("cancel", "qr-canvas", "countdown", "amount", "reason", "order-id", "start"):
        assert f'"data-testid": "{testid}"' in js
    assert '"data-testid": "drink-" + drink.id' in js
    assert 'aria-live="polite"' in html
    assert "document.body.dataset.screen" in js and "window.kiosk" in js


# --- the payment QR (kiosk.js with web/vendor/qrcode-generator) against segno ---------------


def test_qr_matches_segno_for_payloads_that_fill_each_version() -> None:
    """A payload that fills its version exactly has no padding, so plain segno must agree
    module for module, in the same version."""
    texts = [(QRIS_SAMPLE * 20)[: byte_capacity(v)] for v in range(1, 41)]
    for version, (text, ours) in enumerate(zip(texts, qr_js(texts), strict=True), start=1):
        assert_same_symbol_as_segno(text, ours)
        assert ours["version"] == version


@pytest.mark.usefixtures("segno_standard_padding")
def test_qr_matches_segno_for_qris_payloads() -> None:
    texts = [QRIS_SAMPLE + "A1B2"]  # a full payload, 212 characters
    texts += [
        (QRIS_SAMPLE * 2)[:n]
        for n in (1, 10, 20, 35, 50, 70, 95, 115, 140, 170, 200, 230, 250, 300)
    ]
    texts += ["https://example.com/pay?order=vm-1-0001", "Selamat menikmati! ☕"]
    ours = qr_js(texts)
    for text, code in zip(texts, ours, strict=True):
        assert_same_symbol_as_segno(text, code)
    assert {code["version"] for code in ours} >= set(range(1, 11))


def test_qr_refuses_a_payload_too_long_for_version_40() -> None:
    script = f"""
const k = require('./web/kiosk.js');
const qrcode = require('./web/{QR_LIBRARY}');
try {{ k.qrModules(qrcode, 'x'.repeat(input.n)); process.stdout.write('"encoded"'); }}
catch (e) {{ process.stdout.write('"refused"'); }}
"""
    assert run_node(script, {"n": byte_capacity(40) + 1}) == "refused"
    assert run_node(script, {"n": byte_capacity(40)}) == "encoded"


def test_the_vendored_qr_library_is_the_recorded_release() -> None:
    """web/vendor/README.md records where the file came from; the file must still be that one."""
    readme = (WEB / "vendor" / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"`qrcode\.js` SHA-256 \| `([0-9a-f]{64})`", readme)
    assert recorded, "web/vendor/README.md records no SHA-256 for qrcode.js"
    assert hashlib.sha256((WEB / QR_LIBRARY).read_bytes()).hexdigest() == recorded.group(1)
    assert "| Version | 2.0.4 |" in readme
    assert (WEB / "vendor" / "qrcode-generator" / "LICENSE").is_file()


# --- web/kiosk.js helpers -----------------------------------------------------------------------


def kiosk_js(expression: str, payload: Any = None) -> Any:
    script = (
        f"const k = require('./web/kiosk.js');\nprocess.stdout.write(JSON.stringify({expression}));"
    )
    return run_node(script, payload)


def test_prices_are_shown_as_rupiah_with_dot_grouping() -> None:
    shown = kiosk_js("input.map(k.formatRupiah)", [7000, 10000, 4000, 12000, 1234567, 0, 500, None])
    assert shown == [
        "Rp 7.000",
        "Rp 10.000",
        "Rp 4.000",
        "Rp 12.000",
        "Rp 1.234.567",
        "Rp 0",
        "Rp 500",
        "",
    ]


def test_countdown_shows_minutes_and_seconds_and_stops_at_zero() -> None:
    shown = kiosk_js("input.map(k.formatCountdown)", [125, 60, 59, 0, -3, 900])
    assert shown == ["02:05", "01:00", "00:59", "00:00", "00:00", "15:00"]
    left = kiosk_js(
        "input.map(([at, now]) => k.secondsLeft(at, now))",
        [[1000, 880_000], [1000, 999_500], [1000, 1_200_000]],
    )
    assert left == [120, 1, 0]


def test_websocket_url_follows_the_page_unless_overridden() -> None:
    locations = [
        {"protocol": "http:", "host": "127.0.0.1:3333", "search": ""},
        {"protocol": "https:", "host": "kiosk.example:8443", "search": ""},
        {"protocol": "file:", "host": "", "search": ""},
        {"protocol": "file:", "host": "", "search": "?ws=ws%3A%2F%2F10.0.0.5%3A4000%2Fws"},
        {"protocol": "http:", "host": "127.0.0.1:3333", "search": "?x=1&ws=ws://127.0.0.1:9999/ws"},
        {"protocol": "http:", "host": "127.0.0.1:3333", "search": "?ws=javascript:alert(1)"},
    ]
    assert kiosk_js("input.map(k.resolveWsUrl)", locations) == [
        "ws://127.0.0.1:3333/ws",
        "wss://kiosk.example:8443/ws",
        "ws://localhost:3333/ws",
        "ws://10.0.0.5:4000/ws",
        "ws://127.0.0.1:9999/ws",
        "ws://127.0.0.1:3333/ws",
    ]


def test_reconnect_backoff_doubles_and_is_capped_at_five_seconds() -> None:
    assert kiosk_js("[0, 1, 2, 3, 4, 5, 10, 50].map(k.reconnectDelay)") == [
        250,
        500,
        1000,
        2000,
        4000,
        5000,
        5000,
        5000,
    ]


def test_only_local_assets_or_web_images_become_image_sources() -> None:
    urls = [
        "assets/cola.svg",
        "javascript:alert(1)",
        "data:text/html,x",
        "//evil/x.svg",
        "../secret.svg",
        "http://127.0.0.1:3334/v2/qris/1/qr-code",
    ]
    assert kiosk_js("input.map((u) => k.safeImageUrl(u, false))", urls) == [
        "assets/cola.svg",
        None,
        None,
        None,
        None,
        None,
    ]
    assert kiosk_js("input.map((u) => k.safeImageUrl(u, true))", urls)[-1] == urls[-1]


def test_page_has_a_screen_for_every_machine_state() -> None:
    assert set(kiosk_js("k.SCREENS")) == {state.value for state in State}


def test_every_reason_outcome_and_error_code_is_translated_in_both_languages() -> None:
    names = kiosk_js(
        "{reasons: k.FAIL_REASONS, refunds: k.REFUND_OUTCOMES, errors: k.ERROR_CODES, strings: k.STRINGS}"
    )
    assert set(names["reasons"]) == {r.value for r in FailReason}
    assert set(names["refunds"]) == {r.value for r in RefundOutcome}
    assert set(names["errors"]) == {c.value for c in ErrorCode}
    strings = names["strings"]
    assert set(strings) == {"id", "en"}
    assert set(strings["id"]) == set(strings["en"]), "a text is missing in one language"
    for table in strings.values():
        for reason in names["reasons"]:
            assert table[f"fail.{reason}"] and table[f"fail.{reason}.detail"]
        for code in names["errors"]:
            assert table[f"error.{code}"]
        assert table["refund.refunded"] and table["refund.owed"] and table["refund.vend_unknown"]
    assert strings["id"]["idle.cta"] == "Sentuh untuk mulai"
    assert strings["en"]["idle.cta"] == "Tap to start"
    assert strings["id"]["dispensed.title"] == "Selamat menikmati!"


# --- Contrast (WCAG 2.x AA: 4.5:1 for text) ----------------------------------------------------


def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_contrast() -> None:
    css = (WEB / "kiosk.css").read_text(encoding="utf-8")
    var = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6});", css))
    pairs = [
        (var["ink"], var["bg"]),
        (var["ink-soft"], var["bg"]),
        (var["ink-soft"], var["bg-warm"]),
        (var["on-brand"], var["brand"]),
        (var["brand-dark"], var["brand-soft"]),
        (var["danger"], "#fff0f0"),
        ("#5c3d00", "#fff3bf"),
        ("#ffffff", "#343a40"),
        ("#ffffff", var["ink"]),
    ]
    for fg, bg in pairs:
        assert contrast(fg, bg) >= 4.5, f"{fg} on {bg}: {contrast(fg, bg):.2f}"
