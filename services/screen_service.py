"""SCREEN worker: moves screens on by time, so that every page agrees (shared/DESIGN.md).

The menu returns to IDLE after MENU_IDLE_S without a command; result screens (DISPENSED,
PAYMENT_FAILED, DISPENSE_FAILED) after RESULT_SCREEN_S.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from constants.orders import Command
from constants.states import RESULT_STATES, State
from cores import rules
from cores.broker import Broker, Snapshot
from cores.config import Settings
from cores.machine import Transition
from services.worker import Worker


class ScreenWorker(Worker):
    service = "SCREEN"
    states = frozenset({State.SHOW_MENU, *RESULT_STATES})  # the screens with a timer
    commands = frozenset[Command]()

    def __init__(
        self, broker: Broker, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(broker, clock)
        self.settings = settings

    def step(self, snap: Snapshot, entries: list) -> float | None:
        deadline = rules.screen_deadline(
            snap.state, snap.since, self.settings.menu_idle_s, self.settings.result_screen_s
        )
        if deadline is None:
            return None
        if self.clock() < deadline:
            return deadline
        # Compare-and-set on the version: a tap that re-sent the menu restarted the timer.
        self.broker.transition(
            Transition(
                State.IDLE,
                (snap.state,),
                snap.order_id,
                {},
                new_order_id=None,
                expect_version=snap.version,
            )
        )
        return None


def build(settings: Settings, broker: Broker) -> ScreenWorker:
    return ScreenWorker(broker, settings)
