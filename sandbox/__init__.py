"""A local Midtrans Core API sandbox: the subset of shared/midtrans.md over HTTP, a product of
its own next to the machine.

It answers what the project's client (cores/midtrans.py) and the official `midtransclient`
send, with Midtrans's shapes, codes and auth, and does what the real sandbox does around it:
QR codes that expire, signed HTTP notifications, a payment simulator for testers and tests,
and the real gateway's faults on demand. Where Midtrans is silent it follows
shared/midtrans.md, "The local sandbox: where Midtrans is silent". Its ledger survives a
restart when it is given a directory.

Modules::

    server.py       Sandbox: the HTTP server, start / stop, the simulator in code
    routes.py       the Core API routes (/v2/..., the /v4 QR image)
    simulator.py    the payment simulator's routes; its page is simulator.html (+ .css, .js)
    ledger.py       transactions, state changes, expiry
    journal.py      the ledger on disk (append-only JSON Lines)
    transaction.py  one transaction: its record and the bodies Midtrans answers about it
    notifier.py     signed HTTP notifications, delivered concurrently, with retries
    faults.py       fault injection and the Idempotency-Key memory
    validation.py   request body checks
    messages.py     request, reply, and SandboxError (a refused call)

Layering: it builds on cores/ (the Midtrans wire facts, QRIS payloads, config constants,
logging) and never imports services/.
"""

from sandbox.faults import FAULTS, check_faults
from sandbox.messages import SandboxError
from sandbox.server import Sandbox
from sandbox.validation import parse_notification_urls

__all__ = ["FAULTS", "Sandbox", "SandboxError", "check_faults", "parse_notification_urls"]
