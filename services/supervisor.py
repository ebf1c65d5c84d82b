"""`python main.py up`: one machine on this computer, its processes kept alive; and
`python main.py backend`: fleet mode's shared services for every registered machine.

Starts Redis (REDIS_URL, or a private redis-server with AOF under VAR_DIR), the local
Midtrans sandbox when MIDTRANS_SERVER_KEY is unset, the websocket server and the workers.
Restarts any child that dies (with a growing pause if it keeps dying); stops them all on
Ctrl-C / SIGTERM.

The backend runs the same way with other children: the agents' gateway instead of the
websocket server, `--workers N` processes of each shared worker service, the notification
receiver and the console, each a `main.py --service NAME --fleet` process, so that `ps`
shows what runs and any of them can be run on another host against the same Redis.
`backend --cluster` without REDIS_URL or REDIS_CLUSTER_NODES runs a local Redis Cluster of
3 masters + 3 replicas under VAR_DIR/cluster (cores/redis_cluster.py) instead of one
redis-server, writes its redis+cluster:// URL to VAR_DIR/redis.url, and starts again any node
that dies, as `up` does its redis-server.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from constants.services import FLEET_WORKERS, WORKERS, Service
from constants.tunables import HEALTHY_AFTER_S, RESTART_BACKOFF_S, WATCH_INTERVAL_S
from cores import logs
from cores.alert_store import mark_redis_restart
from cores.broker import Broker
from cores.config import Settings, is_cluster_url
from cores.logs import kv
from cores.process import InstanceLock, die_with_parent
from cores.redis_cluster import LocalCluster
from cores.redis_process import RedisProcess, free_port
from services.runtime import broker_for, shown_redis_url

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restarts: int = 0
    restart_at: float | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)


class Supervisor:
    """`up` (one machine); with `fleet_workers`, `backend` (N processes per shared worker);
    with `cluster` too, the backend on a local Redis Cluster."""

    def __init__(
        self,
        settings: Settings,
        python: str = sys.executable,
        fleet_workers: int | None = None,
        cluster: bool = False,
    ) -> None:
        self.settings = settings
        self.python = python
        self.fleet_workers = fleet_workers
        self.use_cluster = cluster
        self.stopping = threading.Event()
        self.redis: RedisProcess | None = None
        self.cluster: LocalCluster | None = None
        #: Port of a dead cluster node -> (restarts failed in a row, next try at).
        self.node_retry: dict[int, tuple[int, float]] = {}
        self.children: list[Child] = []
        self.env: dict[str, str] = {}
        self.redis_failures = 0
        self.redis_retry_at = 0.0
        self.lock: InstanceLock | None = None  # held for the life of the process

    # --- set-up -----------------------------------------------------------------------------

    def start_redis(self) -> str:
        if self.settings.redis_url:
            return self.settings.redis_url
        if self.settings.redis_cluster is not None:  # REDIS_CLUSTER_NODES
            return self.settings.redis_cluster.url
        # Never a port promised to the machine's own servers, which bind it a moment later.
        taken = frozenset(
            {
                self.settings.ws_port,
                self.settings.sandbox_port,
                self.settings.notification_port,
                self.settings.operator_port,
            }
        )
        if self.use_cluster:
            return self.start_cluster(taken)
        data_dir = self.settings.var_dir / "redis"
        port = _previous_port(self.settings.redis_url_file)
        if port is None or port in taken:
            port = free_port(exclude=taken)
        self.redis = RedisProcess(data_dir, port=port, appendonly=True)
        try:
            self.redis.start()
        except Exception:
            self.redis = RedisProcess(
                data_dir, port=free_port(exclude=taken), appendonly=True
            ).start()
        self.settings.redis_url_file.parent.mkdir(parents=True, exist_ok=True)
        self.settings.redis_url_file.write_text(self.redis.url + "\n", encoding="utf-8")
        log.info(
            "redis started", extra=kv(url=self.redis.url, binary=self.redis.binary, data=data_dir)
        )
        return self.redis.url

    def start_cluster(self, taken: frozenset[int]) -> str:
        """The local cluster under VAR_DIR/cluster: its nodes of the last run on their ports,
        or a new one on free ports."""
        data_dir = self.settings.var_dir / "cluster"
        self.cluster = LocalCluster(data_dir, exclude=taken).start()
        self.settings.redis_url_file.parent.mkdir(parents=True, exist_ok=True)
        self.settings.redis_url_file.write_text(self.cluster.url + "\n", encoding="utf-8")
        log.info(
            "redis cluster started",
            extra=kv(url=self.cluster.url, masters=self.cluster.masters(), data=data_dir),
        )
        return self.cluster.url

    def prepare(self, redis_url: str) -> None:
        """Load the menu and put a new machine in IDLE before any page can connect (in fleet
        mode, `fleet add` prepares each machine)."""
        if self.fleet_workers is not None:
            return
        client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
        try:
            broker_for(self.settings.replace(redis_url=redis_url), client)
        finally:
            client.close()

    def plan(self, redis_url: str) -> None:
        env = dict(os.environ)
        env["REDIS_URL"] = redis_url
        env.pop("REDIS_CLUSTER_NODES", None)  # named by REDIS_URL now (one of the two only)
        env["VAR_DIR"] = str(self.settings.var_dir)
        env["PYTHONUNBUFFERED"] = "1"
        if not self.settings.sandbox_notification_url:
            env["SANDBOX_NOTIFICATION_URL"] = self.settings.notification_url
        self.env = env
        main = str(ROOT / "main.py")
        # Children log to stderr; the supervisor keeps it, tracebacks of a crash included,
        # in VAR_DIR/logs/<name>.log.
        quiet = "--no-log-file"
        if self.settings.uses_local_sandbox:
            self.children.append(
                Child("SANDBOX", [self.python, main, "--service", "SANDBOX", quiet])
            )
        if self.fleet_workers is not None:
            self.children.extend(backend_children(self.python, main, self.fleet_workers))
            return
        self.children.append(
            Child("WEBSOCKET", [self.python, str(ROOT / "websocket_server.py"), quiet])
        )
        for service in (*WORKERS, Service.NOTIFICATION, Service.OPERATOR):
            self.children.append(
                Child(str(service), [self.python, main, "--service", service, quiet])
            )

    def spawn(self, child: Child) -> None:
        """Start a child; its output (tracebacks of a crash included) goes to the size-capped
        VAR_DIR/logs/<name>.log, and to the journal too when systemd started us."""
        child.log_path = self.settings.var_dir / "logs" / f"{child.name.lower()}.log"
        child.process = subprocess.Popen(
            child.argv,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        assert child.process.stdout is not None
        echo = sys.stderr.buffer if logs.under_journald() else None
        logs.follow_output(child.process.stdout, child.log_path, echo)
        child.started_at = time.monotonic()
        child.restart_at = None
        pid_dir = self.settings.var_dir / "pids"
        pid_dir.mkdir(parents=True, exist_ok=True)
        (pid_dir / f"{child.name.lower()}.pid").write_text(f"{child.process.pid}\n")
        log.info("started", extra=kv(child=child.name, pid=child.process.pid))

    # --- running ----------------------------------------------------------------------------

    def run(self) -> int:
        command = "up" if self.fleet_workers is None else "backend"
        if command == "up" and refuses_real_money_without_drinks(self.settings):
            print(
                "configuration error: MIDTRANS_IS_PRODUCTION=true with DISPENSER=simulated: "
                "customers would pay for drinks that never drop; set DISPENSER=serial or gpio",
                file=sys.stderr,
            )
            return 2
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        self.lock = lock = InstanceLock(self.settings.var_dir / f"{command}.lock")
        if not lock.acquire():
            print(
                f"another `main.py {command}` (pid {lock.holder()}) runs with "
                f"VAR_DIR={self.settings.var_dir}; stop it first",
                file=sys.stderr,
            )
            return 1
        redis_url = self.start_redis()
        self.prepare(redis_url)
        self.plan(redis_url)
        if self.settings.uses_local_sandbox:
            banner = (
                "MIDTRANS_SERVER_KEY is unset: payments go to the LOCAL SANDBOX at "
                f"{self.settings.sandbox_url} (no real money). Pay from the simulator."
            )
            print("!" * 78 + "\n" + banner + "\n" + "!" * 78, file=sys.stderr, flush=True)
        for child in self.children:
            self.spawn(child)
        for line in self.banner(redis_url):
            print(line, flush=True)
        while not self.stopping.wait(WATCH_INTERVAL_S):
            self.tend()
        self.shutdown()
        return 0

    def banner(self, redis_url: str) -> list[str]:
        """The URLs an operator needs, one per line, `Name: URL`."""
        settings = self.settings
        if self.fleet_workers is None:
            rows = [("Kiosk", settings.kiosk_url), ("Console", settings.console_url)]
        else:
            rows = [
                ("Gateway", gateway_url(settings)),
                ("Console", settings.console_url),
                ("Notifications", settings.notification_url),
            ]
        if settings.uses_local_sandbox:
            rows.append(("Simulator", f"{settings.sandbox_url}/simulator"))
        rows += [("Redis", shown_redis_url(redis_url)), ("Logs", str(settings.var_dir / "logs"))]
        width = max(len(name) for name, _ in rows) + 2
        return [f"{name + ':':<{width}}{value}" for name, value in rows]

    def tend(self) -> None:
        now = time.monotonic()
        if self.redis is not None and not self.redis.alive() and now >= self.redis_retry_at:
            log.warning("redis died, restarting", extra=kv(url=self.redis.url))
            try:
                self.redis.start()
                self.redis_failures = 0
                self.mark_redis_restart()
            except Exception:
                pause = RESTART_BACKOFF_S[min(self.redis_failures, len(RESTART_BACKOFF_S) - 1)]
                self.redis_failures += 1
                self.redis_retry_at = time.monotonic() + pause
                log.exception("redis restart failed", extra=kv(retry_in_s=pause))
        if self.cluster is not None:
            self.tend_cluster(now)
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.restart_at is None:
                code = child.process.returncode
                lived = now - child.started_at
                child.quick_deaths = 0 if lived > HEALTHY_AFTER_S else child.quick_deaths + 1
                pause = RESTART_BACKOFF_S[min(child.quick_deaths, len(RESTART_BACKOFF_S) - 1)]
                child.restart_at = now + pause
                log.warning("child died", extra=kv(child=child.name, code=code, restart_in_s=pause))
            elif now >= child.restart_at:
                child.restarts += 1
                self.spawn(child)

    def tend_cluster(self, now: float) -> None:
        """Start again any node of the local cluster that died. Its replica has taken over
        its slots meanwhile (or will); it comes back as that replica's replica."""
        assert self.cluster is not None
        for port in self.cluster.dead():
            failures, retry_at = self.node_retry.get(port, (0, 0.0))
            if now < retry_at:
                continue
            log.warning("redis cluster node died, restarting", extra=kv(port=port))
            try:
                self.cluster.restart(port)
                self.node_retry.pop(port, None)
            except Exception:
                pause = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                self.node_retry[port] = (failures + 1, time.monotonic() + pause)
                log.exception("redis cluster node restart failed", extra=kv(port=port))

    def mark_redis_restart(self) -> None:
        """Leave the marker the alert watcher raises `redis_restarted` on (cores/alerts.py)."""
        assert self.redis is not None  # only a redis-server of our own is restarted
        if self.fleet_workers is not None:
            return  # the marker is one machine's; fleet mode has no alert watcher per machine yet
        client = redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=5)
        try:
            mark_redis_restart(Broker(client, self.settings.machine_id))
        except redis.RedisError as exc:
            log.warning("redis restart not marked", extra=kv(error=str(exc)))
        finally:
            client.close()

    def request_stop(self, *_: object) -> None:
        self.stopping.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        log.info("stopping")
        for child in reversed(self.children):
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("killing", extra=kv(child=child.name))
                child.process.kill()
                child.process.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        log.info("stopped")


