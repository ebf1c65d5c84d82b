"""The console's pages of one machine: overview (live), menu, stock, maintenance, audit.

The stock page also lists the dispenser slots (cores/slots.py: ok, empty or disabled, with
their failures in a row) and re-enables a disabled or empty one (POST, CSRF, audited). The
overview shows the dispenser (driver, the board's firmware from its PING, last seen).

Each action goes through cores/operations.py (validated by cores/catalog.py, audited there);
a refused input is shown on its page with status 400 (409 when the machine's state refuses
it) and nothing is changed. Sales and the operator's queue are in services/console_sales.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import requests
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from constants.console import GATEWAY_PROBE_EVERY_S, GATEWAY_PROBE_TIMEOUT_S, LIVE_BLOCK_MS
from constants.services import WATCHED
from constants.states import State
from constants.tunables import HEARTBEAT_TTL_S
from cores import catalog
from cores.broker import Broker, CommandRefused
from cores.console_errors import OperatorError
from cores.logs import kv
from cores.operations import Operations
from services.operator_service import (
    Console,
    Refused,
    console_of,
    notice,
    operator_page,
    session_alive,
)

log = logging.getLogger(__name__)


def routes() -> list[Route]:
    m = "/machines/{machine_id}"
    return [
        Route(m + "/", overview),
        Route(m + "/overview.json", overview_json),
        Route(m + "/live", live),
        Route(m + "/alerts/{alert_id:path}/acknowledge", acknowledge_alert, methods=["POST"]),
        Route(m + "/menu", menu_page, methods=["GET"]),
        Route(m + "/menu", put_drink, methods=["POST"]),
        Route(m + "/menu/{drink_id}/enabled", set_enabled, methods=["POST"]),
        Route(m + "/menu/{drink_id}/remove", remove_drink, methods=["POST"]),
        Route(m + "/stock", stock_page, methods=["GET"]),
        Route(m + "/stock/{drink_id}", set_stock, methods=["POST"]),
        Route(m + "/stock/{drink_id}/refill", refill, methods=["POST"]),
        Route(m + "/slots/{slot}/enable", enable_slot, methods=["POST"]),
        Route(m + "/maintenance", maintenance_page, methods=["GET"]),
        Route(m + "/maintenance", maintenance, methods=["POST"]),
        Route(m + "/audit", audit_page),
    ]


def machine_of(request: Request) -> tuple[Console, Broker]:
    console = console_of(request)
    return console, console.broker(request.path_params["machine_id"])


def operations_of(request: Request) -> Operations:
    return Operations(machine_of(request)[1])


def actor(user: str) -> str:
    """Who did it, as the audit names a console operator."""
    return f"console:{user}"


def base(request: Request) -> str:
    return f"/machines/{request.path_params['machine_id']}"


def refused(exc: Exception) -> Refused:
    """An operator error or a refused machine command as the page shows it."""
    if isinstance(exc, CommandRefused):
        return Refused(exc.message, 409)
    if isinstance(exc, OperatorError):
        return Refused(str(exc), 400)
    raise exc


# --- overview -------------------------------------------------------------------------------


class GatewayProbe:
    """Is the payment gateway reachable? Any HTTP answer from its base URL says yes; the
    answer is kept GATEWAY_PROBE_EVERY_S so that open pages do not hammer it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.at = -GATEWAY_PROBE_EVERY_S
        self.answer = "unknown"

    def status(self) -> str:
        now = time.monotonic()
        if now - self.at >= GATEWAY_PROBE_EVERY_S:
            try:
                requests.head(self.url, timeout=GATEWAY_PROBE_TIMEOUT_S, allow_redirects=False)
                self.answer = "reachable"
            except requests.RequestException as exc:
                self.answer = f"unreachable ({type(exc).__name__})"
            self.at = now
        return self.answer


def overview_values(console: Console, broker: Broker) -> dict[str, Any]:
    """Everything the overview shows, as JSON (the page and its live updates alike)."""
    fmt = console.templates.env.filters["local_time"]
    now = console.clock()
    try:
        snap = broker.snapshot()
    except Exception as exc:  # Redis down: say so rather than fail the page
        log.warning("console overview: redis", extra=kv(error=type(exc).__name__))
        return {
            "state": "unknown",
            "since_text": "-",
            "redis": "unreachable",
            "order": None,
            "heartbeats": [],
            "gateway": "-",
            "today": {"count": 0, "takings_text": "-"},
            "alerts": [],
            "dispenser": {"driver": "-", "firmware": "-", "seen_text": "-"},
        }
    order = broker.order(snap.order_id)
    beats = []
    for service, at in broker.heartbeats(WATCHED).items():
        age = None if at is None else max(0.0, now - at)
        beats.append(
            {
                "service": service,
                "ok": age is not None and age <= HEARTBEAT_TTL_S,
                "age_text": "none" if age is None else f"{age:.0f} s ago",
            }
        )
    probe = console.extras.setdefault("gateway", GatewayProbe(console.settings.midtrans_base_url))
    day = console.today()
    today = Operations(broker).sales_report(day, day, console.timezone)
    return {
        "state": str(snap.state),
        "since_text": fmt(snap.since),
        "order": None
        if order is None
        else {
            "order_id": order.order_id,
            "drink": order.drink.name,
            "amount_text": catalog.rupiah(order.amount),
        },
        "heartbeats": beats,
        "redis": "reachable",
        "gateway": probe.status(),
        "today": {"count": today.sales, "takings_text": catalog.rupiah(today.takings)},
        "alerts": open_alerts(broker),
        "dispenser": dispenser_values(broker, fmt),
    }


