"""DISPENSER=gpio with gpiozero's mock pin factory: relays per slot, one shared drop sensor.

The chute is modelled by a relay pin class that, when the relay is energised, drives the
sensor pin low (beam broken) and high again, as a falling can would; a chute that `jams`
does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from cores.config import Settings
from cores.dispenser import STARTED, VendJournal, from_settings
from cores.gpio_dispenser import GpioDispenser
from cores.rules import Vend
from tests.machine_helpers import ROOT

PINS = {1: 17, 2: 27}
SENSOR = 23


class Chute:
    """What falls when a relay is energised: `drop` True breaks the sensor's beam."""

    def __init__(
        self, factory: MockFactory, active_high: bool = True, sensor_active_low: bool = True
    ) -> None:
        self.factory = factory
        self.active_high = active_high
        self.sensor_active_low = sensor_active_low
        self.drop = True
        self.energised: list[int] = []  # BCM pins, each time one was switched on

    def changed(self, pin: RelayPin, state: bool) -> None:
        if state != self.active_high:
            return
        self.energised.append(int(pin.info.name.removeprefix("GPIO")))
        if self.drop:
            sensor = self.factory.pin(SENSOR)
            broken, clear = (
                (sensor.drive_low, sensor.drive_high)
                if self.sensor_active_low
                else (sensor.drive_high, sensor.drive_low)
            )
            # The can crosses the beam in another thread, as a real edge interrupt would.
            threading.Thread(target=lambda: (broken(), clear())).start()


class RelayPin(MockPin):
    chute: Chute | None = None

    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed and self.function == "output" and RelayPin.chute is not None:
            RelayPin.chute.changed(self, bool(value))
        return changed


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    previous = Device.pin_factory
    Device.pin_factory = f = MockFactory()
    yield f
    f.reset()
    Device.pin_factory = previous
    RelayPin.chute = None


def chute_for(
    factory: MockFactory, active_high: bool = True, sensor_active_low: bool = True
) -> Chute:
    for pin in PINS.values():
        factory.pin(pin, pin_class=RelayPin)
    RelayPin.chute = Chute(factory, active_high, sensor_active_low)
    return RelayPin.chute


def make(tmp_path, sensor: int | None = SENSOR, active_high: bool = True, **kw) -> GpioDispenser:
    return GpioDispenser(
        PINS,
        tmp_path,
        active_high=active_high,
        sensor_pin=sensor,
        vend_timeout_s=kw.pop("vend_timeout_s", 0.5),
        pulse_s=kw.pop("pulse_s", 0.05),
        **kw,
    )


def results(tmp_path, order_id: str) -> list[tuple[str, str | None]]:
    return [
        (e["result"], e.get("reason"))
        for e in VendJournal(tmp_path).entries()
        if e["order_id"] == order_id
    ]


def test_with_a_sensor_a_drop_seen_is_vended(factory, tmp_path):
    """Relay of slot 2 pulsed; the beam breaks: VENDED, journaled started then vended."""
    chute = chute_for(factory)
    d = make(tmp_path)
    assert d.vend("o1", "cola", 2) is Vend.VENDED
    assert chute.energised == [27]
    assert results(tmp_path, "o1") == [(STARTED, None), ("vended", None)]
    assert d.relays[2].value == 0  # the relay is off again


def test_with_a_sensor_no_drop_within_the_timeout_is_failed_no_drop(factory, tmp_path):
    """A jam: the relay pulses, nothing crosses the beam by VEND_TIMEOUT_S: FAILED NO_DROP."""
    chute = chute_for(factory)
    chute.drop = False
    d = make(tmp_path, vend_timeout_s=0.3)
    assert d.vend("o1", "cola", 1) is Vend.FAILED
    assert chute.energised == [17]
    assert results(tmp_path, "o1")[-1] == ("failed", "NO_DROP")
    assert d.outcome("o1") is Vend.FAILED


