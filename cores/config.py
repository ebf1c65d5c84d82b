"""Settings: read once from the environment (and `.env`) by the entry scripts, then passed down.

Every variable of the configuration table in shared/DESIGN.md is here and in `.env.example`.
An invalid value raises `ConfigError` naming the variable; entry scripts print it and exit.

Redis is one server (`REDIS_URL=redis://...`, the default) or a Redis Cluster, named either by
`REDIS_URL=redis+cluster://host:port[,host:port...]` (`rediss+cluster://` for TLS, credentials
as in a redis:// URL) or by `REDIS_CLUSTER_NODES=host:port,...`: the nodes the client first
asks for the cluster's map (services/runtime.py makes the client; any node of it will do).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from constants.console import CONSOLE_SECRET_MIN_CHARS

SANDBOX_BASE_URL = "https://api.sandbox.midtrans.com"
PRODUCTION_BASE_URL = "https://api.midtrans.com"
SANDBOX_KEY_PREFIX = "SB-Mid-server-"
#: The key the workers use against the local sandbox when MIDTRANS_SERVER_KEY is unset.
LOCAL_SANDBOX_KEY = SANDBOX_KEY_PREFIX + "local-drink-machine"

PAYMENT_TYPES = ("qris", "gopay")
DISPENSERS = ("simulated", "serial", "gpio")
#: GPIO_RELAY_PINS: `slot:pin,...` (BCM pin numbers), e.g. `1:17,2:27`.
RELAY_PINS_RULE = "slot:pin pairs such as 1:17,2:27 (slots 1 to 999, BCM pins 0 to 53, each once)"

#: SANDBOX_FAULT_* names (shared/midtrans.md) and their types.
SANDBOX_FAULTS: dict[str, type] = {
    "LATENCY_MS": int,
    "ERROR_RATE": float,
    "DROP_RATE": float,
    "HTTP200_ERRORS": int,
    "PENDING_AFTER_PAY_S": float,
    "NOTIFY_DELAY_S": float,
    "NOTIFY_DUPLICATE_RATE": float,
    "NOTIFY_REORDER": int,
    "REFUND_DISABLED": int,
    "CHANNEL_DISABLED": int,
    "BAD_QR": int,
}

#: A machine id (VENDING_MACHINE_ID, and the ids of fleet mode's registry: cores/fleet.py).
MACHINE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")
MACHINE_ID_RULE = "1 to 20 letters, digits, '-', '_' or '.'"


#: The schemes of a Redis Cluster URL (REDIS_URL, VAR_DIR/redis.url): plain TCP, and TLS.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_URL_RULE = "redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS)"


class ConfigError(ValueError):
    """A configuration variable has an invalid value; the message names the variable."""


@dataclass(frozen=True)
class ClusterAddress:
    """Where a Redis Cluster is: its startup nodes (host, port), TLS, credentials."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The `redis+cluster://` URL of these nodes (what VAR_DIR/redis.url holds)."""
        scheme = CLUSTER_SCHEMES[1] if self.tls else CLUSTER_SCHEMES[0]
        user = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            if self.password is not None:
                user += ":" + quote(self.password, safe="")
            user += "@"
        hosts = ",".join(_host_port(host, port) for host, port in self.nodes)
        return f"{scheme}://{user}{hosts}"


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterAddress:
    """`redis+cluster://[user[:password]@]host:port[,host:port...][/]` -> its address.

    Raises ValueError for anything else (a path other than `/` or `/0`: a cluster has one
    database; a node without a port; no node)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"expected {CLUSTER_URL_RULE}")
    rest, _, query = rest.partition("?")
    if query or "#" in rest or any(c.isspace() for c in rest):
        raise ValueError(f"expected {CLUSTER_URL_RULE}, without a query")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has one database: no path but / or /0")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        name, colon, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if colon else None
    return ClusterAddress(
        parse_cluster_nodes(netloc), scheme.lower() == CLUSTER_SCHEMES[1], username, password
    )


def parse_cluster_nodes(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` ([v6]:port for IPv6) -> ((host, port), ...); ValueError if bad."""
    nodes: list[tuple[str, int]] = []
    for one in text.split(","):
        one = one.strip()
        if not one:
            continue
        host, colon, port = one.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"{one!r} is not host:port")
        if any(c in host for c in "/@,[] ") or (":" in host and not one.startswith("[")):
            raise ValueError(f"{one!r} is not host:port")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError("no host:port")
    return tuple(nodes)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Settings:
    """The machine's configuration. Tests build it directly: `Settings(payment_deadline_s=3)`."""

    redis_url: str | None = None
    #: REDIS_CLUSTER_NODES: `host:port,...` of a Redis Cluster (or REDIS_URL=redis+cluster://).
    redis_cluster_nodes: str | None = None
    machine_id: str = "vm-1"
    ws_host: str = "127.0.0.1"
    ws_port: int = 3333
    #: Origins, besides the page's own and `null` (file://), whose pages may open /ws.
    kiosk_allowed_origins: tuple[str, ...] = ()
    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = 3334
    sandbox_notification_url: str | None = None
    sandbox_faults: Mapping[str, float] = field(default_factory=dict)
    notification_host: str = "127.0.0.1"
    notification_port: int = 3335
    operator_host: str = "127.0.0.1"
    operator_port: int = 3336
    #: Signs the console's session cookies; unset: generated once into VAR_DIR/console_secret.
    console_secret: str | None = field(default=None, repr=False)
    #: A console session ends this long after its log-in.
    console_session_s: float = 8 * 3600.0
    midtrans_server_key: str | None = None
    midtrans_client_key: str | None = None
    midtrans_is_production: bool = False
    midtrans_base_url_override: str | None = None
    midtrans_timeout_s: float = 10.0
    payment_type: str = "qris"
    payment_deadline_s: float = 120.0
    menu_idle_s: float = 60.0
    result_screen_s: float = 5.0
    dispenser: str = "simulated"
    dispense_s: float = 2.0
    dispense_failure_rate: float = 0.0
    var_dir: Path = Path("var")
    menu_file: Path = Path(__file__).resolve().parent.parent / "menu.json"
    log_level: str = "INFO"
    #: Where each alert raised or cleared is POSTed as JSON (services/alert_webhook.py).
    alert_webhook_url: str | None = field(default=None, repr=False)  # may carry a secret
    #: The machine's time zone (IANA name): sales reports and the dates operators read.
    timezone: str = "Asia/Jakarta"
    #: Fleet mode, on a machine's agent: the backend's gateway (ws:// or wss://) and the
    #: machine's token (`main.py fleet add ID` prints it). Never sent to a browser or a log.
    backend_url: str | None = None
    machine_token: str | None = field(default=None, repr=False)
    #: A vend the dispenser does not confirm within this long is not waited for any more: its
    #: outcome goes to the operator (money rule 6).
    vend_timeout_s: float = 30.0
    #: DISPENSER=serial: the vending board's port (/dev/ttyUSB0, or any pyserial URL).
    dispenser_port: str | None = None
    #: A slot that fails this many vends in a row is disabled (its drinks sold out).
    slot_fail_limit: int = 3
    #: DISPENSER=gpio: GPIO_RELAY_PINS `slot:pin,...` (see `relay_pins`), whether a relay
    #: input is active high, the drop sensor's pin (one, shared by every slot; unset: none),
    #: whether the sensor reads low while its beam is broken (pull-up; false: high, pull-down)
    #: and how long a relay is held on for one vend.
    gpio_relay_pins: str | None = None
    gpio_active_high: bool = True
    gpio_sensor_pin: int | None = None
    gpio_sensor_active_low: bool = True
    vend_pulse_s: float = 1.0

    def __post_init__(self) -> None:
        _check(
            bool(MACHINE_ID.fullmatch(self.machine_id)),
            "VENDING_MACHINE_ID",
            MACHINE_ID_RULE,
        )
        for name, port in (
            ("WS_PORT", self.ws_port),
            ("SANDBOX_PORT", self.sandbox_port),
            ("NOTIFICATION_PORT", self.notification_port),
            ("OPERATOR_PORT", self.operator_port),
        ):
            _check(0 <= port <= 65535, name, "a port number from 0 to 65535")
        for origin in self.kiosk_allowed_origins:
            _check(
                _is_origin(origin),
                "KIOSK_ALLOWED_ORIGINS",
                "comma-separated origins such as http://kiosk.local:3333 "
                "(http or https, a host, an optional port, no path)",
            )
        _check(0.1 <= self.midtrans_timeout_s <= 60, "MIDTRANS_TIMEOUT_S", "0.1 to 60 seconds")
        _check(self.payment_type in PAYMENT_TYPES, "PAYMENT_TYPE", "qris or gopay")
        _check(1 <= self.payment_deadline_s <= 900, "PAYMENT_DEADLINE_S", "1 to 900 seconds")
        _check(0 < self.menu_idle_s <= 3600, "MENU_IDLE_S", "more than 0, at most 3600 seconds")
        _check(0 < self.result_screen_s <= 600, "RESULT_SCREEN_S", "more than 0, at most 600 s")
        _check(self.dispenser in DISPENSERS, "DISPENSER", " or ".join(DISPENSERS))
        _check(0 <= self.dispense_s <= 120, "DISPENSE_S", "0 to 120 seconds")
        _check(0 <= self.dispense_failure_rate <= 1, "DISPENSE_FAILURE_RATE", "0 to 1")
        if self.alert_webhook_url is not None:
            _check(
                _is_http_url(self.alert_webhook_url),
                "ALERT_WEBHOOK_URL",
                "an http:// or https:// URL with a host",
            )
        _check(bool(self.operator_host.strip()), "OPERATOR_HOST", "a host name or address")
        if self.console_secret is not None:
            _check(
                len(self.console_secret) >= CONSOLE_SECRET_MIN_CHARS,
                "CONSOLE_SECRET",
                f"at least {CONSOLE_SECRET_MIN_CHARS} characters",
            )
        _check(60 <= self.console_session_s <= 7 * 86400, "CONSOLE_SESSION_S", "60 s to 7 days")
        _check(_is_zone(self.timezone), "TIMEZONE", "an IANA time zone such as Asia/Jakarta")
        if self.backend_url is not None:
            _check(
                _is_url(self.backend_url, ("ws", "wss")),
                "BACKEND_URL",
                "a ws:// or wss:// URL with a host, e.g. wss://backend.example.com/agent",
            )
        if self.machine_token is not None:
            _check(
                0 < len(self.machine_token) <= 256
                and self.machine_token.isprintable()
                and not any(c.isspace() for c in self.machine_token),
                "MACHINE_TOKEN",
                "the token `main.py fleet add ID` printed (no spaces)",
            )
        _check(0 < self.vend_timeout_s <= 600, "VEND_TIMEOUT_S", "more than 0, at most 600 s")
        self._check_dispenser_hardware()
        if self.redis_url is not None:
            if is_cluster_url(self.redis_url):
                try:
                    parse_cluster_url(self.redis_url)
                except ValueError as exc:
                    raise ConfigError(f"REDIS_URL is invalid: {exc}") from None
            else:
                _check(
                    self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                    "REDIS_URL",
                    f"a redis://, rediss:// or unix:// URL, or {CLUSTER_URL_RULE}",
                )
        if self.redis_cluster_nodes is not None:
            if self.redis_url is not None:
                raise ConfigError(
                    "REDIS_URL and REDIS_CLUSTER_NODES are both set: set one of them "
                    "(REDIS_CLUSTER_NODES=host:port,... or REDIS_URL=redis+cluster://...)"
                )
            try:
                parse_cluster_nodes(self.redis_cluster_nodes)
            except ValueError as exc:
                raise ConfigError(
                    f"REDIS_CLUSTER_NODES is invalid: expected host:port,host:port,... ({exc})"
                ) from None
        if self.midtrans_server_key is not None:
            _check(bool(self.midtrans_server_key.strip()), "MIDTRANS_SERVER_KEY", "a key")

    @property
    def redis_cluster(self) -> ClusterAddress | None:
        """The Redis Cluster the settings name (REDIS_URL=redis+cluster://... or
        REDIS_CLUSTER_NODES), or None: one Redis server (REDIS_URL, or VAR_DIR/redis.url)."""
        if self.redis_cluster_nodes is not None:
            return ClusterAddress(parse_cluster_nodes(self.redis_cluster_nodes))
        if self.redis_url is not None and is_cluster_url(self.redis_url):
            return parse_cluster_url(self.redis_url)
        return None

    @property
    def uses_cluster(self) -> bool:
        """The settings name a Redis Cluster (see `redis_cluster`)."""
        return self.redis_cluster is not None

    def _check_dispenser_hardware(self) -> None:
        if self.dispenser == "serial" and not (self.dispenser_port or "").strip():
            raise ConfigError(
                "DISPENSER_PORT is required when DISPENSER=serial: the vending board's "
                "serial port, e.g. /dev/ttyUSB0"
            )
        _check(1 <= self.slot_fail_limit <= 100, "SLOT_FAIL_LIMIT", "1 to 100 failures")
        _check(0.05 <= self.vend_pulse_s <= 30, "VEND_PULSE_S", "0.05 to 30 seconds")
        _check(self.vend_pulse_s <= self.vend_timeout_s, "VEND_PULSE_S", "at most VEND_TIMEOUT_S")
        if self.gpio_sensor_pin is not None:
            _check(0 <= self.gpio_sensor_pin <= 53, "GPIO_SENSOR_PIN", "a BCM pin 0 to 53")
        if self.gpio_relay_pins is not None:
            try:
                pins = parse_relay_pins(self.gpio_relay_pins)
            except ValueError as exc:
                raise ConfigError(
                    f"GPIO_RELAY_PINS is invalid: expected {RELAY_PINS_RULE} ({exc})"
                ) from None
            _check(
                self.gpio_sensor_pin not in pins.values(),
                "GPIO_SENSOR_PIN",
                "a pin that no relay of GPIO_RELAY_PINS uses",
            )
        if self.dispenser == "gpio" and self.gpio_relay_pins is None:
            raise ConfigError(f"GPIO_RELAY_PINS is required when DISPENSER=gpio: {RELAY_PINS_RULE}")

    @property
    def relay_pins(self) -> dict[int, int]:
        """GPIO_RELAY_PINS as {slot: BCM pin} ({} when unset)."""
        if self.gpio_relay_pins is None:
            return {}
        return parse_relay_pins(self.gpio_relay_pins)

    @property
    def uses_local_sandbox(self) -> bool:
        """No server key: the machine talks to the local sandbox with a generated key."""
        return self.midtrans_server_key is None

    @property
    def server_key(self) -> str:
        return self.midtrans_server_key or LOCAL_SANDBOX_KEY

    @property
    def sandbox_url(self) -> str:
        return f"http://{self.sandbox_host}:{self.sandbox_port}"

    @property
    def notification_url(self) -> str:
        return f"http://{self.notification_host}:{self.notification_port}/notification"

    @property
    def midtrans_base_url(self) -> str:
        if self.midtrans_base_url_override:
            return self.midtrans_base_url_override.rstrip("/")
        if self.uses_local_sandbox:
            return self.sandbox_url
        return PRODUCTION_BASE_URL if self.midtrans_is_production else SANDBOX_BASE_URL

    @property
    def kiosk_url(self) -> str:
        return f"http://{self.ws_host}:{self.ws_port}/"

    @property
    def console_url(self) -> str:
        return f"http://{self.operator_host}:{self.operator_port}/"

    @property
    def console_secret_file(self) -> Path:
        return self.var_dir / "console_secret"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def redis_url_file(self) -> Path:
        return self.var_dir / "redis.url"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, dotenv: Path | None = None
    ) -> Settings:
        """Build settings from `environ` (default: os.environ, after loading `.env`)."""
        if environ is None:
            if dotenv is None:
                dotenv = Path(".env")
            if dotenv.exists():
                from dotenv import load_dotenv

                load_dotenv(dotenv, override=False)
            environ = os.environ
        env = {k: v for k, v in environ.items() if v != ""}
        # Field name -> parsed value, each of its field's type; __post_init__ checks the ranges.
        values: dict[str, Any] = {}

        def take(var: str, attr: str, kind: type = str) -> None:
            if var in env:
                values[attr] = _parse(var, env[var], kind)

        take("REDIS_URL", "redis_url")
        take("REDIS_CLUSTER_NODES", "redis_cluster_nodes")
        take("VENDING_MACHINE_ID", "machine_id")
        take("WS_HOST", "ws_host")
        take("WS_PORT", "ws_port", int)
        if "KIOSK_ALLOWED_ORIGINS" in env:
            values["kiosk_allowed_origins"] = tuple(
                one.strip() for one in env["KIOSK_ALLOWED_ORIGINS"].split(",") if one.strip()
            )
        take("SANDBOX_HOST", "sandbox_host")
        take("SANDBOX_PORT", "sandbox_port", int)
        take("SANDBOX_NOTIFICATION_URL", "sandbox_notification_url")
        take("NOTIFICATION_HOST", "notification_host")
        take("NOTIFICATION_PORT", "notification_port", int)
        take("OPERATOR_HOST", "operator_host")
        take("OPERATOR_PORT", "operator_port", int)
        take("CONSOLE_SECRET", "console_secret")
        take("CONSOLE_SESSION_S", "console_session_s", float)
        take("MIDTRANS_SERVER_KEY", "midtrans_server_key")
        take("MIDTRANS_CLIENT_KEY", "midtrans_client_key")
        take("MIDTRANS_IS_PRODUCTION", "midtrans_is_production", bool)
        take("MIDTRANS_BASE_URL", "midtrans_base_url_override")
        take("MIDTRANS_TIMEOUT_S", "midtrans_timeout_s", float)
        take("PAYMENT_TYPE", "payment_type")
        take("PAYMENT_DEADLINE_S", "payment_deadline_s", float)
        take("MENU_IDLE_S", "menu_idle_s", float)
        take("RESULT_SCREEN_S", "result_screen_s", float)
        take("DISPENSER", "dispenser")
        take("DISPENSE_S", "dispense_s", float)
        take("DISPENSE_FAILURE_RATE", "dispense_failure_rate", float)
        take("VAR_DIR", "var_dir", Path)
        take("MENU_FILE", "menu_file", Path)
        take("LOG_LEVEL", "log_level")
        take("ALERT_WEBHOOK_URL", "alert_webhook_url")
        take("TIMEZONE", "timezone")
        take("BACKEND_URL", "backend_url")
        take("MACHINE_TOKEN", "machine_token")
        take("VEND_TIMEOUT_S", "vend_timeout_s", float)
        take("DISPENSER_PORT", "dispenser_port")
        take("SLOT_FAIL_LIMIT", "slot_fail_limit", int)
        take("GPIO_RELAY_PINS", "gpio_relay_pins")
        take("GPIO_ACTIVE_HIGH", "gpio_active_high", bool)
        take("GPIO_SENSOR_PIN", "gpio_sensor_pin", int)
        take("GPIO_SENSOR_ACTIVE_LOW", "gpio_sensor_active_low", bool)
        take("VEND_PULSE_S", "vend_pulse_s", float)
        faults: dict[str, float] = {}
        for name, kind in SANDBOX_FAULTS.items():
            var = "SANDBOX_FAULT_" + name
            if var in env:
                value = _parse(var, env[var], kind)
                _check(isinstance(value, int | float) and value >= 0, var, "a number >= 0")
                assert isinstance(value, int | float)  # SANDBOX_FAULTS kinds are int and float
                faults[name] = value
        values["sandbox_faults"] = faults
        if "log_level" in values:
            values["log_level"] = str(values["log_level"]).upper()
            _check(
                values["log_level"] in ("DEBUG", "INFO", "WARNING", "ERROR"),
                "LOG_LEVEL",
                "DEBUG, INFO, WARNING or ERROR",
            )
        return cls(**values)


