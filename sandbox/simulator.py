"""The payment simulator: the page a tester pays from, and the JSON API tests pay through.

Routes (no auth, and no faults: shared/midtrans.md, "The sandbox's payment simulator")::

    GET  /simulator[?part=list]              the page (sandbox/simulator.html), or its list alone
    GET  /simulator/simulator.css, /simulator/simulator.js   the page's style and script
    GET  /simulator/transactions[?status=pending]   the ledger as JSON status bodies
    POST /simulator/pay/{order_id}           the customer scanned the QR and paid
    POST /simulator/deny/{order_id}          the payment was refused
    GET  /simulator/faults, POST /simulator/faults   the fault switches (names of midtrans.md)
    GET  /simulator/qr/{transaction_id}      the QR's PNG, for the page

The page is `simulator.html` with `${...}` fields (string.Template); the `<template>`
elements at its end are the fragments filled in here and removed from the page served.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import unquote

from sandbox.faults import FaultSwitches
from sandbox.ledger import Ledger
from sandbox.messages import (
    MSG_NO_ROUTE,
    Reply,
    Request,
    SandboxError,
    error_reply,
    invalid,
    json_reply,
)
from sandbox.validation import json_object

HERE = Path(__file__).resolve().parent
#: The page's own files: name -> content type.
ASSETS = {
    "simulator.css": "text/css; charset=utf-8",
    "simulator.js": "text/javascript; charset=utf-8",
}
_FRAGMENT = re.compile(r'<template id="([a-z]+)">(.*?)</template>\n?', re.S)
_FRAGMENTS_NOTE = re.compile(r"\n?<!-- The fragments .*?-->\n", re.S)


def _load_page() -> tuple[Template, dict[str, Template]]:
    text = (HERE / "simulator.html").read_text(encoding="utf-8")
    fragments = {name: Template(body) for name, body in _FRAGMENT.findall(text)}
    page = _FRAGMENTS_NOTE.sub("\n", _FRAGMENT.sub("", text))
    return Template(page), fragments


PAGE, FRAGMENTS = _load_page()
_ASSET_BYTES = {name: (HERE / name).read_bytes() for name in ASSETS}


class Simulator:
    """The `/simulator` routes over `ledger` and `faults`. `qr_image(tid)`: the QR reply."""

    def __init__(
        self, ledger: Ledger, faults: FaultSwitches, qr_image: Callable[[str], Reply]
    ) -> None:
        self.ledger = ledger
        self.faults = faults
        self.qr_image = qr_image

    def handle(self, req: Request) -> Reply:
        try:
            return self._call(req)
        except SandboxError as exc:
            return error_reply(exc)

    def _call(self, req: Request) -> Reply:
        parts = [unquote(p) for p in req.path.split("/")[2:]]
        get, post = req.method == "GET", req.method == "POST"
        if parts in ([], [""]) and get:
            only = req.query.get("part", [""])[0]
            page = self.list_html(req.base) if only == "list" else self.page(req.base)
            return Reply(200, page.encode(), "text/html; charset=utf-8")
        if len(parts) == 1 and parts[0] in ASSETS and get:
            return Reply(200, _ASSET_BYTES[parts[0]], ASSETS[parts[0]])
        if parts == ["transactions"] and get:
            status = req.query.get("status", [None])[0] or None
            return json_reply(200, self.ledger.entries(req.base, status))
        if len(parts) == 2 and parts[0] in ("pay", "deny") and parts[1] and post:
            status = "settlement" if parts[0] == "pay" else "deny"
            return json_reply(200, self.ledger.settle(parts[1], status, req.base), "200")
        if parts == ["faults"] and get:
            return json_reply(200, self.faults.snapshot())
        if parts == ["faults"] and post:
            data = json_object(req.body)
            try:
                return json_reply(200, self.faults.update(data))
            except ValueError as exc:
                raise invalid(str(exc)) from None
        if len(parts) == 2 and parts[0] == "qr" and get:
            return self.qr_image(parts[1])
        known = ("transactions", "pay", "deny", "faults", "qr", "", *ASSETS)
        if parts and parts[0] in known:
            raise SandboxError("405", "Method not allowed")
        raise SandboxError("404", MSG_NO_ROUTE)

    def list_html(self, base: str) -> str:
        """The pending transactions as cards with their QR and Pay / Deny buttons."""
        pending = self.ledger.entries(base, "pending")
        if not pending:
            return FRAGMENTS["empty"].substitute()
        return "".join(FRAGMENTS["card"].substitute(_escaped(t)) for t in pending)

    def page(self, base: str) -> str:
        rows = "".join(
            FRAGMENTS["fault"].substitute(_escaped({"name": name, "value": value}))
            for name, value in self.faults.snapshot().items()
        )
        return PAGE.substitute(list=self.list_html(base), faults=rows, base=html.escape(base))


def _escaped(values: dict[str, Any]) -> dict[str, str]:
    return {name: html.escape(str(value), quote=True) for name, value in values.items()}