def dispenser_values(broker: Broker, fmt: Any) -> dict[str, str]:
    """The dispenser as the overview shows it: driver, firmware, last seen (text)."""
    from cores import operator

    board = operator.dispenser(broker)
    if board is None:
        return {"driver": "not reported", "firmware": "-", "seen_text": "-"}
    seen = fmt(board["last_seen"]) if board["last_seen"] else "never"
    if board["alive"] is False:
        seen += " (silent to the last PING)"
    return {
        "driver": board["driver"] or "-",
        "firmware": board["firmware"] or "unknown",
        "seen_text": seen,
    }


def open_alerts(broker: Broker) -> list[dict[str, str]]:
    """The machine's open alerts (cores/alert_store.py), each as the line the page shows."""
    from cores.alert_store import AlertStore

    return [
        {"id": a.id, "text": f"{a.kind}: {a.subject}" + (f" ({a.detail})" if a.detail else "")}
        for a in AlertStore(broker).open_alerts()
    ]


@operator_page
async def overview(request: Request, user: str) -> Response:
    console, broker = machine_of(request)
    values = await run_in_threadpool(overview_values, console, broker)
    return console.render(request, "overview.html", o=values)


@operator_page
async def overview_json(request: Request, user: str) -> Response:
    console, broker = machine_of(request)
    return JSONResponse(await run_in_threadpool(overview_values, console, broker))


@operator_page
async def live(request: Request, user: str) -> Response:
    """Server-Sent Events: the overview now, then again after each event of the machine (or
    LIVE_BLOCK_MS without one), until the page goes away or the session ends (expired, or its
    account removed): checked before each message, on the session as it was at the open,
    since a response already started can no longer change its cookie."""
    console, broker = machine_of(request)
    since = float(request.session["since"])

    async def events() -> AsyncIterator[str]:
        cursor = await run_in_threadpool(broker.last_event_id)
        while not await request.is_disconnected():
            if not await run_in_threadpool(session_alive, console, user, since):
                log.info("console live: session ended", extra=kv(operator=user))
                return
            values = await run_in_threadpool(overview_values, console, broker)
            yield f"data: {json.dumps(values, separators=(',', ':'))}\n\n"
            try:
                entries = await run_in_threadpool(broker.read_events, cursor, LIVE_BLOCK_MS)
            except Exception as exc:
                log.warning("console live: redis", extra=kv(error=type(exc).__name__))
                entries = []
            if entries:
                cursor = entries[-1][0]

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _overview_refused(request: Request, exc: Refused) -> Response:
    console, broker = machine_of(request)
    values = await run_in_threadpool(overview_values, console, broker)
    return console.render(request, "overview.html", status=exc.status, error=exc.message, o=values)


@operator_page(refused=_overview_refused)
async def acknowledge_alert(request: Request, user: str, form: dict[str, str]) -> Response:
    """An open alert of the overview cleared by hand (audited); one no longer open is refused."""
    alert_id = request.path_params["alert_id"]
    try:
        await run_in_threadpool(operations_of(request).acknowledge_alert, alert_id, actor(user))
    except OperatorError as exc:
        raise refused(exc) from exc
    return notice(request, f"Alert {alert_id} acknowledged.", base(request) + "/")


# --- menu -----------------------------------------------------------------------------------


async def _menu_refused(request: Request, exc: Refused) -> Response:
    console, broker = machine_of(request)
    form = request.scope.get("console_form")
    return console.render(
        request,
        "menu.html",
        status=exc.status,
        error=exc.message,
        drinks=broker.menu(),
        form=form if form and form.get("new") else None,
    )


@operator_page
async def menu_page(request: Request, user: str) -> Response:
    console, broker = machine_of(request)
    return console.render(request, "menu.html", drinks=broker.menu(), form=None)


@operator_page(refused=_menu_refused)
async def put_drink(request: Request, user: str, form: dict[str, str]) -> Response:
    """Add a drink (the add form, `new`), or change one (a row's form)."""
    ops = operations_of(request)
    request.scope["console_form"] = form
    names = ("id", "name", "name_en", "price", "icon", "slot", "slots")
    fields: dict[str, str] = {k: form[k] for k in names if k in form}
    fields["id"] = fields.get("id", "").strip()
    if form.get("new") and any(d.id == fields["id"] for d in ops.drinks()):
        raise Refused(f"id: a drink {fields['id']!r} is on the menu already: edit it there")
    try:
        drink = ops.put_drink(fields, actor(user))
    except (OperatorError, CommandRefused) as exc:
        raise refused(exc) from exc
    what = "added" if form.get("new") else "saved"
    return notice(request, f"{drink.id} {what}.", base(request) + "/menu")


