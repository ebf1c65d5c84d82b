#!/usr/bin/env python3
"""Drink Machine: run a service, the whole machine, or an operator command.

Usage::

    python main.py up                       # Redis, sandbox, websocket server, workers
    python main.py --service ORDER          # one process (ORDER, ORDER_CREATED, DISPENSE,
                                            #   SCREEN, NOTIFICATION, SANDBOX)
    python main.py status                   # state, current order, stock as JSON
    python main.py stock cola 12            # set a drink's stock
    python main.py maintenance on|off       # OUT_OF_SERVICE / back to IDLE
    python main.py health                   # exit 0 when every worker has a fresh heartbeat
"""

from __future__ import annotations

import argparse
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
        "--no-log-file",
        action="store_true",
        help="log to stderr only (`main.py up` keeps its children's files)",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("up", help="start the whole machine")
    sub.add_parser("status", help="print the machine's state as JSON")
    sub.add_parser("health", help="exit 0 when Redis answers and every worker is alive")
    stock = sub.add_parser("stock", help="set the stock of a drink")
    stock.add_argument("drink")
    stock.add_argument("units", type=int)
    maintenance = sub.add_parser("maintenance", help="take the machine out of service, or back")
    maintenance.add_argument("mode", choices=["on", "off"])
    args = parser.parse_args(argv)
    if not args.service and not args.command:
        parser.error("give --service NAME or a command (up, status, stock, maintenance)")
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
    to_file = (args.service or args.command == "up") and not args.no_log_file
    logs.setup(
        name,
        settings.machine_id,
        settings.log_level,
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