def _previous_port(url_file: Path) -> int | None:
    """Reuse the port of the last run so a URL written earlier stays right."""
    try:
        if is_cluster_url(url_file.read_text(encoding="utf-8")):
            return None  # the last run's was a cluster's (`backend --cluster`)
        return int(url_file.read_text(encoding="utf-8").strip().rsplit(":", 1)[1].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def run(settings: Settings) -> int:
    supervisor = Supervisor(settings)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


def refuses_real_money_without_drinks(settings: Settings) -> bool:
    """A whole machine on Midtrans production with the simulated dispenser: it would take
    real payments and drop nothing (the backend has no dispenser: it is the agents')."""
    return settings.midtrans_is_production and settings.dispenser == "simulated"


def backend_children(python: str, main: str, workers: int) -> list[Child]:
    """The backend's processes: the agents' gateway, `workers` processes of each shared worker
    service (named ORDER-1, ORDER-2, ... when more than one), the notification receiver and
    the console, each `main.py --service NAME [--fleet]`."""
    quiet = "--no-log-file"
    children = [Child("GATEWAY", [python, main, "--service", Service.GATEWAY, quiet])]
    for service in FLEET_WORKERS:
        for n in range(1, workers + 1):
            name = str(service) if workers == 1 else f"{service}-{n}"
            children.append(Child(name, [python, main, "--service", service, "--fleet", quiet]))
    for service in (Service.NOTIFICATION, Service.OPERATOR):
        children.append(Child(str(service), [python, main, "--service", service, "--fleet", quiet]))
    return children


def gateway_url(settings: Settings) -> str:
    """The BACKEND_URL agents use when they reach the gateway directly (behind a TLS proxy,
    they use the proxy's wss:// URL instead)."""
    host = f"[{settings.ws_host}]" if ":" in settings.ws_host else settings.ws_host
    return f"ws://{host}:{settings.ws_port}/agent"


def run_backend(settings: Settings, workers: int = 1, cluster: bool = False) -> int:
    """`python main.py backend [--workers N] [--cluster]`: fleet mode's shared services,
    supervised as `up` supervises one machine's; `cluster`: on a local Redis Cluster when
    REDIS_URL and REDIS_CLUSTER_NODES are unset."""
    supervisor = Supervisor(settings, fleet_workers=workers, cluster=cluster)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()
