"""Run fleet mode for real: `python main.py backend` in a private folder on free ports, with
machines registered in its Redis, and `python main.py machine` agents, each with a folder
(VAR_DIR, vend journal) and a kiosk port of its own. Pages talk to the agents as the kiosk
page does (bench.harness.Page); customers pay through the sandbox's simulator API.

`Backend(..., cluster=True)` runs the backend on a Redis Cluster of its own instead
(cores/redis_cluster.py: 3 masters + 3 replicas on free ports under the backend's folder),
started here and passed to `main.py backend` as REDIS_URL=redis+cluster://...: the backend's
supervisor then starts no Redis and restarts no node, so a test or the chaos soak can kill -9
a master, watch its replica take over, and start the old one again (as a replica) itself.
The harness's own client is then services.runtime's cluster client, and the Brokers built on
it wait for a replica on money-moving steps as the backend's do.

Used by the fleet's integration tests and by bench/fleet.py and bench/chaos.py --fleet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

from bench.harness import Simulator
from cores.broker import Broker
from cores.fleet import Fleet
from cores.process import die_with_parent
from cores.redis_cluster import LocalCluster
from cores.redis_process import RedisProcess, free_ports
from services.runtime import cluster_client, load_menu

ROOT = Path(__file__).resolve().parent.parent

#: Quick screens and vends, so that tests and benchmarks spend their time on the system.
FAST = {
    "PAYMENT_DEADLINE_S": "6",
    "RESULT_SCREEN_S": "1",
    "DISPENSE_S": "0.3",
    "MENU_IDLE_S": "60",
    "VEND_TIMEOUT_S": "10",
}


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment less what would point a child at another machine's Redis,
    gateway, sandbox or ports; plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MIDTRANS_", "REDIS_", "SANDBOX_", "WS_", "BACKEND_", "MACHINE_"))
    }
    env.update(extra)
    return env


class Child:
    """One `main.py` process, its output in `folder/<name>.out`."""

    def __init__(self, folder: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.out_path = folder / f"{name}.out"
        self.out = self.out_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), *args],
            cwd=folder,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self, chars: int = 3000) -> str:
        self.out.flush()
        text = self.out_path.read_text(errors="replace")[-chars:]
        logs = Path(self.env["VAR_DIR"]) / "logs"
        for f in sorted(logs.glob("*.log")) if logs.exists() else []:
            text += f"\n--- {f.name}\n" + f.read_text(errors="replace")[-1500:]
        return text

    def kill9(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.out.close()
        return code


class Backend(Child, Simulator):
    """`main.py backend --workers N` on a Redis of its own (started here, so that the test
    can kill and restart the backend while Redis and the agents stay up); with `cluster`, on
    a Redis Cluster of its own (`self.cluster`: 3 masters + 3 replicas)."""

    def __init__(
        self,
        folder: Path,
        workers: int = 1,
        redis_url: str | None = None,
        cluster: bool = False,
        **env: str,
    ):
        folder = Path(folder)
        self.var = folder / "var"
        self.own_redis: RedisProcess | None = None
        self.cluster: LocalCluster | None = None
        if redis_url is None and cluster:
            self.cluster = LocalCluster(folder / "cluster").start()
            redis_url = self.cluster.url
        elif redis_url is None:
            self.own_redis = RedisProcess(folder / "redis", appendonly=True).start()
            redis_url = self.own_redis.url
        self.redis_url = redis_url
        self.ws_port, self.sandbox_port, self.notify_port, self.operator_port = free_ports(4)
        self.workers = workers
        environment = base_env(
            REDIS_URL=redis_url,
            VAR_DIR=str(self.var),
            WS_PORT=str(self.ws_port),
            SANDBOX_PORT=str(self.sandbox_port),
            NOTIFICATION_PORT=str(self.notify_port),
            OPERATOR_PORT=str(self.operator_port),
            **{**FAST, **env},
        )
        self.url = f"ws://127.0.0.1:{self.ws_port}/agent"
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        self.http = requests.Session()
        self.redis: redis.Redis
        if self.cluster is not None or redis_url.startswith(("redis+cluster:", "rediss+cluster:")):
            self.redis = cluster_client(
                redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
            )
        else:
            self.redis = redis.Redis.from_url(
                redis_url, decode_responses=True, socket_timeout=10, retry_on_timeout=True
            )
        self.menu = load_menu(ROOT / "menu.json")
        try:
            super().__init__(folder, "backend", ["backend", "--workers", str(workers)], environment)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Stop the backend (SIGTERM) and start it again on the same Redis and ports."""
        super().stop()
        Child.__init__(
            self, self.folder, "backend", ["backend", "--workers", str(self.workers)], self.env
        )
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 40.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"main.py backend exited: {self.log()}")
            try:
                gateway = self.http.get(f"http://127.0.0.1:{self.ws_port}/healthz", timeout=1)
                sandbox = self.http.get(f"{self.sandbox}/simulator/transactions", timeout=1)
                console = self.http.get(f"http://127.0.0.1:{self.operator_port}/login", timeout=1)
                if gateway.ok and sandbox.ok and console.ok and self._workers_up():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"backend not ready: {self.log()}")

    def _workers_up(self) -> bool:
        names = ["order", "order_created", "dispense", "screen"]
        if self.workers > 1:
            names = [f"{n}-{i}" for n in names for i in range(1, self.workers + 1)]
        return all(self.pid(n) for n in (*names, "notification", "gateway"))

    def pid(self, name: str) -> int | None:
        try:
            return int((self.var / "pids" / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def kill_child(self, name: str) -> int | None:
        """kill -9 one of the backend's processes (the supervisor restarts it)."""
        pid = self.pid(name)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return None
        return pid

    def register(self, machine_id: str) -> str:
        """`fleet add` in-process: the machine's token; its menu and IDLE state loaded."""
        token = Fleet(self.redis).add(machine_id, "cli:bench")
        self.broker(machine_id).ensure_ready(self.menu)
        return token

    def broker(self, machine_id: str) -> Broker:
        return Broker(self.redis, machine_id)

    def redis_servers(self) -> dict[str, int]:
        """The pid of each redis-server of this backend's own, by name: `redis-server`, or
        `redis PORT` for each live node of its cluster."""
        if self.own_redis is not None and self.own_redis.process is not None:
            return {"redis-server": self.own_redis.process.pid}
        if self.cluster is None:
            return {}
        return {
            f"redis {port}": node.process.pid
            for port, node in self.cluster.nodes.items()
            if node.process is not None and node.alive()
        }

    def masters_info(self, section: str) -> list[dict]:
        """INFO `section` of the Redis (one), or of each master of the cluster: the commands a
        purchase costs are counted where they are served (a replica replays them)."""
        if self.cluster is None:
            return [self.redis.info(section)]
        infos = []
        for port in self.cluster.masters():
            client = self.cluster.client(port)
            try:
                infos.append(client.info(section))
            finally:
                client.close()
        return infos

    def restart_nodes(self) -> list[int]:
        """Start again every node of the backend's cluster that is not running (on its port,
        from its folder: it comes back as a replica of the one that took its place)."""
        assert self.cluster is not None
        dead = self.cluster.dead()
        for port in dead:
            self.cluster.restart(port)
        return dead

    def stop(self) -> int:
        code = super().stop() if hasattr(self, "process") else 0
        self.http.close()
        self.redis.close()
        if self.own_redis is not None:
            self.own_redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        return code


class Agent(Child):
    """`main.py machine` for `machine_id`, its kiosk on a free port, its journal under
    `folder`."""

    def __init__(
        self, folder: Path, machine_id: str, token: str, backend_url: str, **env: str
    ) -> None:
        folder = Path(folder)
        self.machine_id = machine_id
        (self.ws_port,) = free_ports(1)
        self.var = folder / "var"
        environment = base_env(
            VENDING_MACHINE_ID=machine_id,
            MACHINE_TOKEN=token,
            BACKEND_URL=backend_url,
            VAR_DIR=str(self.var),
            WS_PORT=str(self.ws_port),
            **{**FAST, **env},
        )
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}/ws"
        super().__init__(folder, "agent", ["machine"], environment)
        self.wait_ready()

    def restart(self) -> None:
        super().stop()
        Child.__init__(self, self.folder, "agent", ["machine"], self.env)
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"main.py machine exited: {self.log()}")
            try:
                if requests.get(f"http://127.0.0.1:{self.ws_port}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agent not ready: {self.log()}")

    def journal(self) -> list[dict]:
        import json

        path = self.var / "vends.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FleetMachine(Simulator):
    """One machine of a fleet, with what bench/chaos.py uses of `bench.harness.Launched`:
    `broker` (the machine's keys on the backend's Redis), `var` (its agent's VAR_DIR: the vend
    journal), `ws_url` (its agent's kiosk), the backend sandbox's `pay`, `deny`, `faults`,
    `ledger` (this machine's orders only: their ids start with `<machine_id>-`) and
    `ledger_of`, and `kill9(name)` of its agent, of a backend process or of Redis; on a
    cluster backend, of the master that serves this machine's keys ("master") or of its
    replica ("replica").

    Nothing supervises an agent or the backend's Redis here: after `kill9("agent")`,
    `kill9("redis")`, `kill9("master")` or `kill9("replica")` the caller brings it back with
    `restart(name)`; the backend's supervisor restarts its own processes."""

    def __init__(self, backend: Backend, agent: Agent) -> None:
        self.backend = backend
        self.agent = agent
        self.machine_id = agent.machine_id
        self.broker = backend.broker(agent.machine_id)
        self.var = agent.var
        self.ws_url = agent.ws_url
        self.sandbox = backend.sandbox
        self.http = requests.Session()  # one per machine: each is driven from its own thread

    def ledger(self) -> list[dict]:
        """The sandbox's transactions of this machine's orders."""
        return [t for t in super().ledger() if owner_of(t["order_id"], [self.machine_id])]

    def kill9(self, name: str) -> int | None:
        """kill -9 this machine's agent ("agent"), the backend's Redis ("redis"), on a cluster
        the master serving this machine's keys ("master": its replica takes over) or that
        master's replica ("replica"), or one of the backend's processes (its pid file's name:
        "gateway", "order", "dispense-2", ...). The pid killed, or None when there was
        nothing to kill."""
        if name == "agent":
            pid = self.agent.process.pid if self.agent.alive() else None
            self.agent.kill9()
            return pid
        if name in ("master", "replica"):
            return self._kill_node(name)
        if name == "redis":
            own = self.backend.own_redis
            if own is None or own.process is None or not own.alive():
                return None
            pid = own.process.pid
            own.process.kill()
            own.process.wait()
            return pid
        return self.backend.kill_child(name)

    def _kill_node(self, role: str) -> int | None:
        cluster = self.backend.cluster
        if cluster is None:
            return None
        master = cluster.master_of(self.broker.state_key)
        port = master if role == "master" else cluster.replica_of(master)
        if port is None or not cluster.alive(port):
            return None
        process = cluster.nodes[port].process
        assert process is not None
        cluster.kill9(port)
        return process.pid

    def restart(self, name: str) -> None:
        """Start the agent ("agent") or the backend's Redis ("redis", same port and data
        folder: AOF brings the data back; "master" or "replica": every dead node of the
        cluster, each a replica once it is back) again after `kill9`. Call it from a thread
        that lives as long as the fleet: a child gets SIGTERM when the thread that started it
        ends (die_with_parent's PR_SET_PDEATHSIG is the starting thread's)."""
        if name == "agent":
            self.agent.restart()
        elif name in ("master", "replica"):
            self.backend.restart_nodes()
        elif name == "redis":
            assert self.backend.own_redis is not None
            self.backend.own_redis.start()
        else:
            raise ValueError(f"{name} is restarted by the backend's supervisor")

    def close(self) -> None:
        self.http.close()


