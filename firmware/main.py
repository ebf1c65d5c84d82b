"""Reference firmware of the vending board (MicroPython; written for a Raspberry Pi Pico).

It speaks the host's line protocol (shared/DESIGN.md "Dispenser drivers",
cores/board_protocol.py), ASCII lines ending in "\\n", 115200 8N1:

    PING                       -> PONG <firmware>
    VEND <order_id> <slot>     -> ACK <order_id> (at once), then DONE <order_id> OK
                                  or DONE <order_id> FAIL JAM|EMPTY|NO_DROP|TIMEOUT;
                                  BUSY while another vend runs; ERR <text> for a bad line
                                  or an unknown slot (refused: nothing moved)
    RESULT <order_id>          -> RESULT <order_id> OK | FAIL <reason> | BUSY | UNKNOWN

One motor relay and one IR drop sensor (break-beam, pulled up: low = beam broken) per slot,
an optional empty switch and an optional jam input (motor current sensor or limit switch)
per slot: the SLOTS table below. A vend: ACK; the empty switch says empty -> DONE FAIL EMPTY
(nothing moved); else the relay runs the motor until the slot's sensor sees the drop (OK),
the jam input trips (JAM), the motor's cycle ends without a drop (NO_DROP, with a cycle
switch) or VEND_TIMEOUT_MS passes (TIMEOUT). The motor is always switched off first.

The board remembers the last MEMORY vends in RAM (RESULT). A VEND for an order it remembers
moves nothing: ACK and the remembered DONE. (After a power cut the memory is empty: RESULT
answers UNKNOWN and the host hands the order to a person.)

The tests' simulated board (tests/board_sim.py) follows the same protocol, and
tests/test_serial_dispenser.py runs this file's `Board` against the host driver.
"""

