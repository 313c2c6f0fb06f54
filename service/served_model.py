"""The served model, swappable while serving: the :class:`Engine` (a model, its
recommender and send-time priors) and the :class:`ModelHolder` that holds the live one
and one per experiment arm. The gRPC servicers, the campaign planner and the audience
benchmarks read engines from a holder; nothing here knows about gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from service import metrics
from service.engagement import priors_of
from service.errors import ConfigError
from service.experiments import Arm, Assignment, Experiments
from service.recommender import Recommender, ServingParams
from service.registry import ServedModel
from service.send_time import Priors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    """A model and its recommender; replaced as a whole when the alias moves."""

    model: ServedModel
    recommender: Recommender
    priors: Priors
    """Send-time and channel priors learnt with this model."""

    @classmethod
    def of(cls, model: ServedModel, params: ServingParams) -> Engine:
        return cls(model, Recommender(model.bundle, params), priors_of(model.bundle.metadata))


class ModelHolder:
    """Holds the live :class:`Engine`, and one per experiment arm that serves another
    model or other options; readers take one reference per request."""

    def __init__(
        self,
        model: ServedModel,
        params: ServingParams,
        experiments: Experiments | None = None,
        load_arm: Callable[[Arm], ServedModel] | None = None,
    ) -> None:
        self.params = params
        self.engine = Engine.of(model, params)
        self.experiments = experiments or Experiments.none()
        self._load_arm = load_arm
        self.arm_engines: dict[tuple[str, str], Engine] = {}
        metrics.show_model(model.label)
        self.refresh_arms()

    def engine_for(self, assignment: Assignment | None) -> Engine:
        if assignment is None:
            return self.engine
        key = (assignment.experiment.name, assignment.arm.name)
        return self.arm_engines.get(key, self.engine)

    def swap(self, model: ServedModel) -> None:
        engine = Engine.of(model, self.params)
        previous = self.engine.model.label
        # One reference assignment: a request sees the old engine or the new one.
        self.engine = engine
        metrics.show_model(model.label, previous)
        log.info("now serving %s", model.label)
        self.refresh_arms()

    def refresh_arms(self) -> None:
        """(Re)build the arms' engines: an arm on an alias follows it; an arm on the
        default model follows the default. Arms that would serve exactly the default
        share its engine. Blocking (registry calls, model loads)."""
        engines: dict[tuple[str, str], Engine] = {}
        loaded: dict[str, ServedModel] = {}
        for experiment, arm in self.experiments.arms():
            model = self.engine.model
            if arm.model != "default":
                if self._load_arm is None:
                    raise ConfigError(f"experiment {experiment.name!r}: cannot load arm models")
                model = self._load_arm(arm)
                model = loaded.setdefault(model.version, model)
            params = replace(self.params, **arm.serving)  # type: ignore[arg-type]
            if model.version == self.engine.model.version and params == self.params:
                continue
            key = (experiment.name, arm.name)
            old = self.arm_engines.get(key)
            same = old is not None and old.model.version == model.version
            engines[key] = old if same else Engine.of(model, params)  # type: ignore[assignment]
            if not same:
                log.info("experiment %s, arm %s: %s", experiment.name, arm.name, model.label)
        self.arm_engines = engines
