"""Start the websocket server: the kiosk page, /healthz and the /ws relay (shared/DESIGN.md).

    python websocket_server.py [--host HOST] [--port PORT]

Settings come from the environment (and `.env`); --host and --port override WS_HOST and
WS_PORT. Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys

from constants.services import Service
from cores import logs
from cores.config import ConfigError, Settings
from services import websocket_service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve the kiosk page and relay the machine's screens over a websocket."
    )
    parser.add_argument("--host", help="address to listen on (default: WS_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: WS_PORT, 3333)")
    parser.add_argument(
        "--no-log-file",
        action="store_true",
        help="log to stderr only (`main.py up` keeps the file)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        overrides: dict[str, object] = {}
        if args.host is not None:
            overrides["ws_host"] = args.host
        if args.port is not None:
            overrides["ws_port"] = args.port
        settings = settings.replace(**overrides)
    except ConfigError as exc:
        print(f"websocket_server: {exc}", file=sys.stderr)
        return 2
    logs.setup(
        Service.WEBSOCKET,
        settings.machine_id,
        settings.log_level,
        None if args.no_log_file else settings.var_dir / "logs",
    )

    try:
        return websocket_service.run(settings)
    except ConfigError as exc:
        print(f"websocket_server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
