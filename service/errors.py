"""Domain exceptions, raised deep inside and mapped once at the edges.

The gRPC layer maps them to status codes (``server.py``); the command lines map them to
one readable line and a non-zero exit code (``__main__`` modules).
"""

from __future__ import annotations


class OmnirecError(Exception):
    """Base of every error omnirec raises on purpose; its message is meant for people."""


class BadInput(OmnirecError):
    """A caller's input breaks the contract; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(OmnirecError):
    """Something a caller named (an item, a person) is unknown; message names the field."""


class ConfigError(OmnirecError):
    """A setting is missing or malformed; raised before anything runs."""


class StoreUnavailable(OmnirecError):
    """The feature store (Redis) cannot be reached right now; callers may retry."""


class ModelNotFound(OmnirecError):
    """No model version is registered behind the alias the service was told to serve."""
