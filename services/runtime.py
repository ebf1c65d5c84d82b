"""How a process of the machine finds its Redis and starts a worker by name.

Redis is one server (redis.Redis) or a Redis Cluster (services/cluster_client.py's
ClusterClient, a redis.cluster.RedisCluster), as the settings say (cores/config.py:
REDIS_URL=redis+cluster://..., REDIS_CLUSTER_NODES, or the URL in VAR_DIR/redis.url). The rest
of the code is written against redis.Redis and runs on both: every multi-key command, Lua
script and MULTI stays in one hash slot (constants/keys.py). A cluster command that meets a
failover (connection refused, MOVED, ASK, TRYAGAIN, CLUSTERDOWN) is retried with backoff and
jitter while the cluster's map is refreshed, for about as long as a replica takes to be
promoted (CLUSTER_RETRIES).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import requests

from constants.services import Service
from constants.tunables import BLOCKING_SOCKET_TIMEOUT_S, COMMAND_SOCKET_TIMEOUT_S
from cores.broker import Broker
from cores.config import ConfigError, Settings, is_cluster_url, parse_cluster_url
from cores.logs import kv
from cores.process import InstanceLock
from cores.work import WorkHints
from services.worker import Worker

log = logging.getLogger(__name__)


#: A cluster command that meets a failover is retried this many times, after a pause of
#: EqualJitterBackoff(base, cap) each: about 14 s in all, over a replica's promotion
#: (cluster-node-timeout 2 s, then an election: cores/redis_cluster.py).
CLUSTER_RETRIES = 20
CLUSTER_RETRY_BASE_S = 0.1
CLUSTER_RETRY_CAP_S = 1.0


def redis_url(settings: Settings) -> str:
    """REDIS_URL; else REDIS_CLUSTER_NODES as a redis+cluster:// URL; else the URL that
    `main.py up` (or `backend`) wrote to VAR_DIR/redis.url."""
    if settings.redis_url:
        return settings.redis_url
    cluster = settings.redis_cluster
    if cluster is not None:
        return cluster.url
    file = settings.redis_url_file
    try:
        url = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"REDIS_URL is unset and {file} does not exist: set REDIS_URL, "
            "or start the machine with `python main.py up`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"REDIS_URL is unset and {file} cannot be read: {exc}") from None
    if is_cluster_url(url):
        try:
            parse_cluster_url(url)
        except ValueError as exc:
            raise ConfigError(f"{file} is invalid: {exc}") from None
    elif not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"{file} is invalid: expected a redis://, rediss://, unix:// or redis+cluster:// URL"
        )
    return url


def shown_redis_url(url: str) -> str:
    """A Redis URL without its password, for a message."""
    if is_cluster_url(url):
        try:
            cluster = parse_cluster_url(url)
        except ValueError:
            return url.split("://", 1)[0] + "://?"
        if cluster.password is None:
            return cluster.url
        scheme, _, rest = dataclasses.replace(cluster, username=None, password=None).url.partition(
            "://"
        )
        return f"{scheme}://{cluster.username or ''}:***@{rest}"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=f"{user}{host}{port}").geturl()


def redis_client(
    settings: Settings, name: str | None = None, *, blocking: bool = False
) -> redis.Redis:
    """A client named after its process in CLIENT LIST (`bench/idle.py` counts commands by
    name). `blocking`: for long blocking reads, its socket timeout outlasts the longest BLOCK
    (shared/TESTING.md); otherwise short, so that a Redis that hangs fails a command quickly.

    A ClusterClient (services/cluster_client.py) when the settings (or VAR_DIR/redis.url)
    name a Redis Cluster, typed as redis.Redis: the modules that take a client need not know
    which they were given."""
    url = redis_url(settings)
    options: dict = {
        "decode_responses": True,
        "socket_timeout": BLOCKING_SOCKET_TIMEOUT_S if blocking else COMMAND_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": 5,
        "health_check_interval": 0 if blocking else 30,
        "client_name": name,
    }
    if is_cluster_url(url):
        return cluster_client(url, **options)
    return redis.Redis.from_url(url, **options)


def cluster_client(url: str, **options: Any) -> redis.Redis:
    """The cluster client of a redis+cluster:// URL: its nodes are the startup nodes (any
    live one is enough), with the retry of CLUSTER_RETRIES. Imported here only: one Redis
    needs no cluster client, and redis-py has one with transactions from 6.1 on."""
    try:
        from services.cluster_client import ClusterClient
    except ImportError as exc:
        raise ConfigError(
            f"a Redis Cluster needs redis-py 6.1 or newer (installed: {redis.__version__}): {exc}"
        ) from None
    from redis.backoff import EqualJitterBackoff
    from redis.cluster import ClusterNode
    from redis.retry import Retry

    address = parse_cluster_url(url)
    if address.tls:
        options["ssl"] = True
    if address.username is not None:
        options["username"] = address.username
    if address.password is not None:
        options["password"] = address.password
    client = ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        retry=Retry(
            EqualJitterBackoff(cap=CLUSTER_RETRY_CAP_S, base=CLUSTER_RETRY_BASE_S),
            CLUSTER_RETRIES,
        ),
        **options,
    )
    # Typed as redis.Redis: it answers every command this code sends one (one slot each).
    return cast(redis.Redis, client)


def load_menu(path: Path) -> list[dict]:
    try:
        drinks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"MENU_FILE {path} is unreadable: {exc}") from None
    if not isinstance(drinks, list) or not all(
        isinstance(d, dict) and {"id", "name", "icon", "price"} <= d.keys() for d in drinks
    ):
        raise ConfigError(f"MENU_FILE {path}: expected a list of drinks with id, name, icon, price")
    return drinks


def broker_for(
    settings: Settings, client: redis.Redis | None = None, name: str | None = None
) -> Broker:
    if client is None:
        client = redis_client(settings, name)
        blocking = redis_client(settings, name, blocking=True)
    else:
        blocking = client
    broker = Broker(client, settings.machine_id, blocking=blocking)
    broker.ensure_ready(load_menu(settings.menu_file))
    return broker


def run_worker(service: Service, settings: Settings) -> None:
    """`main.py --service NAME` for the Redis workers."""
    from services import dispense_service, order_created_service, order_service, screen_service

    builders: dict[Service, Callable[[Settings, Broker], Worker]] = {
        Service.ORDER: order_service.build,
        Service.ORDER_CREATED: order_created_service.build,
        Service.DISPENSE: dispense_service.build,
        Service.SCREEN: screen_service.build,
    }
    worker = builders[service](settings, broker_for(settings, name=service.lower()))
    worker.install_signal_handlers()
    lock = hold_instance_lock(service, settings, worker.stopping)
    if lock is not None:
        worker.run()
        lock.release()


def hold_instance_lock(service: Service, settings: Settings, stopping) -> InstanceLock | None:
    """One process per service and VAR_DIR: a second one waits until the first is gone
    (two DISPENSE workers would each think the other's vend was interrupted)."""
    lock = InstanceLock(settings.var_dir / "locks" / f"{service.lower()}.lock")
    waiting = False
    while not lock.acquire():
        if not waiting:
            log.warning(
                "another instance runs; waiting for it to stop",
                extra=kv(service=service, pid=lock.holder()),
            )
            waiting = True
        if stopping.wait(1.0):
            return None
    return lock


def fleet_worker_factory(
    service: Service, settings: Settings, session: requests.Session
) -> Callable[[Broker], Worker]:
    """`make_worker` of a shared worker service (services/shard_runner.py): the service's
    one-machine worker for a machine's Broker, with that machine's settings (its id goes into
    the charge's metadata), the process's one HTTP session, and in DISPENSE the remote
    dispenser (the machine's agent vends)."""
    from services import dispense_service, order_created_service, order_service, screen_service

    def machine_settings(broker: Broker) -> Settings:
        return dataclasses.replace(settings, machine_id=broker.machine_id)

    builders: dict[Service, Callable[[Broker], Worker]] = {
        Service.ORDER: lambda b: order_service.build(machine_settings(b), b, session),
        Service.ORDER_CREATED: lambda b: order_created_service.build(
            machine_settings(b), b, session
        ),
        Service.DISPENSE: lambda b: dispense_service.build(
            machine_settings(b), b, session, remote=True
        ),
        Service.SCREEN: lambda b: screen_service.build(machine_settings(b), b),
    }
    return builders[service]


def run_fleet_worker(service: Service, settings: Settings) -> None:
    """`main.py --service NAME --fleet`: one process of a shared worker service. Any number
    of them run at once (no InstanceLock): they share the work shards out by their leases."""
    from services.shard_runner import ShardRunner

    name = f"{service.lower()}-fleet"
    client = redis_client(settings, name)
    session = requests.Session()
    runner = ShardRunner(
        service,
        client,
        redis_client(settings, name, blocking=True),
        fleet_worker_factory(service, settings, session),
        hints=WorkHints(client),
    )
    runner.install_signal_handlers()
    try:
        runner.run()
    finally:
        session.close()
