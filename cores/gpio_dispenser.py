"""DISPENSER=gpio: relays and a drop sensor on the host's own pins (gpiozero).

One relay output per slot (GPIO_RELAY_PINS `slot:pin`, BCM numbers; GPIO_ACTIVE_HIGH false
for the common relay modules whose inputs are active low) runs that slot's motor for
VEND_PULSE_S. An optional drop sensor (GPIO_SENSOR_PIN) confirms the vend.

The sensor is ONE input shared by every slot: an IR break-beam across the delivery chute
that every product falls through. "Active" = a product in the beam. With
GPIO_SENSOR_ACTIVE_LOW true (the default: the common open-collector receivers) the input has
its pull-up on and the receiver pulls it low while the beam is broken; false, for a sensor
that drives its output high while broken, the input has its pull-down on. One sensor is enough
because the driver vends one order at a time (a lock), so a drop can only belong to the slot
it is pulsing; it is also what a machine with a single delivery bin has room for.

    journal "started" (fsync'd)
    no slot, or a slot without a relay                  FAILED  reason NO_SLOT, nothing moved
    sensor already blocked before the pulse             FAILED  reason SENSOR_BLOCKED, nothing moved
    relay on for VEND_PULSE_S, then off
      with a sensor: beam broken within VEND_TIMEOUT_S  VENDED
                     no drop by then                    FAILED  reason NO_DROP
      without a sensor                                  VENDED  (weaker: see below)
    a pin error once the relay may have been switched   UNKNOWN (operator), nothing more journaled
    the relay will not switch off (tried twice)         UNKNOWN; the relay closed and its slot
                                                        dropped (later vends: NO_SLOT)

VEND_TIMEOUT_S bounds the whole vend: the drop window opens when the relay switches on, so
the pulse is inside it (VEND_PULSE_S at most VEND_TIMEOUT_S, cores/config.py) and a vend
answers within VEND_TIMEOUT_S of its start. In fleet mode the backend's deadline for the
agent's result is VEND_TIMEOUT_S plus a margin of its own (the link, the journal), so a drop
seen at the last moment still reaches it.

Without a sensor the pulse itself counts as VENDED. That is weaker than the serial board or a
sensor: a jammed spiral or an empty slot still "vends", the customer is not refunded, and only
a complaint or the stock count shows it. Fit a sensor on a machine that sells for money.

`outcome` answers from the journal alone (cores/dispenser.VendJournal): pins have no memory,
so a started-only vend (the host died mid-pulse) is UNKNOWN, for the operator.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cores.dispenser import STARTED, VendJournal
from cores.logs import kv
from cores.rules import Vend

if TYPE_CHECKING:
    from cores.config import Settings

log = logging.getLogger(__name__)


class GpioDispenser:
    """The Dispenser protocol over relays and an optional shared drop sensor."""

    def __init__(
        self,
        relay_pins: Mapping[int, int],
        var_dir: Path,
        *,
        active_high: bool = True,
        sensor_pin: int | None = None,
        sensor_active_low: bool = True,
        vend_timeout_s: float = 30.0,
        pulse_s: float = 1.0,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from gpiozero import (  # type: ignore[import-untyped]
            DigitalInputDevice,
            DigitalOutputDevice,
        )

        self.vends = VendJournal(var_dir, clock)
        self.journal = self.vends.path
        self.vend_timeout_s = vend_timeout_s
        self.pulse_s = pulse_s
        self.sleep = sleep
        self.relays: dict[int, Any] = {}
        try:
            for slot, pin in sorted(relay_pins.items()):
                self.relays[slot] = DigitalOutputDevice(
                    pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
                )
            self.sensor: Any = None
            if sensor_pin is not None:
                # pull_up True: active when low; False: pull-down, active when high.
                self.sensor = DigitalInputDevice(
                    sensor_pin, pull_up=sensor_active_low, pin_factory=pin_factory
                )
        except Exception:
            self.close()
            raise
        self._lock = threading.Lock()
        self._begun: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> GpioDispenser:
        return cls(
            settings.relay_pins,
            settings.var_dir,
            active_high=settings.gpio_active_high,
            sensor_pin=settings.gpio_sensor_pin,
            sensor_active_low=settings.gpio_sensor_active_low,
            vend_timeout_s=settings.vend_timeout_s,
            pulse_s=settings.vend_pulse_s,
        )

    def start(self) -> None:
        """Nothing to do: the pins are set up by the constructor (all relays off)."""

    def close(self) -> None:
        for device in [*self.relays.values(), getattr(self, "sensor", None)]:
            if device is not None:
                with contextlib.suppress(Exception):
                    device.close()

    def status(self) -> dict[str, object]:
        return {
            "driver": "gpio",
            "slots": sorted(self.relays),
            "sensor": self.sensor is not None,
        }

    # --- the Dispenser protocol --------------------------------------------------------------

    def begin(self, order_id: str, drink_id: str, slot: int | None = None) -> None:
        self.vends.record(order_id, drink_id, STARTED, slot=slot)
        self._begun.add(order_id)
        log.info("vend started", extra=kv(order_id=order_id, drink=drink_id, slot=slot))

    def vend(self, order_id: str, drink_id: str, slot: int | None = None) -> Vend:
        relay = self.relays.get(slot) if slot is not None else None
        if slot is None or relay is None:
            return self._refuse(order_id, drink_id, slot, "NO_SLOT")
        with self._lock:
            if order_id in self._begun:
                self._begun.discard(order_id)
            else:
                self.vends.record(order_id, drink_id, STARTED, slot=slot)
            if self.sensor is not None and self.sensor.is_active:
                return self._refuse(order_id, drink_id, slot, "SENSOR_BLOCKED")
            dropped = threading.Event()
            started = time.monotonic()
            try:
                if self.sensor is not None:
                    self.sensor.when_activated = dropped.set
                try:
                    relay.on()
                    self.sleep(self.pulse_s)
                except Exception:
                    self._switch_off(slot, relay, order_id)
                    raise
                if not self._switch_off(slot, relay, order_id):
                    return Vend.UNKNOWN
                if self.sensor is None:
                    result, reason = Vend.VENDED, None
                else:
                    left = max(0.0, started + self.vend_timeout_s - time.monotonic())
                    seen = dropped.wait(left)
                    result, reason = (Vend.VENDED, None) if seen else (Vend.FAILED, "NO_DROP")
            except Exception:
                log.exception("pin error mid-vend: outcome unknown", extra=kv(order_id=order_id))
                return Vend.UNKNOWN
            finally:
                if self.sensor is not None:
                    with contextlib.suppress(Exception):
                        self.sensor.when_activated = None
            self.vends.record(order_id, drink_id, result.value, slot=slot, reason=reason)
            log.info(
                "vend",
                extra=kv(
                    order_id=order_id,
                    drink=drink_id,
                    slot=slot,
                    result=result.value,
                    reason=reason,
                    sensor=self.sensor is not None,
                ),
            )
            return result

    def outcome(self, order_id: str) -> Vend | None:
        return self.vends.outcome(order_id)

    def entries(self) -> list[dict]:
        return self.vends.entries()

    def _switch_off(self, slot: int, relay: Any, order_id: str) -> bool:
        """Switch the relay off, trying twice. A relay that will not go off is closed (its
        pin released) and its slot dropped, so no later vend drives it: False."""
        for attempt in (1, 2):
            try:
                relay.off()
                return True
            except Exception:
                log.exception(
                    "relay did not switch off",
                    extra=kv(order_id=order_id, slot=slot, attempt=attempt),
                )
        with contextlib.suppress(Exception):
            relay.close()
        self.relays.pop(slot, None)
        log.error(
            "relay stuck: closed, slot out of use, outcome unknown",
            extra=kv(order_id=order_id, slot=slot),
        )
        return False

    def _refuse(self, order_id: str, drink_id: str, slot: int | None, reason: str) -> Vend:
        self.vends.record(order_id, drink_id, Vend.FAILED.value, slot=slot, reason=reason)
        self._begun.discard(order_id)
        log.error(
            "vend refused, nothing moved",
            extra=kv(order_id=order_id, drink=drink_id, slot=slot, reason=reason),
        )
        return Vend.FAILED
