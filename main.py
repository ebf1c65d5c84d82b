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
        return dispatch(args, settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "up":
        from services import supervisor

        return supervisor.run(settings)
    if args.service == Service.SANDBOX:
        from services import sandbox_service

        sandbox_service.run(settings)
        return 0
    if args.service == Service.NOTIFICATION:
        from services import notification_service

        notification_service.run(settings)
        return 0
    from services import runtime

    if args.service:
        runtime.run_worker(Service(args.service), settings)
        return 0
    from cores import operator
    from cores.broker import CommandRefused

    if args.command == "health":
        return health(settings)
    broker = runtime.broker_for(settings)
    try:
        if args.command == "stock":
            broker.set_stock(args.drink, args.units)
        elif args.command == "maintenance":
            broker.set_out_of_service(args.mode == "on")
    except CommandRefused as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return 1
    print(operator.dumps(operator.status(broker)))
    return 0


def health(settings: Settings) -> int:
    import redis

    from constants.tunables import HEARTBEAT_TTL_S
    from cores import operator
    from cores.broker import Broker
    from services import runtime

    try:
        status = operator.status(Broker(runtime.redis_client(settings), settings.machine_id))
    except redis.RedisError as exc:
        print(f"unhealthy: redis: {exc}", file=sys.stderr)
        return 1
    problems = operator.health(status, HEARTBEAT_TTL_S)
    for line in problems:
        print(f"unhealthy: {line}", file=sys.stderr)
    if not problems:
        print(f"healthy: {status['state']}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
