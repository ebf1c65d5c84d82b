"""GATEWAY (fleet mode): the backend's websocket endpoint for the machines' agents."""

from __future__ import annotations

from cores.config import Settings


def run(settings: Settings) -> int:
    raise NotImplementedError("the gateway is being built")
