"""`main.py --service OPERATOR`: the operator's web console (shared/DESIGN.md, "Operator console").

A Starlette app under uvicorn on OPERATOR_HOST:OPERATOR_PORT, Jinja2 templates (autoescaped:
a drink's name is text everywhere) and static files from console/, Chart.js vendored there.

    /                       -> /machines when logged in, else /login
    /login  /logout         the log-in form (backs off, cores/logins.py) and log-out
    /machines               every machine this console serves: VENDING_MACHINE_ID under `up`,
                            every registered machine in fleet mode (`--fleet`, FleetMachines)
    /machines/{id}/...      the pages of one machine (services/console_pages.py,
                            services/console_sales.py)
    /metrics                Prometheus text (services/metrics_service.py)
    /static/...             console/static

Sessions are signed cookies (Starlette's SessionMiddleware: itsdangerous, HttpOnly,
SameSite=Strict) that end CONSOLE_SESSION_S after the log-in. Each session holds a random CSRF
token; every POST must carry it in the `csrf` field (compared in constant time), or it is
refused with 403 and changes nothing. The signing secret is CONSOLE_SECRET, else one generated
once into VAR_DIR/console_secret (0600); it never leaves the process.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import anyio
import anyio.to_thread
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from constants import keys
from constants.console import CONSOLE_SECRET_MIN_CHARS, PASSWORD_CHECKS_AT_ONCE, SESSION_COOKIE
from cores import catalog
from cores.accounts import Accounts
from cores.broker import Broker
from cores.config import Settings
from cores.fleet import Fleet
from cores.logins import LoginBackoff
from cores.logs import kv
from cores.midtrans import MidtransClient
from cores.work import WorkHints
from services.metrics_service import metrics_endpoint

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_DIR = ROOT / "console"

Handler = Callable[..., Awaitable[Response]]
RefusedHandler = Callable[[Request, "Refused"], Awaitable[Response]]


class Refused(Exception):
    """An operator's input or action that is not allowed; nothing was changed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Console:
    """What every route needs: settings, the machines' brokers, templates, the clock."""

    settings: Settings
    brokers: Mapping[str, Broker]
    templates: Jinja2Templates
    backoff: LoginBackoff
    clock: Callable[[], float] = time.time
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def redis(self) -> Any:
        """The console's own Redis (accounts, log-in counters)."""
        return self.backoff.redis

    @property
    def timezone(self) -> ZoneInfo:
        """The machine's time zone (TIMEZONE): dates are shown, and days counted, in it."""
        return self.settings.tz

    async def check_password(self, verify: Callable[[str, str], bool], name: str, pw: str) -> bool:
        """`verify` in a worker thread, at most PASSWORD_CHECKS_AT_ONCE at a time: each argon2id
        check takes its memory (64 MiB), and log-ins need no log-in to be sent."""
        limiter = self.extras.get("password_checks")
        if limiter is None:
            limiter = self.extras["password_checks"] = anyio.CapacityLimiter(
                PASSWORD_CHECKS_AT_ONCE
            )
        return await anyio.to_thread.run_sync(verify, name, pw, limiter=limiter)

    def today(self) -> str:
        """Today's date (YYYY-MM-DD) in the machine's time zone."""
        return datetime.fromtimestamp(self.clock(), self.timezone).date().isoformat()

    def broker(self, machine_id: str) -> Broker:
        try:
            return self.brokers[machine_id]
        except KeyError:
            raise HTTPException(404, f"no machine {machine_id!r}") from None

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        session = request.session
        context.setdefault("error", None)
        context.setdefault("machine_id", request.path_params.get("machine_id"))
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "user": session.get("user"),
                "csrf": session.get("csrf", ""),
                "notice": session.pop("notice", None),
                "machines": list(self.brokers),
                **context,
            },
            status_code=status,
        )


def console_of(request: Request) -> Console:
    return request.app.state.console


# --- sessions and CSRF ----------------------------------------------------------------------


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def logged_in(request: Request) -> str | None:
    """The operator of a live session; an expired session is cleared (CSRF token kept)."""
    session = request.session
    user, since = session.get("user"), session.get("since")
    if not user or not isinstance(since, int | float):
        return None
    if not session_alive(console_of(request), user, since):
        session.pop("user", None)
        session.pop("since", None)
        return None
    return user


def session_alive(console: Console, user: str, since: float) -> bool:
    """Is the session of `user`, logged in at `since`, still on? Not once CONSOLE_SESSION_S
    has passed, nor once the account was removed: its sessions end with it."""
    if console.clock() - since > console.settings.console_session_s:
        return False
    return bool(Accounts(console.redis).exists(user))