try:  # MicroPython
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython (the host's tests import this file with fake pins)
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


FIRMWARE = "drinkboard-mpy 1.0.0"

# --- configuration ------------------------------------------------------------------------------

#: slot -> pins (GPn numbers on a Pico). "sensor": the IR receiver's output; "empty": a switch
#: closed to ground while the slot is empty (None: not fitted); "jam": an input pulled low on
#: over-current or a stuck spiral (None: not fitted); "cycle": the spiral's cam switch, closed
#: to ground once per turn (None: not fitted, a vend then ends by drop, jam or timeout).
SLOTS = {
    1: {"motor": 2, "sensor": 10, "empty": None, "jam": None, "cycle": None},
    2: {"motor": 3, "sensor": 11, "empty": None, "jam": None, "cycle": None},
    3: {"motor": 4, "sensor": 12, "empty": None, "jam": None, "cycle": None},
    4: {"motor": 5, "sensor": 13, "empty": None, "jam": None, "cycle": None},
}
#: Most relay modules switch on when their IN pin is pulled low.
RELAY_ACTIVE_LOW = True
#: No drop within this long of the motor starting: DONE FAIL TIMEOUT (keep it below the
#: host's VEND_TIMEOUT_S, 30 s by default, so the host hears the DONE).
VEND_TIMEOUT_MS = 8000
#: After the cycle switch closes, a product still falling has this long to cross the beam.
DROP_GRACE_MS = 1500
#: Vends remembered for RESULT.
MEMORY = 32
#: "usb": the Pico's USB serial (the host sees /dev/ttyACM0); "uart": UART0 on GP0 (TX) and
#: GP1 (RX) at 115200 8N1 (the host sees /dev/serial0 or a USB-TTL adapter).
LINK = "usb"
MAX_LINE = 200


class Board:
    """The protocol and the vend state machine; `pin(number, output)` makes a pin object
    with value() / value(v), `write(text)` sends a line's text (without its "\\n")."""

    def __init__(self, pin, write, slots=None, clock=ticks_ms):
        self.write = write
        self.clock = clock
        self.slots = {}
        for number, cfg in (slots or SLOTS).items():
            motor = pin(cfg["motor"], True)
            self.slots[number] = {
                "motor": motor,
                "sensor": pin(cfg["sensor"], False),
                "empty": None if cfg.get("empty") is None else pin(cfg["empty"], False),
                "jam": None if cfg.get("jam") is None else pin(cfg["jam"], False),
                "cycle": None if cfg.get("cycle") is None else pin(cfg["cycle"], False),
            }
            self.motor(number, False)
        self.memory = []  # [(order_id, "OK" | "FAIL <reason>")], oldest first
        self.current = None  # (order_id, slot, started_ms, cycle_done_ms)
        self.buffer = b""

    # --- the line ---------------------------------------------------------------------------

    def feed(self, data):
        """Bytes from the host; every whole line is answered."""
        self.buffer += data
        while b"\n" in self.buffer:
            raw, _, self.buffer = self.buffer.partition(b"\n")
            self.handle(raw.rstrip(b"\r"))
        if len(self.buffer) > MAX_LINE:
            self.buffer = b""
            self.send("ERR line too long")

    def send(self, text):
        self.write(text)

    def handle(self, raw):
        try:
            words = raw.decode().split(" ")
        except UnicodeError:
            self.send("ERR not ascii")
            return
        if words == ["PING"]:
            self.send("PONG " + FIRMWARE)
        elif len(words) == 3 and words[0] == "VEND" and words[1]:
            self.vend(words[1], words[2])
        elif len(words) == 2 and words[0] == "RESULT" and words[1]:
            self.result(words[1])
        else:
            self.send("ERR unknown command")

    def remembered(self, order_id):
        for known, outcome in self.memory:
            if known == order_id:
                return outcome
        return None

    def result(self, order_id):
        if self.current is not None and self.current[0] == order_id:
            self.send("RESULT " + order_id + " BUSY")
            return
        outcome = self.remembered(order_id)
        self.send("RESULT " + order_id + " " + (outcome or "UNKNOWN"))

    # --- a vend -----------------------------------------------------------------------------

    def vend(self, order_id, slot_text):
        try:
            slot = int(slot_text)
        except ValueError:
            slot = None
        if slot not in self.slots:
            self.send("ERR bad slot " + slot_text)
            return
        outcome = self.remembered(order_id)
        if outcome is not None:  # never twice: the remembered answer, nothing moves
            self.send("ACK " + order_id)
            self.send("DONE " + order_id + " " + outcome)
            return
        if self.current is not None:
            if self.current[0] == order_id:
                self.send("ACK " + order_id)  # the DONE to come answers both
            else:
                self.send("BUSY")
            return
        io = self.slots[slot]
        if io["sensor"].value() == 0:
            # The beam is broken before the motor turns (a can stuck in it, a dirty or
            # misaligned sensor): a drop could not be told apart, so refuse, moving nothing.
            self.send("ERR sensor blocked")
            return
        self.send("ACK " + order_id)
        if io["empty"] is not None and io["empty"].value() == 0:
            self.finish(order_id, slot, "FAIL EMPTY")
            return
        self.current = [order_id, slot, self.clock(), None]
        self.motor(slot, True)

    def poll(self):
        """Called in the main loop: watch the running vend's inputs."""
        if self.current is None:
            return
        order_id, slot, started, cycle_done = self.current
        io = self.slots[slot]
        now = self.clock()
        if io["sensor"].value() == 0:  # the beam is broken: the product fell
            self.finish(order_id, slot, "OK")
        elif io["jam"] is not None and io["jam"].value() == 0:
            self.finish(order_id, slot, "FAIL JAM")
        elif ticks_diff(now, started) > VEND_TIMEOUT_MS:
            self.finish(order_id, slot, "FAIL TIMEOUT")
        elif io["cycle"] is not None:
            if cycle_done is None and ticks_diff(now, started) > 200 and io["cycle"].value() == 0:
                self.motor(slot, False)  # one turn done; the product may still be falling
                self.current[3] = now
            elif cycle_done is not None and ticks_diff(now, cycle_done) > DROP_GRACE_MS:
                self.finish(order_id, slot, "FAIL NO_DROP")

    def finish(self, order_id, slot, outcome):
        self.motor(slot, False)
        self.current = None
        self.memory.append((order_id, outcome))
        del self.memory[:-MEMORY]
        self.send("DONE " + order_id + " " + outcome)

    def motor(self, slot, on):
        self.slots[slot]["motor"].value(1 if on != RELAY_ACTIVE_LOW else 0)


def run():  # pragma: no cover (runs on the board)
    import select
    import sys

    from machine import UART, Pin

    def pin(number, output):
        if output:
            return Pin(number, Pin.OUT)
        return Pin(number, Pin.IN, Pin.PULL_UP)

    if LINK == "uart":
        uart = UART(0, baudrate=115200, bits=8, parity=None, stop=1, tx=Pin(0), rx=Pin(1))

        def write(text):
            uart.write(text + "\n")

        def read():
            return uart.read(uart.any()) if uart.any() else b""

    else:
        poller = select.poll()
        poller.register(sys.stdin, select.POLLIN)

        def write(text):
            sys.stdout.write(text + "\n")

        def read():
            data = b""
            while poller.poll(0) and len(data) < 64:
                data += sys.stdin.buffer.read(1)
            return data

    board = Board(pin, write)
    while True:
        data = read()
        if data:
            board.feed(data)
        board.poll()


if __name__ == "__main__":
    run()
