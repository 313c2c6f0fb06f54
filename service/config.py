"""Settings shared by the service and the training job: one typed object, loaded once.

Every setting comes from an environment variable with a documented default (the table in
README.md is generated from ``SETTINGS``); command-line flags override them. Values are
validated before anything runs, and a bad one fails with one line naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.ann import SETTINGS as ANN_SETTINGS
from service.errors import ConfigError
from service.store.plans import CLUSTER_SCHEMES, parse_cluster_url

if TYPE_CHECKING:
    from service.store import FeatureStore

DEFAULT_MLFLOW_URI = "sqlite:///.omnirec/mlflow.db"


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; build it with :func:`load_settings`."""

    redis_url: str = "redis://localhost:6379/0"
    """REDIS_URL: the feature store. ``redis://``, ``rediss://`` (TLS) or ``unix://``; a
    Redis Cluster by ``redis+cluster://host:port[,host:port…]`` (``rediss+cluster://`` with
    TLS, options as for ``rediss://``); see "Redis Cluster" in README.md."""
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_URI
    """MLFLOW_TRACKING_URI: MLflow tracking and registry store (sqlite file by default)."""
    artifact_root: str = ".omnirec/mlartifacts"
    """OMNIREC_ARTIFACT_ROOT: where a new MLflow experiment keeps artifacts, when omnirec
    creates the experiment; ignored when the experiment already exists."""
    experiment: str = "omnirec"
    """OMNIREC_EXPERIMENT: MLflow experiment of training runs."""
    model_name: str = "omnirec"
    """OMNIREC_MODEL_NAME: registered model name in the MLflow registry."""
    model_alias: str = "champion"
    """OMNIREC_MODEL_ALIAS: alias of the model version the service serves."""
    key_prefix: str = "omnirec"
    """OMNIREC_KEY_PREFIX: prefix of every Redis key, so several deployments share a Redis."""
    port: int = 50051
    """OMNIREC_PORT: gRPC port of ``serve`` (0 picks a free one)."""
    metrics_port: int = 0
    """OMNIREC_METRICS_PORT: Prometheus ``/metrics`` over HTTP on this port, bound to the
    gRPC server's address (0: off). With several processes, one endpoint sums them."""
    host: str = ""
    """OMNIREC_HOST: address the gRPC server binds. Unset: every interface (``[::]``) when
    API keys are configured, ``127.0.0.1`` without them. A non-loopback address without
    keys refuses to start unless ``OMNIREC_ALLOW_ANONYMOUS=true``."""
    experiments_file: str = ""
    """OMNIREC_EXPERIMENTS_FILE: A/B experiments (JSON, see README "A/B experiments"):
    which people get which model or serving options; answers say their experiment and
    arm. Read at start; restart (or roll the replicas) to change it."""
    api_keys_file: str = ""
    """OMNIREC_API_KEYS_FILE: JSON file of API keys (SHA-256 hashes) and their roles; see
    "Security" in README.md. Unset: no authentication, loopback only."""
    allow_anonymous: bool = False
    """OMNIREC_ALLOW_ANONYMOUS: ``true`` lets a server without API keys bind a
    non-loopback address (a private network the operator vouches for)."""
    tls_cert: str = ""
    """OMNIREC_TLS_CERT: PEM certificate chain of the server; with OMNIREC_TLS_KEY it turns
    TLS on."""
    tls_key: str = ""
    """OMNIREC_TLS_KEY: PEM private key of OMNIREC_TLS_CERT."""
    tls_client_ca: str = ""
    """OMNIREC_TLS_CLIENT_CA: PEM CA bundle; when set, clients must present a certificate
    it signed (mutual TLS)."""
    max_concurrent_calls: int = 256
    """OMNIREC_MAX_CONCURRENT_CALLS: calls in flight per process beyond which new ones get
    RESOURCE_EXHAUSTED at once (health checks are never refused)."""
    max_request_bytes: int = 1_048_576
    """OMNIREC_MAX_REQUEST_BYTES: largest request message accepted (RESOURCE_EXHAUSTED
    above it)."""
    processes: int = 1
    """OMNIREC_PROCESSES: server processes sharing the port (SO_REUSEPORT, Linux). One
    Python process uses about one core; run one per core to use them all."""
    workers: int = 4
    """OMNIREC_WORKERS: worker threads of each server process for the rare blocking work
    (catalogue reloads and writes, identity links, erasures, model reloads). Calls are
    answered on one asyncio loop per process; scale out with processes / replicas."""
    default_limit: int = 10
    """OMNIREC_DEFAULT_LIMIT: items returned when a request leaves ``limit`` at 0."""
    max_limit: int = 100
    """OMNIREC_MAX_LIMIT: the largest ``limit`` a request may ask for."""
    history_length: int = 200
    """OMNIREC_HISTORY_LENGTH: recent events kept per person in Redis."""
    engagement_length: int = 500
    """OMNIREC_ENGAGEMENT_LENGTH: live engagement events (deliveries, opens, visits) kept
    per person for send-time and channel answers."""
    engagement_half_life_days: float = 30.0
    """OMNIREC_ENGAGEMENT_HALF_LIFE_DAYS: recency half-life of send-time and channel
    evidence where training learnt none (each run learns its own from the data)."""
    default_timezone: str = "UTC"
    """OMNIREC_DEFAULT_TIMEZONE: zone for people whose zone no event or request gives."""
    explore_rate: float = 0.0
    """OMNIREC_EXPLORE_RATE: share of PredictSendTime answers drawn by Thompson sampling
    instead of the best slot, so future data stops echoing past schedules (0 = never)."""
    min_message_gap_hours: float = 0.0
    """OMNIREC_MIN_MESSAGE_GAP_HOURS: the least time between two messages to one person on
    one channel (the fatigue gap); send times are pushed past it (0 = no gap)."""
    max_messages_per_day: int = 0
    """OMNIREC_MAX_MESSAGES_PER_DAY: the most messages to one person over all channels in
    any 24 hours; send times are pushed past it (0 = no cap)."""
    recency_half_life_events: float = 0.0
    """OMNIREC_RECENCY_HALF_LIFE_EVENTS: in a person's history, an event this many
    positions back counts half as much as the newest when serving. 0 (the default): the
    half-life training chose by validation for the served model (10 for models from
    before it chose one)."""
    recent_events: int = 5
    """OMNIREC_RECENT_EVENTS: reasons call an item among the newest this many events
    ``recent: <item>`` (older ones ``similar: <item>``)."""
    recently_seen_hours: float = 24.0
    """OMNIREC_RECENTLY_SEEN_HOURS: Recommend leaves out items the person viewed, clicked,
    favourited or carted this recently, unless the request sets ``exclude_seen`` (true:
    everything in their history; false: nothing for having been seen). 0: off."""
    repurchase_days: str = ""
    """OMNIREC_REPURCHASE_DAYS: ``category=days,…``: bought items of these categories
    (consumables) come back into Recommend this many days after the person last bought
    them; other purchases stay out while ``exclude_purchased`` (default true)."""
    ann: str = "auto"
    """OMNIREC_ANN: Recommend with an ALS or BPR model finds its candidates by approximate
    nearest-neighbour search instead of scoring every item. ``auto``: above 100,000
    items, with the index training shipped in the bundle; ``off``: always exact;
    ``hnsw`` or ``ivf``: that index kind at any size (built at start when the bundle
    ships none of it). Filters, exclusions and blends stay exact. Training reads it too:
    the index it ships."""
    trending_half_life_hours: float = 6.0
    """OMNIREC_TRENDING_HALF_LIFE_HOURS: how fast live "trending" counts fade."""
    max_batch: int = 1000
    """OMNIREC_MAX_BATCH: most events per TrackEvents call (and items per UpsertItems)."""
    stream_maxlen: int = 5_000_000
    """OMNIREC_STREAM_MAXLEN: live events kept in the Redis stream until exported; size
    it for the export interval (export-events reports any gap)."""
    grace_seconds: float = 10.0
    """OMNIREC_GRACE_SECONDS: how long SIGTERM waits for in-flight calls."""
    drain_seconds: float = 5.0
    """OMNIREC_DRAIN_SECONDS: on SIGTERM, how long health answers NOT_SERVING while calls
    are still served, so load balancers stop sending new ones before the server stops."""
    model_poll_seconds: float = 30.0
    """OMNIREC_MODEL_POLL_SECONDS: how often the service checks whether the alias moved
    (0 turns hot reload off)."""
    redis_timeout_seconds: float = 0.5
    """OMNIREC_REDIS_TIMEOUT_SECONDS: socket timeout of each Redis call."""
    keep_publications: int = 2
    """OMNIREC_KEEP_PUBLICATIONS: published feature sets kept in Redis (the live one and
    its predecessors), so a replica still reading the previous one never sees it vanish."""
    spark_master: str = "local[*]"
    """OMNIREC_SPARK_MASTER: where ``train --backend spark`` fits: ``local[*]`` (this
    machine, every core), ``local[N]``, ``spark://host:port`` (a standalone cluster),
    ``yarn`` or ``k8s://…``; see "Training on Spark" in README.md."""
    train_budget_seconds: float = 120.0
    """OMNIREC_TRAIN_BUDGET_SECONDS: seconds ``train --model auto`` may spend fitting and
    ranking validation's model candidates (``--budget-seconds`` overrides). ALS always
    runs; a later candidate whose predicted fit time is more than what is left is left
    out, and one whose fit passes it is stopped, each with its reason logged. The chosen
    model is then fitted twice more (holdout, final): on 2 cores the default keeps a
    16k-item shop's whole run within 5 minutes. See "Training cost" in README.md."""
    identity_secret: str = ""
    """OMNIREC_IDENTITY_SECRET: key of the keyed hash (HMAC-SHA256) that stands in for raw
    emails and phone numbers. Required by ``serve`` and ``train`` (the demo makes one up);
    keep it stable: a new key makes known emails and phones unknown."""
    log_level: str = "INFO"
    """OMNIREC_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""


#: Environment variable of each field. The first three are the names deployments use
#: already (see DESIGN.md), the rest carry the ``OMNIREC_`` prefix.
ENV_NAMES: Mapping[str, str] = {
    f.name: (
        {"redis_url": "REDIS_URL", "mlflow_tracking_uri": "MLFLOW_TRACKING_URI"}.get(f.name)
        or f"OMNIREC_{f.name.upper()}"
    )
    for f in fields(Settings)
}

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The Spark master URLs Spark 4 accepts (its own parser says more, later and less plainly).
_SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,\s*[1-9]\d*)?\])?"
    r"|spark://[^\s,:/]+:\d+(,[^\s,:/]+:\d+)*"
    r"|yarn|k8s://\S+"
)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``), then ``overrides``.

    Overrides whose value is ``None`` are ignored, so CLI flags left unset fall through
    to the environment. Raises :class:`ConfigError` naming the variable at fault.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = ENV_NAMES[f.name]
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        values[f.name] = _convert(name, raw, type(getattr(Settings, f.name)))
    settings = replace(Settings(), **values)
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    _validate(settings)
    return settings


def _convert(name: str, raw: str, kind: Callable[[str], Any]) -> Any:
    if kind is bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} must be true or false")
    try:
        return kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def _validate(s: Settings) -> None:
    def need(ok: bool, field: str, reason: str) -> None:
        if not ok:
            value = getattr(s, field)
            if field == "redis_url":  # the message reaches logs: not the password
                value = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", value)
            raise ConfigError(f"{ENV_NAMES[field]}={value!r}: {reason}")

    need(
        s.redis_url.partition("://")[0] in ("redis", "rediss", "unix", *CLUSTER_SCHEMES),
        "redis_url",
        "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://",
    )
    if s.redis_url.partition("://")[0] in CLUSTER_SCHEMES:
        try:
            parse_cluster_url(s.redis_url)
        except ValueError as exc:
            need(False, "redis_url", str(exc))
    need(bool(s.mlflow_tracking_uri), "mlflow_tracking_uri", "must not be empty")
    need(0 <= s.port <= 65535, "port", "must be 0..65535")
    need(0 <= s.metrics_port <= 65535, "metrics_port", "must be 0..65535 (0: off)")
    need(
        s.metrics_port == 0 or s.metrics_port != s.port,
        "metrics_port",
        "must differ from OMNIREC_PORT",
    )
    need(s.workers >= 1, "workers", "must be at least 1")
    need(s.processes >= 1, "processes", "must be at least 1")
    need(s.processes == 1 or s.port != 0, "processes", "several processes need a fixed port")
    need(s.max_limit >= 1, "max_limit", "must be at least 1")
    need(1 <= s.default_limit <= s.max_limit, "default_limit", "must be 1..max_limit")
    need(s.history_length >= 1, "history_length", "must be at least 1")
    need(s.train_budget_seconds > 0, "train_budget_seconds", "must be more than 0")
    need(s.grace_seconds >= 0, "grace_seconds", "must not be negative")
    need(s.drain_seconds >= 0, "drain_seconds", "must not be negative")
    need(s.max_concurrent_calls >= 1, "max_concurrent_calls", "must be at least 1")
    need(s.max_request_bytes >= 1024, "max_request_bytes", "must be at least 1024")
    need(
        bool(s.tls_cert) == bool(s.tls_key),
        "tls_cert",
        "needs OMNIREC_TLS_KEY too (both or neither)",
    )
    need(
        not s.tls_client_ca or bool(s.tls_cert),
        "tls_client_ca",
        "needs OMNIREC_TLS_CERT and OMNIREC_TLS_KEY",
    )
    need(s.engagement_length >= 1, "engagement_length", "must be at least 1")
    need(s.engagement_half_life_days > 0, "engagement_half_life_days", "must be positive")
    need(_zone_ok(s.default_timezone), "default_timezone", "is not a known IANA time zone")
    need(0 <= s.explore_rate <= 1, "explore_rate", "must be between 0 and 1")
    need(
        0 <= s.min_message_gap_hours <= 24 * 90,
        "min_message_gap_hours",
        "must be between 0 and 2160 (90 days)",
    )
    need(s.max_messages_per_day >= 0, "max_messages_per_day", "must not be negative")
    need(
        s.recency_half_life_events >= 0,
        "recency_half_life_events",
        "must be positive (or 0: the model's own)",
    )
    need(s.recent_events >= 0, "recent_events", "must not be negative")
    need(s.recently_seen_hours >= 0, "recently_seen_hours", "must not be negative")
    try:
        repurchase_days(s)
    except ValueError as exc:
        need(False, "repurchase_days", str(exc))
    need(s.ann in ANN_SETTINGS, "ann", f"must be one of {', '.join(ANN_SETTINGS)}")
    need(s.trending_half_life_hours > 0, "trending_half_life_hours", "must be positive")
    need(s.max_batch >= 1, "max_batch", "must be at least 1")
    need(s.stream_maxlen >= 1000, "stream_maxlen", "must be at least 1000")
    need(s.model_poll_seconds >= 0, "model_poll_seconds", "must not be negative")
    need(s.redis_timeout_seconds > 0, "redis_timeout_seconds", "must be positive")
    need(s.keep_publications >= 2, "keep_publications", "must be at least 2")
    need(
        bool(_SPARK_MASTER.fullmatch(s.spark_master)),
        "spark_master",
        "must be local, local[N], local[*], spark://host:port[,host:port…], yarn or k8s://…",
    )
    need(s.log_level.upper() in _LOG_LEVELS, "log_level", f"must be one of {_LOG_LEVELS}")
    for field in ("experiment", "model_name", "model_alias", "key_prefix"):
        need(bool(getattr(s, field)), field, "must not be empty")
    # Keys carry Redis Cluster hash tags after the prefix; braces in it would move them.
    need("{" not in s.key_prefix and "}" not in s.key_prefix, "key_prefix", "must not hold { or }")


def read_env_file(path: str | Path) -> dict[str, str]:
    """``NAME=value`` lines (blank lines and ``#`` comments skipped), as ``make up``
    writes them; :class:`ConfigError` naming the line that is not one."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: cannot read it ({exc.strerror})") from None
    values = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--env-file {path}, line {n}: not NAME=value")
        values[name.strip()] = value.strip()
    return values


