"""The console's money pages of one machine: sales (range, totals, charts, CSV, the
reconciliation) and the queue of what needs a person (refunds owed, vend outcomes unknown).

Reports come from cores/sales.py through Operations.sales_report; resolutions from
services/resolutions.py (a refund goes through Midtrans with the order's refund key).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from constants.orders import OperatorKind, Resolution
from cores import rules, sales
from cores.console_errors import OperatorError
from cores.operations import Operations
from services.console_pages import actor, base, machine_of, refused
from services.operator_service import Console, Refused, notice, operator_page

log = logging.getLogger(__name__)

#: The sales page opens on the last this many days.
DEFAULT_DAYS = 7


def routes() -> list[Route]:
    m = "/machines/{machine_id}"
    return [
        Route(m + "/sales", sales_page),
        Route(m + "/sales.json", sales_json),
        Route(m + "/sales.csv", sales_csv),
        Route(m + "/queue", queue_page, methods=["GET"]),
        Route(m + "/queue/{order_id}", resolve, methods=["POST"]),
    ]


def date_range(console: Console, request: Request) -> tuple[str, str]:
    """`from` and `to` of the query, by default the last DEFAULT_DAYS days up to today."""
    last = request.query_params.get("to") or console.today()
    first = request.query_params.get("from")
    if not first:
        try:
            first = (sales.parse_day("to", last) - timedelta(days=DEFAULT_DAYS - 1)).isoformat()
        except OperatorError:
            first = last
    return first, last


def chart_data(report: sales.Report) -> dict[str, Any]:
    """The three charts' labels and values (counts and Rupiah), as the page draws them."""
    return {
        "by_drink": {
            "labels": list(report.by_drink),
            "count": [v["count"] for v in report.by_drink.values()],
            "takings": [v["takings"] for v in report.by_drink.values()],
        },
        "by_hour": {
            "labels": [f"{h['hour']:02d}" for h in report.by_hour],
            "count": [h["count"] for h in report.by_hour],
            "takings": [h["takings"] for h in report.by_hour],
        },
        "by_day": {
            "labels": [d["date"] for d in report.by_day],
            "count": [d["count"] for d in report.by_day],
            "takings": [d["takings"] for d in report.by_day],
        },
    }


async def _report(request: Request) -> tuple[Console, str, str, sales.Report]:
    console, broker = machine_of(request)
    first, last = date_range(console, request)
    try:
        report = await run_in_threadpool(
            Operations(broker).sales_report, first, last, console.timezone
        )
    except OperatorError as exc:
        raise Refused(str(exc)) from exc
    return console, first, last, report


async def _sales_refused(request: Request, exc: Refused) -> Response:
    console, _ = machine_of(request)
    first, last = date_range(console, request)
    return console.render(
        request,
        "sales.html",
        status=exc.status,
        error=exc.message,
        first=first,
        last=last,
        report=None,
        charts=None,
    )


@operator_page(refused=_sales_refused)
async def sales_page(request: Request, user: str) -> Response:
    console, first, last, report = await _report(request)
    return console.render(
        request,
        "sales.html",
        first=first,
        last=last,
        report=report,
        charts=chart_data(report),
        local=lambda at: sales.local_time(at, console.timezone),
    )


@operator_page
async def sales_json(request: Request, user: str) -> Response:
    """The report of the range as JSON: totals, reconciliation, rows and the charts' data."""
    _, first, last, report = await _report(request)
    values = report.values()
    return JSONResponse({"from": first, "to": last, **values, "charts": chart_data(report)})


@operator_page
async def sales_csv(request: Request, user: str) -> Response:
    """Every order of the range, one CSV line each, under a header naming the columns."""
    console, first, last, report = await _report(request)
    machine_id = request.path_params["machine_id"]
    return Response(
        sales.csv_text(report.rows, console.timezone),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="sales-{machine_id}-{first}-{last}.csv"'
        },
    )


# --- needs a person -------------------------------------------------------------------------


def _queue_values(request: Request) -> dict[str, Any]:
    _, broker = machine_of(request)
    entries = Operations(broker).queue()
    for e in entries:
        kind = str(e.get("kind", ""))
        allowed = rules.RESOLUTIONS.get(OperatorKind(kind), ()) if kind in set(OperatorKind) else ()
        e["actions"] = [str(a) for a in allowed]
    return {"entries": entries, "note_required": [str(a) for a in rules.NOTE_REQUIRED]}


async def _queue_refused(request: Request, exc: Refused) -> Response:
    console, _ = machine_of(request)
    return console.render(
        request, "queue.html", status=exc.status, error=exc.message, **_queue_values(request)
    )


@operator_page(refused=_queue_refused)
async def queue_page(request: Request, user: str) -> Response:
    console, _ = machine_of(request)
    return console.render(request, "queue.html", **_queue_values(request))


ACTION_TEXT = {
    Resolution.RETRY_REFUND: "refunded through Midtrans",
    Resolution.MARK_REFUNDED: "marked refunded",
    Resolution.MARK_VENDED: "marked vended",
    Resolution.REFUND: "refunded through Midtrans",
}


@operator_page(refused=_queue_refused)
async def resolve(request: Request, user: str, form: dict[str, str]) -> Response:
    """Resolve an entry: retry the refund / mark refunded (with a note) for a refund owed,
    mark vended / refund for a vend outcome unknown. A refund goes through Midtrans with the
    order's one refund key; one Midtrans still refuses leaves the entry in the queue, said so."""
    from services import resolutions
    from services.refunds import Refunder

    console, broker = machine_of(request)
    order_id = request.path_params["order_id"]
    client = console.extras.get("midtrans")
    refunder = None if client is None else Refunder(client, time.sleep)
    try:
        done = await run_in_threadpool(
            resolutions.resolve,
            Operations(broker),
            refunder,
            order_id,
            form.get("action", ""),
            actor(user),
            form.get("note", "")[:500],
        )
    except OperatorError as exc:
        raise refused(exc) from exc
    if not done.done:
        raise Refused(f"Not resolved: {done.message}", 502)
    text = ACTION_TEXT.get(done.action, "resolved")
    return notice(request, f"{order_id}: {text}.", base(request) + "/queue")