async def check_csrf(request: Request) -> dict[str, str]:
    """The POSTed form, once its CSRF token matched the session's; else 403."""
    form = await request.form()
    sent = form.get("csrf")
    expected = request.session.get("csrf")
    if (
        not isinstance(sent, str)
        or not expected
        or not hmac.compare_digest(sent.encode(), str(expected).encode())
    ):
        log.warning("console request refused: CSRF token", extra=kv(path=request.url.path))
        raise HTTPException(403, "The form's security token is missing or wrong: reload the page.")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def operator_page(handler: Handler | None = None, *, refused: RefusedHandler | None = None) -> Any:
    """A page for a logged-in operator: else to /login. A POST must pass the CSRF check; the
    handler then gets the form as `form`. A Refused raised by the handler is answered by
    `refused` (its page, showing the message), else by the error page; nothing changed."""

    def wrap(handler: Handler) -> Handler:
        async def page(request: Request) -> Response:
            user = logged_in(request)
            if user is None:
                return RedirectResponse("/login", status_code=303)
            csrf_token(request)
            kwargs: dict[str, Any] = {"user": user}
            if request.method == "POST":
                kwargs["form"] = await check_csrf(request)
            try:
                return await handler(request, **kwargs)
            except Refused as exc:
                log.info("console action refused", extra=kv(path=request.url.path))
                if refused is None:
                    raise HTTPException(exc.status, exc.message) from exc
                return await refused(request, exc)

        page.__name__ = handler.__name__
        page.__doc__ = handler.__doc__
        return page

    return wrap if handler is None else wrap(handler)


def notice(request: Request, text: str, to: str) -> Response:
    """After a change: tell the operator on the next page (POST, redirect, GET)."""
    request.session["notice"] = text
    return RedirectResponse(to, status_code=303)


# --- log-in ---------------------------------------------------------------------------------


async def home(request: Request) -> Response:
    return RedirectResponse("/machines" if logged_in(request) else "/login", status_code=303)


async def login_form(request: Request) -> Response:
    if logged_in(request):
        return RedirectResponse("/machines", status_code=303)
    csrf_token(request)
    return console_of(request).render(request, "login.html", name="")


async def login(request: Request) -> Response:
    """Check the name and password (argon2id, cores/accounts.py), with the backoff first:
    a wrong name and a wrong password answer alike."""
    console = console_of(request)
    csrf_token(request)
    form = await check_csrf(request)
    name = form.get("name", "").strip()[:64]
    password = form.get("password", "")
    client = request.client.host if request.client else "-"
    wait = await run_in_threadpool(console.backoff.attempt, client, name)
    if wait > 0:
        log.warning("console log-in refused: backing off", extra=kv(client=client))
        return console.render(
            request,
            "login.html",
            status=429,
            name=name,
            error=f"Too many failed log-ins: try again in {wait:.0f} s.",
        )
    verify = Accounts(console.redis).verify
    if not name or not password or not await console.check_password(verify, name, password):
        log.warning("console log-in failed", extra=kv(client=client))
        return console.render(
            request, "login.html", status=401, name=name, error="Wrong user name or password."
        )
    console.backoff.succeeded(name, client)
    request.session.clear()  # a new session: a new CSRF token
    request.session.update(user=name, since=console.clock())
    csrf_token(request)
    log.info("console log-in", extra=kv(operator=name, client=client))
    return RedirectResponse("/machines", status_code=303)


async def logout(request: Request) -> Response:
    await check_csrf(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@operator_page
async def machines(request: Request, user: str) -> Response:
    console = console_of(request)
    rows = []
    seen = console.brokers.seen() if isinstance(console.brokers, FleetMachines) else None
    for machine_id, broker in console.brokers.items():
        snap = broker.snapshot()
        row = {"id": machine_id, "state": str(snap.state), "since": snap.since}
        if seen is not None:
            row["last_seen"] = seen.get(machine_id)
        rows.append(row)
    return console.render(
        request, "machines.html", rows=rows, machine_id=None, fleet=seen is not None
    )


class FleetMachines(Mapping[str, Broker]):
    """Fleet mode's machines as the console serves them: every machine of the registry
    (cores/fleet.py), each with a Broker made on first use. Its Brokers carry work hints, so
    that an operator's change (maintenance, a resolved refund) wakes the shared workers."""

    def __init__(self, client: redis.Redis, hints: WorkHints | None = None) -> None:
        self.redis = client
        self.fleet = Fleet(client)
        self.hints = hints if hints is not None else WorkHints(client)
        self._brokers: dict[str, Broker] = {}

    def __getitem__(self, machine_id: str) -> Broker:
        broker = self._brokers.get(machine_id)
        if broker is None:
            if not self.redis.hexists(keys.FLEET_MACHINES, machine_id):
                raise KeyError(machine_id)
            broker = self._brokers[machine_id] = Broker(self.redis, machine_id, hints=self.hints)
        return broker

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(cast(list[str], self.redis.hkeys(keys.FLEET_MACHINES))))

    def __len__(self) -> int:
        return self.redis.hlen(keys.FLEET_MACHINES)

    def seen(self) -> dict[str, float | None]:
        """When the gateway last heard from each machine's agent."""
        return {m.id: m.last_seen for m in self.fleet.machines()}


