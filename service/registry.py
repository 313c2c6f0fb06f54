"""The MLflow model registry: which model version is served, and loading it.

The registry is the source of truth for what is served: every training run that
produced a bundle registers a model version; an alias (``champion`` by default) points at
the version to serve. The service resolves the alias; training registers and moves it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from service.bundle import POPULARITY, ModelBundle
from service.config import Settings, local_store_dirs
from service.errors import ModelNotFound, OmnirecError

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT_PATH = "bundle"


@dataclass
class ServedModel:
    """A loaded bundle and the registry facts that identify it."""

    name: str
    version: str
    run_id: str
    bundle: ModelBundle

    @property
    def label(self) -> str:
        """What responses report as ``model_version``: ``<name>/<version>``, and
        ``<name>/<version> (popularity)`` when the version is the popularity baseline,
        so a caller can tell that nothing in the answer is personalised."""
        if self.bundle.kind == POPULARITY:
            return f"{self.name}/{self.version} ({POPULARITY})"
        return f"{self.name}/{self.version}"


class ModelRegistry:
    """A thin, typed face over ``MlflowClient`` for omnirec's one registered model."""

    def __init__(self, settings: Settings) -> None:
        # Importing mlflow takes seconds; only pay for it where a registry is used.
        from mlflow import MlflowClient

        for folder in local_store_dirs(settings):
            folder.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.name = settings.model_name
        self.client = MlflowClient(
            tracking_uri=settings.mlflow_tracking_uri,
            registry_uri=settings.mlflow_tracking_uri,
        )

    def version_behind(self, alias: str) -> str | None:
        """The version number the alias points at, or None when the alias is unset."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def load_alias(self, alias: str) -> ServedModel:
        """Load the bundle behind ``alias``; :class:`ModelNotFound` when there is none."""
        version = self.version_behind(alias)
        if version is None:
            raise ModelNotFound(
                f"no model version of {self.name!r} has the alias {alias!r} in "
                f"{self.settings.mlflow_tracking_uri}; train one first "
                "(python -m training train --events PATH)"
            )
        return self.load_version(version)

    def load_version(self, version: str) -> ServedModel:
        import mlflow.artifacts

        mv = self.client.get_model_version(self.name, version)
        log.info("loading %s/%s from %s", self.name, version, mv.source)
        # Remote stores download into a fresh folder; local ones are read in place. The
        # arrays are read into memory, so the download goes when the bundle is loaded
        # (every start and hot reload used to leave a copy behind in /tmp).
        with tempfile.TemporaryDirectory(prefix="omnirec-bundle-") as dst:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source,
                dst_path=dst,
                tracking_uri=self.settings.mlflow_tracking_uri,
            )
            bundle = ModelBundle.load(Path(path))
        return ServedModel(self.name, str(mv.version), mv.run_id or "", bundle)

    def register(
        self,
        run_id: str,
        artifact_uri: str,
        tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> str:
        """Create a model version from a run's bundle artifact (with ``tags`` and a
        ``description`` on the version); returns its number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self.name, description="omnirec recommendation models (bundle format v1)"
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self.client.create_model_version(
            self.name, source=artifact_uri, run_id=run_id, tags=tags, description=description
        )
        return str(mv.version)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)
        log.info("alias %r now points at %s/%s", alias, self.name, version)

    def version_tags(self, version: str) -> dict[str, str]:
        """The tags training set on ``version`` (e.g. ``omnirec.kind``)."""
        return dict(self.client.get_model_version(self.name, version).tags or {})

    def run_metrics(self, version: str) -> dict[str, float]:
        """The metrics logged by the run that produced ``version`` (empty when none)."""
        mv = self.client.get_model_version(self.name, version)
        if not mv.run_id:
            return {}
        return dict(self.client.get_run(mv.run_id).data.metrics)

    def versions(self) -> list[dict[str, str]]:
        """Every registered version, newest first, with its aliases, kind, run and the
        decision training recorded on it."""
        found = self.client.search_model_versions(f"name='{self.name}'")
        rows = []
        for listed in found:
            # search_model_versions leaves ``aliases`` empty (MLflow 3.x);
            # get_model_version fills them in.
            mv = self.client.get_model_version(self.name, str(listed.version))
            tags = mv.tags or {}
            rows.append(
                {
                    "version": str(mv.version),
                    "aliases": ",".join(sorted(mv.aliases or [])),
                    "kind": tags.get("omnirec.kind", ""),
                    "run_id": mv.run_id or "",
                    "created": str(mv.creation_timestamp),
                    "decision": tags.get("omnirec.decision", ""),
                }
            )
        return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def ensure_version_exists(registry: ModelRegistry, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        registry.client.get_model_version(registry.name, version)
    except MlflowException:
        raise OmnirecError(f"{registry.name} has no version {version!r}") from None


def quiet_mlflow() -> None:
    """Keep MLflow's own chatter (migrations, emoji run links) off the operator's screen."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # implicit logs each iteration's loss itself; training/models.py reports progress.
    logging.getLogger("implicit").setLevel(logging.WARNING)
    # The run's plots: matplotlib's notes on fonts and units are not the operator's.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