def owner_of(order_id: str, machine_ids: list[str]) -> str | None:
    """The machine whose order `order_id` is (order ids start with `<machine_id>-`), or None.
    The longest id wins, so that `vm-1` never claims an order of `vm-1-b`."""
    owners = [m for m in machine_ids if order_id.startswith(f"{m}-")]
    return max(owners, key=len) if owners else None


class LaunchedFleet:
    """A backend with `workers` processes per shared worker service (on a Redis Cluster of its
    own with `cluster`) and one agent per id in `machine_ids`, each registered (token, menu,
    IDLE); `machines` are their FleetMachines. `env` goes to the backend and to every agent."""

    def __init__(
        self,
        folder: Path,
        machine_ids: list[str],
        workers: int = 1,
        cluster: bool = False,
        **env: str,
    ):
        self.folder = Path(folder)
        self.backend = Backend(self.folder / "backend", workers=workers, cluster=cluster, **env)
        self.machines: list[FleetMachine] = []
        try:
            for machine_id in machine_ids:
                token = self.backend.register(machine_id)
                agent = Agent(self.folder / machine_id, machine_id, token, self.backend.url, **env)
                self.machines.append(FleetMachine(self.backend, agent))
        except BaseException:
            self.stop()
            raise

    def worker_names(self) -> list[str]:
        """The pid-file names of the backend's shared worker processes."""
        services = ("order", "order_created", "dispense", "screen")
        if self.backend.workers == 1:
            return list(services)
        return [f"{s}-{n}" for s in services for n in range(1, self.backend.workers + 1)]

    def stop(self) -> dict[str, int]:
        """Stop every agent, then the backend (and its Redis): each one's exit code."""
        codes: dict[str, int] = {}
        for machine in self.machines:
            codes[f"agent {machine.machine_id}"] = machine.agent.stop()
            machine.close()
        codes["backend"] = self.backend.stop()
        return codes
