"""How the server may be reached: API keys, TLS, and the address it binds.

:func:`server_security` reads and checks all of it from settings in milliseconds, so
``serve`` refuses a bad keys file, a missing certificate or an unsafe address with one
line before it loads a model or probes Redis.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.access import KeyRing
from service.config import Settings
from service.errors import ConfigError

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


def is_loopback(host: str) -> bool:
    """Whether only this machine reaches ``host`` (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def server_security(settings: Settings) -> ServerSecurity:
    """Keys, TLS credentials and bind address from ``settings``, all checked;
    :class:`ConfigError` (one line naming the variable) when something is wrong."""
    keys = KeyRing.load(settings.api_keys_file) if settings.api_keys_file else None
    host = settings.host or ("[::]" if keys is not None else "127.0.0.1")
    if keys is None and not is_loopback(host) and not settings.allow_anonymous:
        raise ConfigError(
            f"OMNIREC_HOST={host!r} without OMNIREC_API_KEYS_FILE would let anyone on the "
            "network read and erase profiles: set a keys file (python -m service make-key), "
            "bind 127.0.0.1, or set OMNIREC_ALLOW_ANONYMOUS=true for a private network"
        )
    credentials = None
    # Settings made with dataclasses.replace skip load_settings' checks: repeat them here.
    if not settings.tls_cert and (settings.tls_key or settings.tls_client_ca):
        variable = "OMNIREC_TLS_KEY" if settings.tls_key else "OMNIREC_TLS_CLIENT_CA"
        raise ConfigError(f"{variable} needs OMNIREC_TLS_CERT too (TLS stays off without it)")
    if settings.tls_cert:
        if not settings.tls_key:
            raise ConfigError("OMNIREC_TLS_CERT needs OMNIREC_TLS_KEY too (both or neither)")
        cert = _read("OMNIREC_TLS_CERT", settings.tls_cert)
        key = _read("OMNIREC_TLS_KEY", settings.tls_key)
        client_ca = (
            _read("OMNIREC_TLS_CLIENT_CA", settings.tls_client_ca)
            if settings.tls_client_ca
            else None
        )
        _check_tls(settings)
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    where = f"listening on {host}"
    parts = [
        f"{len(keys.keys)} API key(s) from {settings.api_keys_file}, {where}"
        if keys is not None
        else f"no API keys (anonymous), {where}"
        + (" (loopback only)" if is_loopback(host) else " (OMNIREC_ALLOW_ANONYMOUS)")
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


def _check_tls(settings: Settings) -> None:
    """Parse the certificate, key and CA now: gRPC would only fail at the first handshake
    (or at bind, with a message that names no file)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback, so an encrypted key fails here instead of prompting.
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"OMNIREC_TLS_CERT={settings.tls_cert!r}, OMNIREC_TLS_KEY={settings.tls_key!r}: not "
            f"a certificate and its unencrypted private key ({_reason(exc)})"
        ) from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"OMNIREC_TLS_CLIENT_CA={settings.tls_client_ca!r}: not a PEM CA bundle "
                f"({_reason(exc)})"
            ) from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
