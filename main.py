#!/usr/bin/env python3
"""Drink Machine: run a service, the whole machine, or an operator command.

Usage::

    python main.py up                       # Redis, sandbox, websocket server, workers
    python main.py backend [--workers N]    # fleet mode: the shared services of every machine
                                            #   (--cluster: on a local Redis Cluster)
    python main.py machine                  # fleet mode: the agent on a vending machine
    python main.py --service ORDER          # one process (ORDER, ORDER_CREATED, DISPENSE,
                                            #   SCREEN, NOTIFICATION, SANDBOX)
    python main.py status                   # state, current order, stock, queue (--json: JSON)
    python main.py menu                     # the drinks; `menu import FILE [--yes]` applies a file
    python main.py price cola 7500          # a drink's price, from the next order
    python main.py stock cola 12            # a drink's units; `refill cola` / `refill --all`
    python main.py slot enable 3            # a disabled or empty dispenser slot back in use
    python main.py sales --from 2027-01-01 --to 2027-01-31 [--csv]
    python main.py queue                    # refunds owed, vend outcomes unknown
    python main.py resolve ORDER_ID ACTION  # retry_refund, mark_refunded, mark_vended, refund
    python main.py operator add NAME        # console log-in; password from stdin
    python main.py maintenance on|off       # OUT_OF_SERVICE / back to IDLE
    python main.py fleet add vm-7           # fleet mode: register a machine, print its token
                                            #   once; `fleet revoke ID`, `fleet list`
    python main.py health                   # exit 0 when every worker has a fresh heartbeat
    python main.py doctor                   # what a deployment needs, checked in plain words

Every operator command takes --json.
"""

from __future__ import annotations

import argparse
import os
import sys