def test_the_relay_is_held_for_the_pulse(factory, tmp_path):
    """The relay is on for VEND_PULSE_S, then off (the pin's recorded states)."""
    chute_for(factory)
    d = make(tmp_path, pulse_s=0.2)
    pin = factory.pin(17)
    pin.clear_states()
    d.vend("o1", "cola", 1)
    on, off = pin.states[1], pin.states[2]
    assert on.state is True and off.state is False
    assert off.timestamp >= 0.2


def test_active_low_relays_are_driven_low_to_switch_on(factory, tmp_path):
    """GPIO_ACTIVE_HIGH=false: idle high, low while the motor runs."""
    chute = chute_for(factory, active_high=False)
    d = make(tmp_path, active_high=False)
    assert factory.pin(17).state is True  # idle: off
    assert d.vend("o1", "cola", 1) is Vend.VENDED
    assert chute.energised == [17]
    assert factory.pin(17).state is True


def test_without_a_sensor_the_pulse_counts_as_vended(factory, tmp_path):
    """No sensor: weaker, a jam is not seen: the pulse alone is VENDED."""
    chute = chute_for(factory)
    chute.drop = False  # even a jam
    d = make(tmp_path, sensor=None)
    assert d.vend("o1", "cola", 1) is Vend.VENDED
    assert chute.energised == [17]


def test_a_blocked_sensor_refuses_the_vend_before_any_relay_moves(factory, tmp_path):
    """The beam is already broken (a can stuck in the chute): a drop could not be seen:
    FAILED, reason SENSOR_BLOCKED, no relay switched."""
    chute = chute_for(factory)
    d = make(tmp_path)
    factory.pin(SENSOR).drive_low()
    assert d.vend("o1", "cola", 1) is Vend.FAILED
    assert chute.energised == []
    assert results(tmp_path, "o1")[-1] == ("failed", "SENSOR_BLOCKED")


@pytest.mark.parametrize("slot", [None, 9])
def test_no_slot_or_a_slot_without_relay_is_refused_and_nothing_moves(factory, tmp_path, slot):
    """A caller without a slot, or a slot not in GPIO_RELAY_PINS: FAILED NO_SLOT, nothing moved."""
    chute = chute_for(factory)
    d = make(tmp_path)
    assert d.vend("o1", "cola", slot) is Vend.FAILED
    assert chute.energised == []
    assert results(tmp_path, "o1") == [("failed", "NO_SLOT")]


def test_a_started_only_vend_is_unknown_after_a_restart(factory, tmp_path):
    """Pins remember nothing: "started" without a result is UNKNOWN (operator), never None."""
    VendJournal(tmp_path).record("o1", "cola", STARTED, slot=1)
    chute_for(factory)
    assert make(tmp_path).outcome("o1") is Vend.UNKNOWN


def test_a_pin_error_mid_vend_is_unknown(factory, tmp_path):
    """The relay raises when switched: nobody knows what moved: UNKNOWN, no result journaled."""
    chute_for(factory)
    d = make(tmp_path)

    def broken() -> None:
        raise OSError("gpio chip gone")

    d.relays[1].on = broken
    assert d.vend("o1", "cola", 1) is Vend.UNKNOWN
    assert results(tmp_path, "o1") == [(STARTED, None)]


def test_a_relay_that_will_not_switch_off_is_tried_again_closed_and_unknown(factory, tmp_path):
    """off() raises: tried a second time, then the relay is closed (its pin released) and its
    slot dropped; the outcome is UNKNOWN (the motor may have run on), no result journaled; a
    later vend from that slot is refused NO_SLOT (counted against the slot) and moves nothing."""
    chute = chute_for(factory)
    d = make(tmp_path)
    relay = d.relays[1]
    tries: list[int] = []

    def stuck() -> None:
        tries.append(1)
        raise OSError("gpio chip gone")

    relay.off = stuck
    assert d.vend("o1", "cola", 1) is Vend.UNKNOWN
    assert len(tries) == 2
    assert relay.closed
    assert 1 not in d.relays
    assert results(tmp_path, "o1") == [(STARTED, None)]
    assert d.vend("o2", "cola", 1) is Vend.FAILED
    assert results(tmp_path, "o2")[-1] == ("failed", "NO_SLOT")
    assert chute.energised == [17]