def parse_relay_pins(text: str) -> dict[int, int]:
    """`1:17,2:27` -> {1: 17, 2: 27}; ValueError unless every slot and pin is used once."""
    pins: dict[int, int] = {}
    for one in text.split(","):
        one = one.strip()
        if not one:
            continue
        slot, colon, pin = (part.strip() for part in one.partition(":"))
        if not colon or not slot.isdigit() or not pin.isdigit():
            raise ValueError(f"{one!r} is not slot:pin")
        if not 1 <= int(slot) <= 999 or not 0 <= int(pin) <= 53:
            raise ValueError(f"{one!r}: slot 1 to 999, pin 0 to 53")
        if int(slot) in pins or int(pin) in pins.values():
            raise ValueError(f"{one!r}: a slot or pin given twice")
        pins[int(slot)] = int(pin)
    if not pins:
        raise ValueError("no slot:pin")
    return pins


def _parse(var: str, raw: str, kind: type) -> object:
    raw = raw.strip()
    if kind is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{var}={raw!r} is invalid: expected true or false")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is invalid: expected {kind.__name__}") from None


def _is_origin(text: str) -> bool:
    """scheme://host[:port] with scheme http or https, as a browser sends it in Origin."""
    if not _is_http_url(text) or text != text.strip():
        return False
    parts = urlsplit(text)
    return not parts.path and not parts.query and not parts.fragment


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        return False
    return True


def _is_http_url(text: str) -> bool:
    """An absolute http(s) URL with a host, no spaces or credentials."""
    return _is_url(text, ("http", "https"))


def _is_url(text: str, schemes: tuple[str, ...]) -> bool:
    """An absolute URL of one of `schemes` with a host, no spaces or credentials."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    return (
        parts.scheme in schemes
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not any(c.isspace() for c in text)
    )


def _check(ok: bool, var: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{var} is invalid: expected {expected}")