# --- formats --------------------------------------------------------------------------------


def rupiah(amount: Any) -> str:
    """`Rp 7.000` (cores/catalog.py), or `-` for what is not a number."""
    try:
        return catalog.rupiah(int(amount))
    except (TypeError, ValueError):
        return "-"


def local_time(settings: Settings) -> Callable[[Any, str], str]:
    zone = settings.tz

    def fmt(at: Any, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
        try:
            return datetime.fromtimestamp(float(at), zone).strftime(pattern)
        except (TypeError, ValueError, OverflowError):
            return "-"

    return fmt


# --- the app --------------------------------------------------------------------------------


def session_secret(settings: Settings) -> str:
    """CONSOLE_SECRET, else the one kept in VAR_DIR/console_secret (made once, mode 0600)."""
    if settings.console_secret:
        return settings.console_secret
    path = settings.console_secret_file
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    if len(kept) >= CONSOLE_SECRET_MIN_CHARS:
        return kept
    # None yet, or one cut short: make one and put it in place whole (a temporary file,
    # then a rename), so that no process ever reads a partial secret.
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    os.replace(tmp, path)
    return path.read_text(encoding="utf-8").strip()


def create_app(
    settings: Settings,
    broker: Broker,
    *,
    clock: Callable[[], float] = time.time,
    midtrans: MidtransClient | None = None,
    more_brokers: Mapping[str, Broker] | None = None,
    fleet_machines: Mapping[str, Broker] | None = None,
) -> Starlette:
    """The console for `broker`'s machine (and `more_brokers`'), on `clock`'s time; refunds
    of the operator's queue go through `midtrans` (None: refused, nothing changed).
    `fleet_machines` (FleetMachines) replaces that list; `broker`'s client still holds
    the accounts and log-in counters."""
    from services import console_pages, console_sales

    brokers = fleet_machines
    if brokers is None:
        brokers = {broker.machine_id: broker, **(more_brokers or {})}
    templates = Jinja2Templates(directory=str(CONSOLE_DIR / "templates"))
    templates.env.filters["rupiah"] = rupiah
    templates.env.filters["local_time"] = local_time(settings)
    console = Console(settings, brokers, templates, LoginBackoff(broker.redis, clock), clock)
    if midtrans is not None:
        console.extras["midtrans"] = midtrans
    routes = [
        Route("/", home),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/machines", machines),
        *console_pages.routes(),
        *console_sales.routes(),
        Mount("/static", StaticFiles(directory=str(CONSOLE_DIR / "static")), name="static"),
    ]
    routes.append(Route("/metrics", metrics_endpoint(broker)))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=session_secret(settings),
                session_cookie=SESSION_COOKIE,
                max_age=int(settings.console_session_s),
                same_site="strict",
                https_only=False,
            )
        ],
        exception_handlers={HTTPException: _error_page, redis.RedisError: _redis_down_page},
    )
    app.state.console = console
    return app


async def _error_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    console = console_of(request)
    return console.render(
        request,
        "error.html",
        status=exc.status_code,
        code=exc.status_code,
        message=exc.detail,
        user=logged_in(request),
    )


async def _redis_down_page(request: Request, exc: Exception) -> Response:
    """Redis unreachable: a page that says so (503), never a traceback; nothing changed."""
    log.warning("console: redis unreachable", extra=kv(path=request.url.path, error=exc))
    return console_of(request).render(
        request,
        "error.html",
        status=503,
        code=503,
        message="The machine's Redis cannot be reached: nothing was changed. Try again soon.",
        user=request.session.get("user"),
    )


def run(settings: Settings, fleet: bool = False) -> None:
    """Serve the console until SIGTERM / Ctrl-C (uvicorn's own handlers), with the alert
    watcher (services/alerts_service.py) running beside it."""
    import uvicorn

    from services.alerts_service import start_alert_watcher
    from services.runtime import broker_for

    midtrans = MidtransClient.from_settings(settings)
    if fleet:
        from services.runtime import redis_client

        client = redis_client(settings, "operator")
        broker = Broker(client, settings.machine_id)
        app = create_app(settings, broker, midtrans=midtrans, fleet_machines=FleetMachines(client))
        from services.fleet_alerts import start_fleet_alerts

        blocking = redis_client(settings, "operator-alerts", blocking=True)
        watcher = start_fleet_alerts(settings, client, blocking)
    else:
        broker = broker_for(settings, name="operator")
        app = create_app(settings, broker, midtrans=midtrans)
        watcher = start_alert_watcher(settings, broker)
    log.info("console", extra=kv(url=settings.console_url))
    try:
        uvicorn.run(
            app,
            host=settings.operator_host,
            port=settings.operator_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    finally:
        if watcher is not None:
            watcher.stop()
        midtrans.close()
