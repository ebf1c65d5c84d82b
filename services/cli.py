"""What `main.py` runs once it has parsed its arguments, built the settings and set up
logging: the whole machine (`up`), one process (`--service NAME`), or an operator command
(status, menu, price, stock, refill, sales, queue, resolve, audit, operator, maintenance,
fleet, health) against the machine's Redis (services/commands.py).

Each branch imports only what it runs, so a process does not carry the modules of the
others (the sandbox no Redis client, a one-shot command no supervisor, sandbox or worker).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from constants.services import Service
from cores.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run what `args` name: the whole machine, one process, or an operator command."""
    if args.command == "up":
        from services import supervisor

        return supervisor.run(settings)
    if args.command == "backend":
        from services import supervisor

        return supervisor.run_backend(settings, args.workers, args.cluster)
    if args.command == "machine":
        from services import agent_service

        return agent_service.run(settings)
    if args.service == Service.GATEWAY:
        from services import gateway_service

        return gateway_service.run(settings)
    if args.service == Service.SANDBOX:
        from services import sandbox_service

        sandbox_service.run(settings)
        return 0
    if args.service == Service.NOTIFICATION:
        from services import notification_service

        notification_service.run(settings, fleet=args.fleet)
        return 0
    if args.service == Service.OPERATOR:
        from services import operator_service

        operator_service.run(settings, fleet=args.fleet)
        return 0
    from services import runtime

    if args.service and args.fleet:
        runtime.run_fleet_worker(Service(args.service), settings)
        return 0
    if args.service:
        runtime.run_worker(Service(args.service), settings)
        return 0
    if args.command == "health":
        return health(settings)
    if args.command == "doctor":
        from services import doctor

        return doctor.main(settings)
    return operator_command(args, settings)


def operator_command(args: argparse.Namespace, settings: Settings) -> int:
    """An operator command: its readable output (or JSON with --json) on stdout; a refused
    input, or Redis unreachable, as one line on stderr and exit status 1."""
    import redis

    from cores.broker import CommandRefused
    from cores.console_errors import OperatorError
    from services import runtime

    url = runtime.redis_url(settings)
    try:
        client = runtime.redis_client(settings, name="cli")
        out = _dispatch(args, settings, client)
    except (OperatorError, CommandRefused) as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"redis unreachable at {runtime.shown_redis_url(url)}: {exc}", file=sys.stderr)
        return 1
    text = out.render(args.json)
    if text:
        print(text)
    return 0 if out.ok else 1


def _dispatch(args: argparse.Namespace, settings: Settings, client: Any) -> Any:
    from cores.accounts import Accounts
    from cores.broker import Broker
    from cores.operations import Operations
    from services import commands, runtime

    if args.command == "fleet":
        from cores.fleet import Fleet

        return commands.fleet(
            Fleet(client), settings, args, lambda machine_id: Broker(client, machine_id)
        )
    broker = runtime.broker_for(settings, client)
    ops = Operations(broker)
    if args.command == "operator":
        return commands.operators(Accounts(client), ops, args)
    actor = args.actor
    match args.command:
        case "status":
            return commands.status(ops, settings)
        case "maintenance":
            ops.set_out_of_service(args.mode == "on", actor)
            return commands.status(ops, settings)
        case "alerts":
            return commands.alerts(broker, settings, args.all)
        case "menu" if args.menu_command == "import":
            return commands.menu_import(ops, Path(args.file), args.yes, actor)
        case "menu":
            return commands.menu(ops, settings)
        case "price":
            return commands.price(ops, args.drink, args.rupiah, actor)
        case "stock":
            return commands.stock(ops, args.drink, args.units, actor)
        case "refill":
            return commands.refill(ops, None if args.all else args.drink, actor)
        case "slot" if args.slot_command == "enable":
            return commands.slot_enable(ops, args.slot, actor)
        case "slot":
            return commands.slots(ops, settings)
        case "sales":
            return commands.sales_report(ops, settings, args.date_from, args.date_to, args.csv)
        case "queue":
            return commands.queue(ops, settings)
        case "resolve":
            return commands.resolve(ops, settings, args.order_id, args.action, args.note, actor)
        case "audit":
            return commands.audit(ops, settings, args.count)
    raise ValueError(f"no such command: {args.command}")  # main.py's parser lists them all


def health(settings: Settings) -> int:
    """`main.py health`: exit status 0 when Redis answers and every worker is alive."""
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
