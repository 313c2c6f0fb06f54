"""Who may call what: API keys with roles, read from ``OMNIREC_API_KEYS_FILE``.

The file (contract, see DESIGN.md) lists keys by name, each as the hex SHA-256 of the
key and its roles::

    {"keys": [{"name": "web", "sha256": "<hex>", "roles": ["recommend"]}]}

Keys are never stored in clear: a caller's ``authorization: Bearer <key>`` is hashed and
compared with every stored hash in constant time (``hmac.compare_digest``, no early
exit), so neither the key nor which entry is close leaks through timing. A key may also
carry ``"calls_per_second"``: a per-process token bucket answers ``RESOURCE_EXHAUSTED``
beyond it (each server process counts on its own, so N processes allow N times that).

This module is pure logic; the gRPC interceptor that applies it is
:mod:`service.api.interceptors`.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ConfigError

log = logging.getLogger(__name__)
audit_log = logging.getLogger("omnirec.audit")

#: What each role may call (full gRPC method names). ``admin`` may call everything.
ROLE_METHODS: Mapping[str, frozenset[str]] = {
    "recommend": frozenset(
        {
            "/omnirec.v1.Recommender/Recommend",
            "/omnirec.v1.Recommender/SimilarItems",
            "/omnirec.v1.Recommender/Rank",
        }
    ),
    "track": frozenset(
        {"/omnirec.v1.Recommender/TrackEvents", "/omnirec.v1.Recommender/UpsertItems"}
    ),
    "engagement": frozenset(
        {"/omnirec.v1.Engagement/PredictSendTime", "/omnirec.v1.Engagement/RankChannels"}
    ),
    "campaigns": frozenset({"/omnirec.v1.Campaigns/Audience"}),
    "profiles:read": frozenset({"/omnirec.v1.Profiles/GetProfile"}),
    "profiles:admin": frozenset(
        {"/omnirec.v1.Profiles/LinkIdentities", "/omnirec.v1.Profiles/ForgetUser"}
    ),
    "admin": frozenset(),
}
ROLES = tuple(ROLE_METHODS)
#: Answered without any key: load balancers and orchestrators probe health anonymously.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
#: Any valid key may call these (reflection describes the API, it reads no data).
ANY_KEY_PREFIXES = ("/grpc.reflection.",)
#: The fields a keys-file entry may have (anything else is refused: a misspelt
#: ``calls_per_second`` must not silently mean "no limit").
FIELDS = ("name", "sha256", "roles", "calls_per_second")
#: Where a keys file comes from, for error lines.
KEYS_FILE_VARIABLE = "OMNIREC_API_KEYS_FILE"

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The hex SHA-256 stored for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def valid_name(name: object) -> bool:
    """Whether ``name`` may name a key: 1-64 of A-Z a-z 0-9 _ . : - (it appears in logs)."""
    return isinstance(name, str) and bool(_NAME.match(name))


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe), prefixed so leaked keys are greppable."""
    return "omk_" + secrets.token_urlsafe(32)