def repurchase_days(settings: Settings) -> dict[str, float]:
    """``OMNIREC_REPURCHASE_DAYS`` as category → days; ValueError says what is wrong."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in settings.repurchase_days.split(","))):
        category, sep, raw = part.rpartition("=")
        if not sep or not category.strip():
            raise ValueError(f"{part!r} is not category=days")
        try:
            days = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number of days (for {category})") from None
        if not days > 0 or days == float("inf"):
            raise ValueError(f"days must be a positive number (for {category})")
        out[category.strip()] = days
    return out


def identity_secret(settings: Settings) -> str:
    """The identity key, or :class:`ConfigError` saying how to set one."""
    if len(settings.identity_secret) < 16:
        raise ConfigError(
            "OMNIREC_IDENTITY_SECRET must be set to a secret of at least 16 characters "
            "(e.g. `openssl rand -hex 32`); it keys the hash that stands in for emails and "
            "phones"
        )
    return settings.identity_secret


def _zone_ok(name: str) -> bool:
    from service.events import is_valid_timezone

    return is_valid_timezone(name)


def feature_store(settings: Settings, timeout_seconds: float | None = None) -> FeatureStore:
    """The feature store these settings describe (client connects lazily)."""
    from service.store import FeatureStore
    from service.store.plans import connect

    return FeatureStore(
        connect(settings.redis_url, timeout_seconds or settings.redis_timeout_seconds),
        settings.key_prefix,
        history_length=settings.history_length,
        engagement_length=settings.engagement_length,
        trending_half_life_hours=settings.trending_half_life_hours,
        stream_maxlen=settings.stream_maxlen,
    )


def local_store_dirs(settings: Settings) -> list[Path]:
    """Folders a local (sqlite / file) MLflow store needs, so they can be created first."""
    dirs = []
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        dirs.append(Path(uri.removeprefix("sqlite:///")).parent)
    if "://" not in settings.artifact_root:
        dirs.append(Path(settings.artifact_root))
    return dirs


def settings_table() -> str:
    """Markdown table of every setting: variable, default, meaning (for README.md)."""
    doc = _field_docs()
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = getattr(Settings, f.name)
        default = default if default != "" else "(none)"
        text = " ".join(doc.get(f.name, "").split()).split(": ", 1)[-1].replace("``", "`")
        rows.append(f"| `{ENV_NAMES[f.name]}` | `{default}` | {text} |")
    return "\n".join(rows)


def _field_docs() -> dict[str, str]:
    # Attribute docstrings are not kept at run time; read them from the source instead.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
        ):
            docs[node.target.id] = after.value.value
    return docs
