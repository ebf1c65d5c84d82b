"""What `main.py` runs once it has parsed its arguments, built the settings and set up
logging: the whole machine (`up`), one process (`--service NAME`), or an operator command
(status, stock, maintenance, health) against the machine's Redis.

Each branch imports only what it runs, so a process does not carry the modules of the
others (the sandbox no Redis client, a one-shot command no supervisor, sandbox or worker).
"""

from __future__ import annotations

import argparse
import sys

from constants.services import Service
from cores.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run what `args` name: the whole machine, one process, or an operator command."""
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