def test_a_relay_that_switches_off_at_the_second_try_is_not_closed(factory, tmp_path):
    """One failed off() then a good one: the vend goes on as usual (the drop decides)."""
    chute_for(factory)
    d = make(tmp_path)
    relay = d.relays[1]
    real_off = relay.off
    tries: list[int] = []

    def flaky() -> None:
        tries.append(1)
        if len(tries) == 1:
            raise OSError("transient")
        real_off()

    relay.off = flaky
    assert d.vend("o1", "cola", 1) is Vend.VENDED
    assert len(tries) == 2 and not relay.closed and relay.value == 0


def test_a_sensor_that_goes_high_when_broken_is_read_with_active_low_false(factory, tmp_path):
    """GPIO_SENSOR_ACTIVE_LOW=false: pull-down, a drop drives the input high: VENDED; held
    high before the pulse it is blocked: SENSOR_BLOCKED, nothing moved."""
    chute = chute_for(factory, sensor_active_low=False)
    d = make(tmp_path, sensor_active_low=False)
    assert d.sensor.pull_up is False
    assert d.vend("o1", "cola", 1) is Vend.VENDED
    factory.pin(SENSOR).drive_high()
    assert d.vend("o2", "cola", 2) is Vend.FAILED
    assert results(tmp_path, "o2")[-1] == ("failed", "SENSOR_BLOCKED")
    assert chute.energised == [17]


def test_from_settings_builds_the_gpio_driver_from_the_pin_map(factory, tmp_path):
    """DISPENSER=gpio: a relay per GPIO_RELAY_PINS slot, the sensor, pulse and timeout."""
    chute_for(factory)
    settings = Settings.from_env(
        {
            "DISPENSER": "gpio",
            "GPIO_RELAY_PINS": "1:17,2:27",
            "GPIO_SENSOR_PIN": "23",
            "GPIO_ACTIVE_HIGH": "false",
            "VEND_PULSE_S": "0.05",
            "VAR_DIR": str(tmp_path),
        }
    )
    d = from_settings(settings)
    assert isinstance(d, GpioDispenser)
    assert sorted(d.relays) == [1, 2]
    assert d.relays[2].pin.info.name == "GPIO27"
    assert d.relays[1].active_high is False
    assert d.sensor is not None and d.pulse_s == 0.05
    assert d.sensor.pull_up is True  # GPIO_SENSOR_ACTIVE_LOW defaults to true
    assert d.vend("o1", "cola", 2) is Vend.VENDED
    d.close()
    high = Settings.from_env(
        {
            "DISPENSER": "gpio",
            "GPIO_RELAY_PINS": "1:17,2:27",
            "GPIO_SENSOR_PIN": "23",
            "GPIO_SENSOR_ACTIVE_LOW": "false",
            "VAR_DIR": str(tmp_path),
        }
    )
    assert high.gpio_sensor_active_low is False
    d2 = from_settings(high)
    assert isinstance(d2, GpioDispenser) and d2.sensor.pull_up is False


def test_lgpio_the_pis_pin_backend_is_required_on_a_pi_only():
    """gpiozero needs a pin backend on a Pi (lgpio on a Pi 5 and current Raspberry Pi OS): it
    is a requirement on Linux aarch64 and armv7l (binary wheels there) and nowhere else."""
    from packaging.requirements import Requirement

    lines = (ROOT / "requirements.txt").read_text().splitlines()
    found = [Requirement(line) for line in lines if line.startswith("lgpio")]
    assert len(found) == 1 and found[0].marker is not None
    marker = found[0].marker
    for machine, wanted in (("aarch64", True), ("armv7l", True), ("x86_64", False)):
        env = {"platform_system": "Linux", "platform_machine": machine}
        assert marker.evaluate(env) is wanted
    assert not marker.evaluate({"platform_system": "Darwin", "platform_machine": "aarch64"})
