"""A kiosk command, parsed by `cores.protocol.parse_client_frame`, carried out on a machine.

    page frame --parse_client_frame--> Command --execute(broker, command)--> Broker

One function for both servers that take kiosk frames: the one-machine websocket server
(services/websocket_service.py) and fleet mode's gateway (services/gateway_service.py), which
runs it on the Broker of the machine whose agent the handshake authenticated. The Broker's
client is synchronous: call it in a thread from an event loop. A command that is not allowed
now raises `CommandRefused` (nothing changed); a Redis that cannot be reached raises
`redis.RedisError`; the caller turns either into the page's ERROR frame.
"""

from __future__ import annotations

from constants.states import ClientEvent, ErrorCode
from cores.broker import Broker, CommandRefused
from cores.protocol import Command

#: The ERROR frame's message when Redis cannot be reached (the same on every kiosk server).
UNAVAILABLE_MESSAGE = "the machine is temporarily unavailable, please try again"


def execute(broker: Broker, command: Command) -> None:
    """Hand a valid kiosk command to `broker`: SHOW_MENU, ORDER or CANCEL."""
    if command.event is ClientEvent.SHOW_MENU:
        broker.show_menu()
    elif command.event is ClientEvent.ORDER:
        if command.drink_id is None or command.quantity is None:  # parse guarantees both
            raise CommandRefused(ErrorCode.BAD_VALUES, "ORDER needs id and total")
        broker.place_order(command.drink_id, command.quantity)
    elif command.event is ClientEvent.CANCEL:
        broker.request_cancel()


__all__ = ["UNAVAILABLE_MESSAGE", "execute"]
