"""`main.py machine` (fleet mode): the agent on a vending machine."""

from __future__ import annotations

from cores.config import Settings


def run(settings: Settings) -> int:
    raise NotImplementedError("the agent is being built")
