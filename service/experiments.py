"""A/B experiments (``OMNIREC_EXPERIMENTS_FILE``, a contract): which people an experiment
takes, which arm each gets, and what an arm serves.

The file::

    {"experiments": [
      {"name": "new-model", "share": 100,
       "arms": [{"name": "control", "weight": 50, "model_alias": "champion"},
                {"name": "treatment", "weight": 50, "model_version": 3,
                 "serving": {"transition_weight": 0}}]}]}

* ``share`` (optional, percent, default 100): the part of all people the experiment
  takes. Experiments listed one after another take consecutive parts, so one person is
  in at most one experiment (their sum may not pass 100); the rest see the default.
* An arm serves ``model_alias`` or ``model_version`` (or, naming neither, the model the
  server serves anyway), optionally with ``serving`` options: ``recency_half_life_events``
  and ``transition_weight`` (overriding the model's validated blend).
* ``weight``: arms split the experiment's people in proportion to their weights.

Assignment is a keyed hash (HMAC-SHA256 with the identity secret) of the **resolved
person**: the same person lands in the same arm in every process, after every restart,
and a cookie linked to a login becomes that login's person and so that person's arm.
Keyed, so nobody outside can compute or steer their own arm. Changing an experiment's
name, share or weights reshuffles people: start a new experiment instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import ConfigError

VARIABLE = "OMNIREC_EXPERIMENTS_FILE"
#: Experiment and arm names: they travel inside recommendation ids (``exp:arm:hex``).
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: The serving options an arm may set.
SERVING_OPTIONS = ("recency_half_life_events", "transition_weight")
_SCALE = float(2**64)


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    model_alias: str | None = None
    model_version: str | None = None
    serving: dict[str, float] = field(default_factory=dict, hash=False)

    @property
    def model(self) -> str:
        """``alias:<name>``, ``version:<n>`` or ``default``: which model serves the arm."""
        if self.model_version is not None:
            return f"version:{self.model_version}"
        if self.model_alias is not None:
            return f"alias:{self.model_alias}"
        return "default"


@dataclass(frozen=True)
class Experiment:
    name: str
    share: float
    arms: tuple[Arm, ...]

    def arm(self, point: float) -> Arm:
        """The arm at ``point`` in [0, 1) of the weights laid end to end."""
        total = sum(a.weight for a in self.arms)
        at = point * total
        for arm in self.arms:
            if at < arm.weight:
                return arm
            at -= arm.weight
        return self.arms[-1]


@dataclass(frozen=True)
class Assignment:
    experiment: Experiment
    arm: Arm


@dataclass(frozen=True)
class Experiments:
    experiments: tuple[Experiment, ...]
    secret: bytes = field(repr=False, default=b"")

    @classmethod
    def none(cls) -> Experiments:
        return cls(())

    @classmethod
    def load(cls, path: str, secret: str) -> Experiments:
        """Read and check ``path``; :class:`ConfigError` naming the entry and field."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{VARIABLE}={path}: cannot read it ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{VARIABLE}={path}: not JSON ({exc.msg}, line {exc.lineno})"
            ) from None
        return cls(_parse(data, path), secret.encode())

    def assign(self, person: str) -> Assignment | None:
        """The experiment and arm of ``person``, or None when no experiment takes them."""
        if not self.experiments:
            return None
        # One draw places the person among the experiments' shares, another (per
        # experiment, so arms of different experiments are independent) among its arms.
        slot = self._point("share", person) * 100.0
        start = 0.0
        for experiment in self.experiments:
            if start <= slot < start + experiment.share:
                return Assignment(experiment, experiment.arm(self._point(experiment.name, person)))
            start += experiment.share
        return None

    def arms(self) -> list[tuple[Experiment, Arm]]:
        return [(e, a) for e in self.experiments for a in e.arms]

    def _point(self, salt: str, person: str) -> float:
        digest = hmac.new(self.secret, f"{salt}\x00{person}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / _SCALE


def _parse(data: Any, path: str) -> tuple[Experiment, ...]:
    def bad(where: str, reason: str) -> ConfigError:
        return ConfigError(f"{VARIABLE}={path}: {where}: {reason}")

    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list):
        raise bad("top level", 'must be {"experiments": [...]}')
    out: list[Experiment] = []
    names: set[str] = set()
    for n, entry in enumerate(data["experiments"]):
        where = f"experiments[{n}]"
        if not isinstance(entry, dict):
            raise bad(where, "must be an object")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise bad(f"{where}.name", "must be 1-64 of A-Z a-z 0-9 _ . -")
        if name in names or name == "share":
            raise bad(f"{where}.name", f"{name!r} is used twice (or reserved)")
        names.add(name)
        share = entry.get("share", 100)
        if not _number(share) or not 0 < share <= 100:
            raise bad(f"{where}.share", "must be a percentage above 0, at most 100")
        arms = entry.get("arms")
        if not isinstance(arms, list) or len(arms) < 2:
            raise bad(f"{where}.arms", "must list at least two arms")
        out.append(
            Experiment(
                name,
                float(share),
                tuple(_arm(a, f"{where}.arms[{k}]", bad) for k, a in enumerate(arms)),
            )
        )
        if len({a.name for a in out[-1].arms}) != len(arms):
            raise bad(f"{where}.arms", "arm names must differ")
    if sum(e.share for e in out) > 100 + 1e-9:
        raise bad("experiments", "their shares add up to more than 100")
    return tuple(out)


def _arm(entry: Any, where: str, bad: Any) -> Arm:
    if not isinstance(entry, dict):
        raise bad(where, "must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise bad(f"{where}.name", "must be 1-64 of A-Z a-z 0-9 _ . -")
    weight = entry.get("weight")
    if not _number(weight) or not weight > 0:
        raise bad(f"{where}.weight", "must be a number above 0")
    alias, version = entry.get("model_alias"), entry.get("model_version")
    if alias is not None and version is not None:
        raise bad(where, "names model_alias or model_version, not both")
    if alias is not None and (not isinstance(alias, str) or not alias):
        raise bad(f"{where}.model_alias", "must be an alias name")
    if version is not None and not (
        (isinstance(version, int) and not isinstance(version, bool) and version > 0)
        or (isinstance(version, str) and version.isdigit())
    ):
        raise bad(f"{where}.model_version", "must be a registered version number")
    serving = entry.get("serving", {})
    if not isinstance(serving, dict):
        raise bad(f"{where}.serving", "must be an object")
    for option, value in serving.items():
        if option not in SERVING_OPTIONS:
            raise bad(f"{where}.serving", f"{option!r} is not one of {', '.join(SERVING_OPTIONS)}")
        if not _number(value) or value < 0 or (option == "recency_half_life_events" and value == 0):
            raise bad(f"{where}.serving.{option}", "must be a number ≥ 0 (half-life > 0)")
    return Arm(
        name,
        float(weight),
        alias,
        None if version is None else str(version),
        {k: float(v) for k, v in serving.items()},
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
