"""The errors of an operator action (the console and `main.py`'s operator commands): one tree.

Every one means that nothing was changed; its message is a sentence for the operator::

    OperatorError            base: .message
     |
     +-- InvalidInput        a value refused by validation: .field names the form field
     |    |                  (price, name, slot, stock, ...), so the console can show it there
     |    +-- NotFound       the drink, order or operator named does not exist (.field: drink,
     |                       order_id, name)
     |
     +-- ActionRefused       the action does not apply now: a resolution that is wrong for the
                             kind of the queue entry, an operator that already exists

Redis errors are not translated: a console or command shows "redis unreachable" for them.
"""

from __future__ import annotations

__all__ = ["ActionRefused", "InvalidInput", "NotFound", "OperatorError"]


class OperatorError(Exception):
    """Base of every refused operator action; nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(OperatorError):
    """A value the console refuses; `field` is the name of its form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class NotFound(InvalidInput):
    """No such drink, order (in the operator's queue) or operator."""


class ActionRefused(OperatorError):
    """The action does not apply to what it names, as things stand."""
