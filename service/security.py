"""How the server may be reached: API keys, TLS, and the address it binds.

:func:`server_security` reads and checks all of it from settings in milliseconds, so
``serve`` refuses a bad keys file, a missing certificate or an unsafe address with one
line before it loads a model or probes Redis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.access import KeyRing
from service.config import Settings
from service.errors import ConfigError
from service.interceptors import LOOPBACK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSecurity:
    keys: KeyRing | None
    """None: no authentication (then the server listens on loopback only)."""
    credentials: grpc.ServerCredentials | None
    """None: plaintext."""
    host: str
    """The address to bind."""
    summary: str
    """One line for the start-up log: what protects this server."""


def server_security(settings: Settings) -> ServerSecurity:
    keys = KeyRing.load(settings.api_keys_file) if settings.api_keys_file else None
    host = settings.host or ("[::]" if keys is not None else "127.0.0.1")
    if keys is None and host not in LOOPBACK and not settings.allow_anonymous:
        raise ConfigError(
            f"OMNIREC_HOST={host!r} without OMNIREC_API_KEYS_FILE would let anyone on the "
            "network read and erase profiles: set a keys file (python -m service make-key), "
            "bind 127.0.0.1, or set OMNIREC_ALLOW_ANONYMOUS=true for a private network"
        )
    credentials = None
    if settings.tls_cert:
        cert = _read("OMNIREC_TLS_CERT", settings.tls_cert)
        key = _read("OMNIREC_TLS_KEY", settings.tls_key)
        client_ca = (
            _read("OMNIREC_TLS_CLIENT_CA", settings.tls_client_ca)
            if settings.tls_client_ca
            else None
        )
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    parts = [
        f"{len(keys.keys)} API key(s) from {settings.api_keys_file}"
        if keys is not None
        else "no API keys (anonymous, " + ("loopback only)" if host in LOOPBACK else "allowed)")
    ]
    parts.append(
        "plaintext"
        if credentials is None
        else "TLS" + (" with client certificates" if settings.tls_client_ca else "")
    )
    return ServerSecurity(keys, credentials, host, ", ".join(parts))


def _read(variable: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}={path!r}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{variable}={path!r}: not a PEM file")
    return data
