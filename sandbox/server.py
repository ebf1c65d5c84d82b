"""The sandbox as a server: `Sandbox` puts the ledger, the faults, the notifier and the routes
behind one HTTP port, and starts and stops their threads.

Tests start it in-process on port 0 (`Sandbox(port=0).start()`, or `with Sandbox() as sb`)
and read `sb.url`; the SANDBOX service (services/sandbox_service.py) runs one until SIGTERM.

Threads: the HTTP server (one daemon thread per connection), the ledger's expiry timer, and
the notifier's (sandbox/notifier.py). `stop()` closes the port and the open connections, cuts
off deliveries in progress, ends the threads and closes the ledger's journal.

HTTP: HTTP/1.1 with keep-alive; a request body needs Content-Length (no chunked bodies) and
at most MAX_BODY_BYTES; every error, malformed requests included, is a JSON body.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cores.config import SANDBOX_KEY_PREFIX
from cores.logs import kv
from sandbox.faults import FaultSwitches, IdempotencyKeys
from sandbox.ledger import Ledger, Merchant
from sandbox.messages import (
    MSG_INVALID,
    MSG_NO_ROUTE,
    Reply,
    Request,
    SandboxError,
    error_reply,
)
from sandbox.notifier import Notifier
from sandbox.routes import Api
from sandbox.simulator import Simulator
from sandbox.transaction import Transaction, notification_body
from sandbox.validation import parse_notification_urls

log = logging.getLogger(__name__)

#: Request bodies above this are refused with 400 (and read no further than DRAIN_MAX_BYTES).
MAX_BODY_BYTES = 64 * 1024
DRAIN_MAX_BYTES = 1024 * 1024
#: A connection idle (or a body stalled) this long is closed.
CONNECTION_TIMEOUT_S = 15.0
#: Before closing a connection whose request was not read in full, wait this long for the
#: client to close its side.
LINGER_S = 1.0
#: A Host header fit to build URLs from (name or IP, optional port).
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class Sandbox:
    """The local Midtrans sandbox. `start()` serves in background threads; `stop()` ends them.

    `server_key`: the one key accepted; None accepts any key starting "SB-Mid-server-" (each
    transaction is then signed with the key that charged it). `notification_url`: where
    notifications go unless a charge names its own (a comma list is accepted). `faults`: the
    fault switches (names of shared/midtrans.md, with or without the SANDBOX_FAULT_ prefix).
    `clock`: Unix seconds, for transaction times, expiries and the Idempotency-Key memory.
    `seed`: makes the fault draws repeatable. `directory`: where the ledger's journal lives
    (it survives a restart); None keeps the ledger in memory only.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        server_key: str | None = None,
        notification_url: str | None = None,
        faults: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        merchant_id: str = "G000000001",
        *,
        seed: int | None = None,
        merchant_name: str = "DRINK MACHINE",
        merchant_city: str = "JAKARTA",
        directory: Path | str | None = None,
    ) -> None:
        if server_key is not None and not server_key.strip():
            raise ValueError("server_key must not be empty (None accepts any sandbox key)")
        self.host = host
        self._port = port
        self.server_key = server_key
        self.notification_urls = (
            parse_notification_urls(notification_url) if notification_url else []
        )
        self.directory = Path(directory) if directory is not None else None
        self._faults = FaultSwitches(faults, seed)
        self._notifier = Notifier(self._faults)
        merchant = Merchant(merchant_id, merchant_name, merchant_city)
        self._ledger = Ledger(clock, merchant, self._notify)
        self._api = Api(
            self._ledger, self._faults, IdempotencyKeys(clock), server_key, self.notification_urls
        )
        self._simulator = Simulator(self._ledger, self._faults, self._api.qr_image)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = False
        self._stop_requested = threading.Event()
        #: Set once the port is bound and serving.
        self.ready = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after start), else the configured one."""
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        """Base URL of the API and the simulator, e.g. "http://127.0.0.1:3334"."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> Sandbox:
        """Replay the ledger, bind and serve in background daemon threads. Returns self."""
        if self._started:
            raise RuntimeError("a Sandbox starts once")
        self._started = True
        self._ledger.open(self.directory)
        self._server = server = _Server((self.host, self._port), _Handler, self)
        for name, target in (
            # typeshed types poll_interval as float, but serve_forever hands it to
            # selector.select(), where None blocks without polling (see _shutdown_server).
            ("sandbox-http", lambda: server.serve_forever(poll_interval=None)),  # type: ignore[arg-type]
            ("sandbox-expiry", self._ledger.run_expiry_timer),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._notifier.start()
        if self.server_key is None:
            log.warning(
                "sandbox accepts ANY server key starting %s (no MIDTRANS_SERVER_KEY given)",
                SANDBOX_KEY_PREFIX,
                extra=kv(url=self.url),
            )
        log.info(
            "sandbox listening",
            extra=kv(
                url=self.url,
                simulator=self.url + "/simulator",
                faults=self._faults.active(),
                ledger=self.directory or "memory",
            ),
        )
        self.ready.set()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, end the background threads, close the
        ledger. Idempotent."""
        with self._connections_lock:
            if self._stopping:
                return
            self._stopping = True
            connections = list(self._connections)
        self._stop_requested.set()
        if self._server is not None:
            self._shutdown_server(self._server)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._ledger.close()
        self._notifier.stop()
        for thread in self._threads:
            thread.join(timeout=CONNECTION_TIMEOUT_S)
        log.info("sandbox stopped", extra=kv(url=self.url))

    def _shutdown_server(self, server: _Server) -> None:
        """End serve_forever. It blocks in select() with no timeout (no polling), so wake it
        with connections until it has seen the shutdown request."""
        done = threading.Event()

        def shutdown() -> None:
            server.shutdown()
            done.set()

        threading.Thread(target=shutdown, name="sandbox-shutdown", daemon=True).start()
        host = self.url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
        while not done.wait(0.01):
            with contextlib.suppress(OSError):
                socket.create_connection((host, self.port), timeout=1).close()
        server.server_close()

    def request_stop(self) -> None:
        """Make `serve_forever` return (safe to call from a signal handler)."""
        self._stop_requested.set()

    def serve_forever(self) -> None:
        """Start (unless started), block until `request_stop()` or `stop()`, then stop."""
        if not self._started:
            self.start()
        self._stop_requested.wait()
        self.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- faults and notifications ------------------------------------------------------------

    @property
    def faults(self) -> dict[str, float]:
        """A copy of the current fault settings (every name, 0 when off)."""
        return self._faults.snapshot()

    def set_faults(self, **faults: float) -> dict[str, float]:
        """Change some fault settings (ValueError on a bad one; nothing changes then)."""
        return self._faults.update(faults)

    @property
    def notify_retry_delays_s(self) -> tuple[float, ...]:
        """Delays between notification attempts; tests may shorten them."""
        return self._notifier.retry_delays_s

    @notify_retry_delays_s.setter
    def notify_retry_delays_s(self, delays: tuple[float, ...]) -> None:
        self._notifier.retry_delays_s = tuple(delays)

    @property
    def notify_timeout_s(self) -> float:
        """How long one notification POST may take."""
        return self._notifier.timeout_s

    @notify_timeout_s.setter
    def notify_timeout_s(self, seconds: float) -> None:
        self._notifier.timeout_s = seconds

    def _notify(self, txn: Transaction) -> None:
        """The ledger's on_change (its lock held): notify txn's new status."""
        data = json.dumps(notification_body(txn)).encode()
        self._notifier.notify(txn.transaction_id, txn.order_id, txn.status, txn.notify_urls, data)

    # -- the simulator, in code --------------------------------------------------------------

    def pay(self, order_id: str) -> dict[str, Any]:
        """The customer scanned the QR and paid: settlement. SandboxError 404 / 412."""
        return self._ledger.settle(order_id, "settlement", self.url)

    def deny(self, order_id: str) -> dict[str, Any]:
        """The payment was refused: deny. SandboxError 404 / 412."""
        return self._ledger.settle(order_id, "deny", self.url)

    def transactions(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every transaction (the ledger) as status bodies with its true status, QR image URL,
        qr_string and refunds, oldest first; only those with `status` when given."""
        return self._ledger.entries(self.url, status)

    def check_expiries(self) -> None:
        """Expire what is due by the clock now (the timer and every call do it too)."""
        self._ledger.check_expiries()

    # -- HTTP dispatch -----------------------------------------------------------------------

    def handle(self, req: Request) -> Reply:
        """Answer one request read in full."""
        if req.path.startswith("/v2/"):
            return self._api.handle(req)
        if req.path == "/simulator" or req.path.startswith("/simulator/"):
            return self._simulator.handle(req)
        parts = req.path.split("/")
        if len(parts) == 5 and parts[1:3] == ["v4", "qris"] and parts[4] == "qr-code":
            if req.method != "GET":
                return error_reply(SandboxError("405", "Method not allowed"))
            try:
                return self._api.qr_image(ref=unquote(parts[3]))
            except SandboxError as exc:
                return error_reply(exc)
        if req.path == "/" and req.method == "GET":
            return Reply(302, b"", "text/plain", headers={"Location": "/simulator"})
        return error_reply(SandboxError("404", MSG_NO_ROUTE))

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away mid-answer (or stop() closing its connection) is routine.
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MidtransLocalSandbox/1.0"
    timeout = CONNECTION_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sandbox._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, headers too long, unknown method): JSON."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps(
            {"status_code": str(code), "status_message": message or phrase, "id": str(uuid.uuid4())}
        ).encode()
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # An unreadable request line leaves the 0.9 default, which would drop the headers.
            self.request_version = "HTTP/1.0"
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path = split.path or "/"
        try:
            body = self._read_body(path)
            if isinstance(body, Reply):
                reply = body
                if path.startswith("/v2/"):
                    reply = sandbox._api.finish(reply)
            else:
                host = self.headers.get("Host", "")
                base = f"http://{host}" if _HOST.match(host) else sandbox.url
                query = parse_qs(split.query)
                reply = sandbox.handle(Request(self.command, path, query, self.headers, body, base))
        except Exception:
            log.exception("sandbox error", extra=kv(method=self.command, path=path))
            reply = error_reply(SandboxError("500", "Internal sandbox error"))
            reply.close = True
        self._send(reply)

    def _read_body(self, path: str) -> bytes | Reply:
        """The request body, or a 400 reply when it cannot be read as one."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return self._bad("Transfer-Encoding is not supported: send Content-Length", True)
        if length is None:
            # Simulator buttons (and curl -X POST) send no body and may omit the header.
            parts = path.split("/")
            no_body = len(parts) == 4 and parts[1] == "simulator" and parts[2] in ("pay", "deny")
            if self.command == "POST" and not no_body:
                return self._bad("Content-Length is required", True)
            return b""
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            return self._bad("Content-Length is not a number", True)
        if size > MAX_BODY_BYTES:
            if size > DRAIN_MAX_BYTES:
                return self._bad(f"request body is larger than {MAX_BODY_BYTES} bytes", True)
            # Read and drop it, so that the answer is not lost to a reset connection.
            try:
                drained = len(self.rfile.read(size))
            except OSError:
                drained = -1
            return self._bad(f"request body is larger than {MAX_BODY_BYTES} bytes", drained != size)
        try:
            data = self.rfile.read(size)
        except OSError:
            data = b""
        if len(data) != size:
            return self._bad("request body is shorter than its Content-Length", True)
        return data

    @staticmethod
    def _bad(message: str, close: bool) -> Reply:
        reply = error_reply(SandboxError("400", MSG_INVALID, [message]))
        reply.close = close
        return reply

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)
        if reply.close:
            self._linger()

    def _linger(self) -> None:
        """Before closing with request bytes unread, let the client read the answer: closing
        a socket with unread input sends a reset, which may destroy the answer in transit."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            drained = 0
            while drained < DRAIN_MAX_BYTES:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