from constants.services import Service
from cores import logs
from cores.config import ConfigError, Settings
from services import cli


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="main.py", description="Drink Machine")
    parser.add_argument(
        "--service",
        choices=[s.value for s in Service if s != Service.WEBSOCKET],
        help="run one process of the machine",
    )
    parser.add_argument("--port", type=int, help="port for SANDBOX / NOTIFICATION")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="with --service: serve every registered machine (fleet mode's backend)",
    )
    parser.add_argument(
        "--no-log-file",
        action="store_true",
        help="log to stderr only (`main.py up` keeps its children's files)",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("up", help="start the whole machine")
    backend = sub.add_parser("backend", help="fleet mode: the shared services of every machine")
    backend.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes of each shared worker service (default 1)",
    )
    backend.add_argument(
        "--cluster",
        action="store_true",
        help="without REDIS_URL / REDIS_CLUSTER_NODES: a local Redis Cluster (3 masters + "
        "3 replicas) under VAR_DIR/cluster instead of one redis-server",
    )
    sub.add_parser("machine", help="fleet mode: this vending machine's agent (BACKEND_URL)")
    sub.add_parser("health", help="exit 0 when Redis answers and every worker is alive")
    sub.add_parser(
        "doctor", help="check what a deployment needs (Redis, ports, Midtrans, clock, ...)"
    )
    # Operator commands: readable by default, JSON with --json (services/commands.py).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    command("status", help="the machine's state, order, stock, queue and workers")
    menu = command("menu", help="list the drinks; `menu import FILE` applies a menu file")
    menu_sub = menu.add_subparsers(dest="menu_command")
    menu_import = menu_sub.add_parser(
        "import", help="show what a menu file changes, then apply it", parents=[common]
    )
    menu_import.add_argument("file")
    menu_import.add_argument("--yes", action="store_true", help="apply without asking")
    price = command("price", help="set a drink's price (Rupiah), from the next order")
    price.add_argument("drink")
    price.add_argument("rupiah")
    stock = command("stock", help="set the units in a drink's slot")
    stock.add_argument("drink")
    stock.add_argument("units")
    refill = command("refill", help="a drink's slot (or --all) is full: stock = capacity")
    refill.add_argument("drink", nargs="?")
    refill.add_argument("--all", action="store_true", help="every drink")
    slot = command("slot", help="the dispenser slots and their state; `slot enable N`")
    slot_sub = slot.add_subparsers(dest="slot_command")
    slot_enable = slot_sub.add_parser(
        "enable", help="a disabled or empty slot back in use", parents=[common]
    )
    slot_enable.add_argument("slot")
    sales = command("sales", help="sales report of a date range (default: today)")
    sales.add_argument("--from", dest="date_from", metavar="DATE", help="YYYY-MM-DD")
    sales.add_argument("--to", dest="date_to", metavar="DATE", help="YYYY-MM-DD (included)")
    sales.add_argument("--csv", action="store_true", help="one CSV line per order")
    command("queue", help="what needs a person: refunds owed, vend outcomes unknown")
    resolve = command("resolve", help="resolve an entry of the queue")
    resolve.add_argument("order_id")
    resolve.add_argument(
        "action", choices=["retry_refund", "mark_refunded", "mark_vended", "refund"]
    )
    resolve.add_argument("--note", default="", help="what was done (mark_refunded needs one)")
    audit = command("audit", help="the latest operator actions")
    audit.add_argument("--count", type=int, default=50)
    alerts = command("alerts", help="the open alerts (--all: the latest raised and cleared)")
    alerts.add_argument("--all", action="store_true", help="the latest alerts stream entries")
    maintenance = command("maintenance", help="take the machine out of service, or back")
    maintenance.add_argument("mode", choices=["on", "off"])
    account = command("operator", help="console operators: add NAME, remove NAME, list")
    account_sub = account.add_subparsers(dest="operator_command", required=True)
    add = account_sub.add_parser(
        "add", help="add an operator; the password is read from stdin", parents=[common]
    )
    add.add_argument("name")
    remove = account_sub.add_parser("remove", help="remove an operator", parents=[common])
    remove.add_argument("name")
    account_sub.add_parser("list", help="the operators' names", parents=[common])
    fleet = command("fleet", help="fleet mode's machines: add ID, revoke ID, list")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True)
    fleet_add = fleet_sub.add_parser(
        "add", help="register a machine; prints its token once", parents=[common]
    )
    fleet_add.add_argument("machine_id")
    fleet_revoke = fleet_sub.add_parser(
        "revoke", help="refuse a machine's token from now on", parents=[common]
    )
    fleet_revoke.add_argument("machine_id")
    fleet_sub.add_parser("list", help="machines: state, last seen, version", parents=[common])
    args = parser.parse_args(argv)
    if not args.service and not args.command:
        parser.error("give --service NAME or a command (up, status, menu, sales, ...)")
    if args.command == "backend" and not 1 <= args.workers <= 64:
        parser.error("--workers takes 1 to 64")
    if args.fleet and not args.service:
        parser.error("--fleet goes with --service NAME")
    if args.command == "refill" and bool(args.drink) == bool(args.all):
        parser.error("refill DRINK, or refill --all")
    # Who an operator command acts as, in the audit stream.
    args.actor = "cli:" + (os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        settings = Settings.from_env()
        if args.port is not None and args.service == Service.SANDBOX:
            settings = settings.replace(sandbox_port=args.port)
        elif args.port is not None and args.service == Service.NOTIFICATION:
            settings = settings.replace(notification_port=args.port)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    name = args.service or args.command.upper()
    long_running = args.service or args.command in ("up", "backend", "machine")
    to_file = long_running and not args.no_log_file
    # A one-shot command prints its answer on stdout; its INFO lines would only bury it.
    one_shot = not long_running
    quiet = one_shot and settings.log_level == "INFO"
    # Fleet mode's shared processes serve every machine: each line names its own (cores/logs).
    shared = args.fleet or args.command == "backend" or args.service == Service.GATEWAY
    logs.setup(
        name,
        "-" if shared else settings.machine_id,
        "WARNING" if quiet else settings.log_level,
        settings.var_dir / "logs" if to_file else None,
    )
    try:
        return cli.run(args, settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
