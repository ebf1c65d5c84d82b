"""The operator's commands of `main.py`: the console's actions, from a terminal.

Each takes the parsed arguments and the machine's Operations and returns what to print:
readable text by default (dates in the machine's time zone, Rupiah as `Rp 7.000`), JSON with
`--json`. A refused input raises cores.console_errors (one line, exit 1: services/cli.py).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from constants.services import WATCHED
from cores import catalog, operator, sales
from cores.accounts import Accounts
from cores.broker import Broker
from cores.config import Settings
from cores.console_errors import ActionRefused, InvalidInput
from cores.fleet import Fleet
from cores.operations import Operations

rupiah = catalog.rupiah


class Output:
    """What a command prints: the readable text and the JSON value."""

    def __init__(self, text: str, data: Any, ok: bool = True) -> None:
        self.text = text
        self.data = data
        self.ok = ok

    def render(self, as_json: bool) -> str:
        return operator.dumps(self.data) if as_json else self.text


def when(at: float | None, settings: Settings) -> str:
    return sales.local_time(at, settings.tz) if at else "-"


# --- status ------------------------------------------------------------------------------------


def status(ops: Operations, settings: Settings) -> Output:
    data = operator.status(ops.broker)
    lines = [f"machine {data['machine_id']}: {data['state']} since {when(data['since'], settings)}"]
    order = data["order"]
    if order:
        drink = json.loads(order.get("drink") or "{}")
        amount = int(order.get("amount") or 0)
        lines.append(
            f"order {order.get('order_id')}: {drink.get('id', '?')} {rupiah(amount)}"
            f" ({order.get('outcome') or 'open'})"
        )
    levels = ", ".join(
        f"{lv.drink.id} {lv.units}/{lv.drink.capacity}"
        + ("" if lv.level is catalog.Level.OK else f" {lv.level}")
        for lv in ops.stock_levels()
    )
    lines.append(f"stock: {levels or 'no drinks'}")
    queue = data["operator_queue"]
    lines.append(f"needs a person: {len(queue)}" + (" (see `main.py queue`)" if queue else ""))
    beats = data["heartbeat_age_s"]
    shown = []
    for service in WATCHED:
        age = beats.get(str(service))
        shown.append(f"{service} {'-' if age is None else f'{age:.0f}s ago'}")
    lines.append("workers: " + ", ".join(shown))
    board = data["dispenser"]
    if board:
        seen = when(board["last_seen"], settings)
        lines.append(
            f"dispenser: {board['driver'] or '?'}"
            + (f" on {board['port']}" if board["port"] else "")
            + f", firmware {board['firmware'] or 'unknown'}, last seen {seen}"
            + (" (silent to the last PING)" if board["alive"] is False else "")
        )
    out = [r for r in data["slots"] if r["status"] != "ok"]
    if out:
        lines.append("slots out of use: " + ", ".join(_slot_text(r) for r in out))
    return Output("\n".join(lines), data)


def _slot_text(row: dict) -> str:
    why = (
        f", {row['fails_in_a_row']} failed, last {row['last_reason']}" if row["last_reason"] else ""
    )
    return f"{row['slot']} ({row['drink'] or 'no drink'}: {row['status']}{why})"


# --- dispenser slots ---------------------------------------------------------------------------


def slots(ops: Operations, settings: Settings) -> Output:
    """`main.py slot`: each slot, its drink and state."""
    rows = ops.slot_rows()
    lines = [f"{'slot':>4}  {'drink':<12} {'state':<9} {'fails':>5}  last reason"]
    for r in rows:
        lines.append(
            f"{r['slot']:>4}  {r['drink'] or '-':<12} {r['status']:<9} {r['fails_in_a_row']:>5}"
            f"  {r['last_reason'] or '-'}"
        )
    return Output("\n".join(lines) if rows else "no slots", rows)


def slot_enable(ops: Operations, slot: str, actor: str) -> Output:
    """`main.py slot enable N`: a disabled or empty slot back in use (audited)."""
    before = ops.enable_slot(slot, actor)
    was = "disabled" if before.get("disabled") else "empty"
    text = f"slot {int(slot)}: {was} -> enabled"
    return Output(text, {"slot": int(slot), "before": before, "enabled": True})


# --- menu, prices, stock ---------------------------------------------------------------------


def menu(ops: Operations, settings: Settings) -> Output:
    levels = ops.stock_levels()
    head = f"{'slot':>4}  {'id':<12} {'name':<24} {'English':<24} {'price':>12} {'stock':>9}  on"
    lines = [head]
    for lv in levels:
        d = lv.drink
        lines.append(
            f"{d.slot:>4}  {d.id:<12} {d.name:<24} {d.name_en:<24} {rupiah(d.price):>12}"
            f" {f'{lv.units}/{d.capacity}':>9}  {'yes' if d.enabled else 'no'}"
        )
    data = [{**lv.drink.record(), "stock": lv.units, "level": str(lv.level)} for lv in levels]
    return Output("\n".join(lines), data)


def menu_import(ops: Operations, path: Path, yes: bool, actor: str) -> Output:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput("file", f"{path} is unreadable: {exc}") from None
    changes = ops.preview_import(items)
    if not changes:
        return Output("the menu is already as in the file: nothing to change", {"changes": []})
    listing = "\n".join(f"  {c}" for c in changes)
    if not yes:
        if not sys.stdin.isatty():
            return Output(
                f"would change:\n{listing}\nnothing changed: run again with --yes to apply",
                {"changes": changes, "applied": False},
                ok=False,
            )
        print(f"changes:\n{listing}")
        if input("apply them? [y/N] ").strip().lower() not in ("y", "yes"):
            return Output("nothing changed", {"changes": changes, "applied": False}, ok=False)
    applied = ops.import_menu(items, actor)
    text = "applied:\n" + "\n".join(f"  {c}" for c in applied)
    return Output(text, {"changes": applied, "applied": True})


def price(ops: Operations, drink_id: str, value: str, actor: str) -> Output:
    old = ops.drink(drink_id).price
    drink = ops.set_price(drink_id, value, actor)
    text = f"{drink.id}: {rupiah(old)} -> {rupiah(drink.price)} (from the next order)"
    return Output(text, {"drink": drink.id, "before": old, "price": drink.price})


def stock(ops: Operations, drink_id: str, units: str, actor: str) -> Output:
    drink = ops.drink(drink_id)
    old = ops.broker.stock().get(drink_id, 0)
    new = ops.set_stock(drink_id, units, actor)
    text = f"{drink.id}: {old} -> {new} of {drink.capacity}"
    return Output(text, {"drink": drink.id, "before": old, "stock": new})


def refill(ops: Operations, drink_id: str | None, actor: str) -> Output:
    full = ops.refill(drink_id, actor)
    text = "\n".join(f"{k}: refilled to {v}" for k, v in sorted(full.items()))
    return Output(text or "no drinks", {"stock": full})


# --- sales, queue, audit ---------------------------------------------------------------------


def sales_report(
    ops: Operations, settings: Settings, first: str | None, last: str | None, as_csv: bool
) -> Output:
    today = datetime.now(settings.tz).date().isoformat()
    report = ops.sales_report(first or today, last or first or today, settings.tz)
    if as_csv:
        return Output(sales.csv_text(report.rows, settings.tz).rstrip("\n"), report.values())
    r = report.reconciliation
    lines = [
        f"sales {report.by_day[0]['date']} to {report.by_day[-1]['date']} ({settings.timezone})",
        f"orders {report.orders}, paid {report.sales}, takings {rupiah(report.takings)}",
    ]
    for drink, v in report.by_drink.items():
        lines.append(f"  {drink:<12} {v['count']:>5}  {rupiah(v['takings']):>14}")
    if len(report.by_day) > 1:
        lines.append("by day:")
        for day in report.by_day:
            lines.append(f"  {day['date']}  {day['count']:>5}  {rupiah(day['takings']):>14}")
    lines.append(
        f"paid {rupiah(r['paid'])} = dispensed {rupiah(r['dispensed'])} + refunded "
        f"{rupiah(r['refunded'])} + owed {rupiah(r['owed'])} + unknown {rupiah(r['unknown'])}"
        f" + in progress {rupiah(r['in_progress'])}: "
        + ("balanced" if r["balanced"] else "DOES NOT BALANCE")
    )
    return Output("\n".join(lines), report.values())


def queue(ops: Operations, settings: Settings) -> Output:
    entries = ops.queue()
    lines = [
        f"{e.get('order_id')}  {e.get('kind')}  {e.get('drink', '-')}  "
        f"{rupiah(int(e.get('amount') or 0))}  {when(e.get('at'), settings)}  {e.get('detail', '')}"
        for e in entries
    ]
    return Output("\n".join(lines) or "nothing needs a person", entries)


def resolve(
    ops: Operations, settings: Settings, order_id: str, action: str, note: str, actor: str
) -> Output:
    from cores.midtrans import MidtransClient
    from services import resolutions
    from services.refunds import Refunder

    client = MidtransClient.from_settings(settings)
    try:
        done = resolutions.resolve(ops, Refunder(client, time.sleep), order_id, action, actor, note)
    finally:
        client.close()
    data = {"order_id": done.order_id, "action": str(done.action), "done": done.done}
    return Output(done.message, {**data, "message": done.message}, ok=done.done)


def audit(ops: Operations, settings: Settings, count: int) -> Output:
    entries = ops.audit(count)
    lines = [
        f"{when(e['at'], settings)}  {e['actor']}  {e['action']} {e['target']}: "
        f"{json.dumps(e['before'])} -> {json.dumps(e['after'])}"
        for e in entries
    ]
    return Output("\n".join(lines) or "no operator actions yet", entries)


def alerts(broker: Broker, settings: Settings, show_all: bool) -> Output:
    """`main.py alerts [--all]`: the open alerts, or the newest entries of the alerts stream."""
    from cores.alert_store import AlertStore
    from services.alerts_service import alerts_text, format_alerts

    rows = format_alerts(AlertStore(broker), show_all)
    return Output(alerts_text(rows, settings.tz), rows)


# --- operators ---------------------------------------------------------------------------------


def read_password() -> str:
    """From a terminal: asked twice, not echoed; otherwise one line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise InvalidInput("password", "the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def operators(accounts: Accounts, ops: Operations, args: argparse.Namespace) -> Output:
    """Console accounts; adding and removing one is audited (never the password or hash)."""
    if args.operator_command == "add":
        accounts.add(args.name, read_password())
        ops.audit_account("operator_add", args.name, args.actor)
        return Output(f"operator {args.name} added", {"added": args.name})
    if args.operator_command == "remove":
        accounts.remove(args.name)
        ops.audit_account("operator_remove", args.name, args.actor)
        return Output(f"operator {args.name} removed", {"removed": args.name})
    names = accounts.names()
    return Output("\n".join(names) or "no operators yet", names)


# --- fleet ---------------------------------------------------------------------------------------


def fleet(
    registry: Fleet,
    settings: Settings,
    args: argparse.Namespace,
    machine: Callable[[str], Broker],
) -> Output:
    """Fleet mode's registry: `fleet add ID` prints the new token alone on its last line (it
    is shown this once) and loads the machine's menu (MENU_FILE) and IDLE state unless it has
    them; `fleet revoke ID`; `fleet list`: registration, screen state, last seen, version and
    open alerts of each machine. Adding and revoking are audited. `machine(id)` is that
    machine's Broker."""
    from cores.alert_store import AlertStore
    from services.runtime import load_menu

    machine_id: str = getattr(args, "machine_id", "")
    if args.fleet_command == "add":
        token = registry.add(machine_id, args.actor)
        machine(machine_id).ensure_ready(load_menu(settings.menu_file))
        text = (
            f"machine {machine_id} added. Its token is below, shown this once: it cannot be"
            " shown again. Keep it secret; set it as MACHINE_TOKEN on that machine only.\n" + token
        )
        return Output(text, {"added": machine_id, "token": token})
    if args.fleet_command == "revoke":
        registry.revoke(machine_id, args.actor)
        text = f"machine {machine_id} revoked: its token is refused from now on"
        return Output(text, {"revoked": machine_id})
    records = []
    for m in registry.machines():
        broker = machine(m.id)
        alerts = AlertStore(broker).open_alerts()
        records.append(
            {
                **m.record(),
                "screen": str(broker.snapshot().state),
                "alerts": sorted(str(a.kind) for a in alerts),
            }
        )
    seen = f"last seen ({settings.timezone})"
    width = max(len(seen), 19)  # 19: YYYY-MM-DD HH:MM:SS
    rows = [
        f"{r['id']:<20} {r['state']:<8} {r['screen']:<16} "
        f"{when(r['last_seen'], settings):<{width}} {(r['version'] or '-'):<10} "
        f"{', '.join(r['alerts']) or '-'}"
        for r in records
    ]
    head = f"{'machine':<20} {'state':<8} {'screen':<16} {seen:<{width}} {'version':<10} alerts"
    text = "\n".join([head, *rows]) if rows else "no machines registered yet"
    return Output(text, records)


__all__ = ["ActionRefused", "Output"]
