"""Domain exceptions, raised deep inside and mapped once at the edges.

The gRPC layer maps them to status codes (``service/api/rpc.py``); the command lines map them to
one readable line and a non-zero exit code (``__main__`` modules).
"""

from __future__ import annotations

#: Characters of a caller's value an error message quotes; the rest is cut ("…"), so a
#: megabyte of bad input never comes back as a megabyte of error (gRPC refuses trailers
#: above ~8 KB with a bare RESOURCE_EXHAUSTED, and messages end up in logs).
QUOTED_CHARS = 40
#: Longest reason a :class:`BadInput` carries, in UTF-8 bytes (what gRPC sends; a
#: character takes up to 4): the safety net for a message that quotes input without
#: :func:`quote`.
MAX_REASON_BYTES = 300


def quote(value: str) -> str:
    """``value`` as an error message shows it: its ``repr``, cut after
    :data:`QUOTED_CHARS` characters."""
    if len(value) <= QUOTED_CHARS:
        return repr(value)
    return f"{value[:QUOTED_CHARS]!r}…"


class OmnirecError(Exception):
    """Base of every error omnirec raises on purpose; its message is meant for people."""


class BadInput(OmnirecError):
    """A caller's input breaks the contract; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        encoded = reason.encode()
        if len(encoded) > MAX_REASON_BYTES:
            reason = encoded[:MAX_REASON_BYTES].decode(errors="ignore") + "…"
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DeadlineExpired(OmnirecError):
    """The caller's deadline has passed (or is about to): work stops before it writes."""


class AccountConflict(OmnirecError):
    """A link would merge two accounts without the caller asking for it."""


class NotFound(OmnirecError):
    """Something a caller named (an item, a person) is unknown; message names the field."""


class NotAllowed(OmnirecError):
    """What was asked cannot be done for this person now (e.g. a channel they
    unsubscribed from); the message names the field and why. FAILED_PRECONDITION."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class ConfigError(OmnirecError):
    """A setting is missing or malformed; raised before anything runs."""


class StoreUnavailable(OmnirecError):
    """The feature store (Redis) cannot be reached right now; callers may retry."""


class ModelNotFound(OmnirecError):
    """No model version is registered behind the alias the service was told to serve."""