@operator_page(refused=_menu_refused)
async def set_enabled(request: Request, user: str, form: dict[str, str]) -> Response:
    drink_id = request.path_params["drink_id"]
    try:
        enabled = catalog.parse_flag("enabled", form.get("enabled", ""))
        operations_of(request).set_enabled(drink_id, enabled, actor(user))
    except (OperatorError, CommandRefused) as exc:
        raise refused(exc) from exc
    shown = "shown on the kiosk" if enabled else "hidden from the kiosk"
    return notice(request, f"{drink_id} {shown}.", base(request) + "/menu")


@operator_page(refused=_menu_refused)
async def remove_drink(request: Request, user: str, form: dict[str, str]) -> Response:
    drink_id = request.path_params["drink_id"]
    try:
        operations_of(request).remove_drink(drink_id, actor(user))
    except (OperatorError, CommandRefused) as exc:
        raise refused(exc) from exc
    return notice(request, f"{drink_id} removed from the menu.", base(request) + "/menu")


# --- stock ----------------------------------------------------------------------------------


async def _stock_refused(request: Request, exc: Refused) -> Response:
    console, broker = machine_of(request)
    return console.render(
        request,
        "stock.html",
        status=exc.status,
        error=exc.message,
        levels=_levels(broker),
        slots=Operations(broker).slot_rows(),
    )


def _levels(broker: Broker) -> list[dict]:
    return [s.values() for s in Operations(broker).stock_levels()]


@operator_page
async def stock_page(request: Request, user: str) -> Response:
    console, broker = machine_of(request)
    slots = Operations(broker).slot_rows()
    return console.render(request, "stock.html", levels=_levels(broker), slots=slots)


@operator_page(refused=_stock_refused)
async def enable_slot(request: Request, user: str, form: dict[str, str]) -> Response:
    """A disabled or empty dispenser slot back in use (audited)."""
    slot = request.path_params["slot"]
    try:
        await run_in_threadpool(operations_of(request).enable_slot, slot, actor(user))
    except (OperatorError, CommandRefused) as exc:
        raise refused(exc) from exc
    return notice(request, f"Slot {slot} enabled.", base(request) + "/stock")


@operator_page(refused=_stock_refused)
async def set_stock(request: Request, user: str, form: dict[str, str]) -> Response:
    """A row of the stock page: units, capacity and low-stock threshold, checked together and
    written in one audited MULTI (a refused one changes none)."""
    drink_id = request.path_params["drink_id"]
    try:
        operations_of(request).set_stock_and_limits(
            drink_id,
            form.get("stock", ""),
            form.get("capacity"),
            form.get("low_stock"),
            actor(user),
        )
    except (OperatorError, CommandRefused) as exc:
        raise refused(exc) from exc
    return notice(request, f"{drink_id}: stock saved.", base(request) + "/stock")


@operator_page(refused=_stock_refused)
async def refill(request: Request, user: str, form: dict[str, str]) -> Response:
    drink_id = request.path_params["drink_id"]
    try:
        operations_of(request).refill(drink_id, actor(user))
    except (OperatorError, CommandRefused) as exc:
        raise refused(exc) from exc
    return notice(request, f"{drink_id} refilled.", base(request) + "/stock")


# --- maintenance ----------------------------------------------------------------------------


def _maintenance_values(broker: Broker) -> dict[str, Any]:
    state = broker.snapshot().state
    return {"state": str(state), "out_of_service": state == State.OUT_OF_SERVICE}


async def _maintenance_refused(request: Request, exc: Refused) -> Response:
    console, broker = machine_of(request)
    return console.render(
        request,
        "maintenance.html",
        status=exc.status,
        error=exc.message,
        **_maintenance_values(broker),
    )


@operator_page
async def maintenance_page(request: Request, user: str) -> Response:
    console, broker = machine_of(request)
    return console.render(request, "maintenance.html", **_maintenance_values(broker))


@operator_page(refused=_maintenance_refused)
async def maintenance(request: Request, user: str, form: dict[str, str]) -> Response:
    """Out of service on (refused while a customer is buying) or off."""
    mode = form.get("mode")
    if mode not in ("on", "off"):
        raise Refused("mode: expected on or off")
    try:
        operations_of(request).set_out_of_service(mode == "on", actor(user))
    except CommandRefused as exc:
        state = machine_of(request)[1].snapshot().state
        if mode == "on" and state == State.OUT_OF_SERVICE:
            message = "The machine is out of service already."
        elif mode == "on":
            message = "Refused: a customer is buying right now; try again when the kiosk is idle."
        else:
            message = f"Refused: {exc.message}"
        raise Refused(message, 409) from exc
    except OperatorError as exc:
        raise refused(exc) from exc
    text = "The machine is out of service." if mode == "on" else "The machine is back in service."
    return notice(request, text, base(request) + "/maintenance")


# --- audit ----------------------------------------------------------------------------------


@operator_page
async def audit_page(request: Request, user: str) -> Response:
    console, broker = machine_of(request)
    entries = Operations(broker).audit(200)
    return console.render(request, "audit.html", entries=entries)
