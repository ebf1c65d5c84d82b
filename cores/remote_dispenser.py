"""Fleet mode: the backend's side of a vend that the machine's agent does (money rules 2, 6).

In fleet mode the dispenser is on the vending machine and the DISPENSE worker on the backend,
so a vend is not a call that returns: it is a state the worker leaves in Redis and a result
the agent reports back.

    DISPENSE worker                gateway                       agent (on the machine)
    PAYMENT_SUCCESS -> DISPENSING  sees DISPENSING --vend-->     journals "started", vends,
      (VEND_STARTED_AT), timer at                                journals the result
      started + VEND_TIMEOUT_S     <--vend_result--
                                   HSET vm:{id}:vend + hint
    woken: result in VEND -> finish (DISPENSED / refund / operator)
    timer fires, no result -> Vend.UNKNOWN -> operator (never re-vended or refunded on a guess)

`RemoteDispenser.outcome` reads what the agent reported (constants.keys.VEND); `remote_step`
is the decision, pure: what to do with the machine's state, the reported result, the vend's
start and the clock.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import Enum
from typing import cast

from constants import keys
from constants.states import State
from cores.broker import Broker
from cores.logs import kv
from cores.rules import Vend

log = logging.getLogger(__name__)

#: VEND_TIMEOUT_S's default (cores/config.py): how long a vend may go unconfirmed.
DEFAULT_TIMEOUT_S = 30.0


class RemoteDispenser:
    """What the machine's agent reported of its vends, read from the machine's VEND hash."""

    def __init__(self, broker: Broker, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
        self.key = keys.key(keys.VEND, broker.machine_id)

    def outcome(self, order_id: str) -> Vend | None:
        """The agent's journal answer for `order_id` (None: nothing reported yet). A record
        that cannot be read is an unknown outcome: a person looks (money rule 6)."""
        raw = cast(str | None, self.broker.redis.hget(self.key, order_id))
        if raw is None:
            return None
        try:
            return Vend(json.loads(raw)["result"])
        except (ValueError, TypeError, KeyError):
            log.error("unreadable vend record", extra=kv(order_id=order_id, record=raw[:80]))
            return Vend.UNKNOWN


class RemoteMove(Enum):
    """What the DISPENSE worker does next with a remote vend."""

    START = "start"  # PAYMENT_SUCCESS -> DISPENSING, then wait for the agent
    FINISH = "finish"  # the agent's result (or UNKNOWN at the deadline) decides
    WAIT = "wait"  # DISPENSING, no result yet, deadline ahead


@dataclass(frozen=True)
class RemoteStep:
    move: RemoteMove
    vend: Vend | None = None
    #: WAIT: when to look again (the deadline); the result's hint usually comes first.
    at: float | None = None


def remote_step(
    state: State, reported: Vend | None, started_at: float | None, now: float, timeout_s: float
) -> RemoteStep:
    """The DISPENSE worker's decision for a vend done by the agent.

    A result already reported is final whatever the state (never vend an order twice: a
    state rolled back or a second worker). DISPENSING without a result waits until
    `started_at + timeout_s`; past it the outcome is unknown (money rule 6), for the operator.
    """
    if reported is not None:
        return RemoteStep(RemoteMove.FINISH, reported)
    if state == State.PAYMENT_SUCCESS:
        return RemoteStep(RemoteMove.START)
    deadline = (started_at if started_at is not None else now) + timeout_s
    if now < deadline:
        return RemoteStep(RemoteMove.WAIT, at=deadline)
    return RemoteStep(RemoteMove.FINISH, Vend.UNKNOWN)