@dataclass
class ApiKey:
    name: str
    sha256: str
    roles: frozenset[str]
    calls_per_second: float = 0.0
    """0 = no limit."""
    _tokens: float = field(default=0.0, repr=False)
    _refilled: float = field(default=0.0, repr=False)

    def allows(self, method: str) -> bool:
        if "admin" in self.roles or method.startswith(ANY_KEY_PREFIXES):
            return True
        return any(method in ROLE_METHODS[role] for role in self.roles)

    def take(self, now: float | None = None) -> bool:
        """One call from the token bucket (burst = one second's worth)."""
        if self.calls_per_second <= 0:
            return True
        now = time.monotonic() if now is None else now
        burst = max(self.calls_per_second, 1.0)
        self._tokens = min(burst, self._tokens + (now - self._refilled) * self.calls_per_second)
        if not self._refilled:
            self._tokens = burst
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class KeyRing:
    """The keys of one keys file."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def find(self, presented: str) -> ApiKey | None:
        """The key whose hash matches ``presented``, comparing against every entry."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found

    @classmethod
    def load(cls, path: str | Path, variable: str = KEYS_FILE_VARIABLE) -> KeyRing:
        """Read and validate a keys file; :class:`ConfigError` names what is wrong, after
        ``variable`` (where the path came from)."""
        return cls.from_data(*_read_keys_file(path, variable))

    @classmethod
    def from_data(cls, data: object, where: str = "keys") -> KeyRing:
        """Validate a parsed keys file; :class:`ConfigError` says what is wrong, after
        ``where``."""
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f'{where}: needs {{"keys": [...]}} with at least one key')
        keys, names, hashes = [], set(), set()
        for n, entry in enumerate(entries):
            at = f"{where}: keys[{n}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{at} is not an object")
            extra = sorted(set(entry) - set(FIELDS))
            if extra:
                raise ConfigError(f"{at}: unknown field {extra[0]!r}; fields: {', '.join(FIELDS)}")
            name, digest, roles = entry.get("name"), entry.get("sha256"), entry.get("roles")
            if not valid_name(name):
                raise ConfigError(f"{at}.name must be 1-64 of A-Z a-z 0-9 _ . : -")
            if not isinstance(digest, str) or not _HEX.match(digest.lower()):
                raise ConfigError(f"{at}.sha256 must be 64 hex digits (the key's SHA-256)")
            if not isinstance(roles, list) or not roles:
                raise ConfigError(f"{at}.roles must be a non-empty list of {', '.join(ROLES)}")
            unknown = [r for r in roles if not isinstance(r, str) or r not in ROLE_METHODS]
            if unknown:
                raise ConfigError(f"{at}.roles: unknown {unknown[0]!r}; roles: {', '.join(ROLES)}")
            rate = entry.get("calls_per_second", 0)
            if not isinstance(rate, int | float) or isinstance(rate, bool) or rate < 0:
                raise ConfigError(f"{at}.calls_per_second must be a number >= 0")
            if name in names or digest.lower() in hashes:
                raise ConfigError(f"{at}: duplicate name or key")
            names.add(name)
            hashes.add(digest.lower())
            keys.append(ApiKey(name, digest.lower(), frozenset(roles), float(rate)))
        return cls(keys)


def key_entry(name: str, roles: list[str], key: str) -> dict[str, object]:
    """The keys-file entry for ``key`` (what ``python -m service make-key`` prints)."""
    return {"name": name, "sha256": hash_key(key), "roles": roles}


def add_entry(
    path: str | Path, entry: dict[str, object], variable: str = KEYS_FILE_VARIABLE
) -> None:
    """Add ``entry`` to the keys file at ``path``, created when missing; an entry of the
    same name is replaced (key rotation). The file the server would read is validated
    before and after, and replaced atomically, readable by its owner only (0600)."""
    path = Path(path)
    entries: list[object] = []
    if path.exists():
        data, where = _read_keys_file(path, variable)
        KeyRing.from_data(data, where)  # refuse to extend a file the server would refuse
        entries = [e for e in data["keys"] if e["name"] != entry["name"]]
    data = {"keys": [*entries, entry]}
    KeyRing.from_data(data, f"{variable}={str(path)!r}")
    candidate = path.with_name(path.name + ".new")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is ignored when a stale candidate exists
        out.write(json.dumps(data, indent=2) + "\n")
    os.replace(candidate, path)


def _read_keys_file(path: str | Path, variable: str) -> tuple[object, str]:
    where = f"{variable}={str(path)!r}"
    try:
        return json.loads(Path(path).read_text()), where
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from None


#: The name of the key the current call came with ("anonymous" without a keys file).
caller: contextvars.ContextVar[str] = contextvars.ContextVar("omnirec_caller", default="-")


def audit(method: str, person_token: str) -> None:
    """One line per identity read or change, written before the work so an attempt that
    fails is on record too: key name, RPC, the person's token(s) (a keyed hash or an
    opaque id, never a raw email or phone; comma-separated for a link)."""
    audit_log.info("audit key=%s rpc=%s person=%s", caller.get(), method, person_token)
