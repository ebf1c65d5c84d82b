"""Fleet mode's work shards: how a change of one machine reaches the shared workers and the
gateway without a blocking read per machine (shared/DESIGN.md, "Fleet mode").

    machine m --shard_of(m)--> shard k:  WORK stream   hints {m, command, order_id}
                                         WORK_DUE      each service's timers (machine -> when)
                                         WORK_LEASE    the one process of a service working k

Every change a worker may have to act on (a transition, a kiosk cancel, a notification's
recheck, an agent's vend result) is followed by one hint on its machine's shard stream. A hint
is only a wake-up: the truth stays in the machine's keys, and a shard's owner re-derives its
work from the machines' states when it takes the shard and every SWEEP_EVERY_S, so a hint lost
to a crash between the machine's MULTI and the XADD (two slots: they cannot share a MULTI on a
Cluster) delays a step, never loses it.

A transition's hint also says what it wrote: the new state (`s`), its version (`v`) and its
screen's frame (`f`), as the events stream's entry has them. So a worker whose service does
not act on that state skips the hint without reading the machine (services/shard_runner.py),
and the gateway sends the frame to the agent without reading the events stream when the
version follows the last one it sent (services/gateway_service.py). A hint without a state
(a kiosk cancel, a recheck, a vend result) still wakes every worker: only the machine's keys
say what changed.

    hint fields   m  machine id                 always
                  command, order_id             a command for the workers (CANCEL, CHECK, RECHECK)
                  s, v, f                       a transition: state, version, frame
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from constants import keys
from constants.tunables import WORK_MAXLEN, WORK_SHARDS


def shard_of(machine_id: str, shards: int = WORK_SHARDS) -> int:
    """The shard of a machine: stable across processes and restarts (CRC-32 of its id)."""
    return zlib.crc32(machine_id.encode()) % shards


def work_key(shard: int) -> str:
    return keys.WORK.format(shard=shard)


def due_key(shard: int, service: str) -> str:
    return keys.WORK_DUE.format(shard=shard, service=service)


def lease_key(shard: int, service: str) -> str:
    return keys.WORK_LEASE.format(shard=shard, service=service)


@dataclass(frozen=True)
class Change:
    """What a transition wrote: the machine's new state, its version and its screen's frame."""

    state: str
    version: int
    frame: str


def hint_change(fields: Mapping[str, Any]) -> Change | None:
    """The transition a hint tells of (None: a hint without a state, or a malformed one)."""
    state, version, frame = fields.get("s"), fields.get("v"), fields.get("f")
    if not state or not isinstance(frame, str):
        return None
    try:
        return Change(str(state), int(version or ""), frame)
    except ValueError:
        return None


class WorkHints:
    """Appends hints to the machines' shard streams (a Broker in fleet mode holds one)."""

    def __init__(self, client: redis.Redis, shards: int = WORK_SHARDS) -> None:
        self.redis = client
        self.shards = shards

    def hint(
        self,
        machine_id: str,
        command: str = "",
        order_id: str = "",
        change: Change | None = None,
    ) -> None:
        """Wake the workers of `machine_id` (and the gateway that serves its agent); `change`:
        what the transition that asks for the hint wrote."""
        fields: dict[Any, Any] = {"m": machine_id}
        if command:
            fields["command"] = command
            fields["order_id"] = order_id
        if change is not None:
            fields.update({"s": change.state, "v": change.version, "f": change.frame})
        self.redis.xadd(
            work_key(shard_of(machine_id, self.shards)),
            fields,
            maxlen=WORK_MAXLEN,
            approximate=True,
        )


def fleet_heartbeats(client: redis.Redis, services: Iterable[str]) -> dict[str, float | None]:
    """When any process of each shared service last said it was alive (unix s; None: none
    known), from FLEET_WORKERS: fleet mode's workers beat for the fleet, not per machine."""
    out: dict[str, float | None] = {}
    for service in services:
        newest = cast(
            list[tuple[str, float]],
            client.zrevrange(keys.FLEET_WORKERS.format(service=service), 0, 0, withscores=True),
        )
        out[str(service)] = float(newest[0][1]) if newest else None
    return out
