"""The report of an A/B experiment (``python -m training experiment-report``): what each
arm was shown, what came of it, whether the difference is real, and whether the split
itself can be trusted.

Inputs are the event log (``exposure`` events written by the service, and the clicks,
carts and purchases clients sent back with a ``recommendation_id``) and the arms' weights
from ``OMNIREC_EXPERIMENTS_FILE``. Everything from :func:`attribute` to
:class:`Report` is pure (frames and numbers in, numbers and text out); only
:func:`run` reads files, prints and logs to MLflow.

Attribution: last touch, within a window
    A recommendation id is ``<experiment>:<arm>:<hex>``; the service logs one
    ``exposure`` per answer under it. An event (of the kinds in :data:`KINDS`) is
    attributed to an arm when its ``recommendation_id`` is the id of an exposure of this
    experiment, made to the same person, at or before the event and at most
    ``window_hours`` (default :data:`DEFAULT_WINDOW_HOURS`) before it. Each event names the
    one answer it came from, so there is no choosing among earlier exposures: that is
    "last touch". Events naming this experiment that fail a condition are counted as
    unattributed, by reason (:data:`UNATTRIBUTED_REASONS`); events naming another
    experiment, or none, are not this report's business. A person whose exposures name
    more than one arm (possible only when weights changed mid-experiment, or people were
    merged) is left out of every arm, so each person counts once.

Why per-person rates carry the statistics
    People are what the experiment randomises, so people are the independent units: one
    person's many exposures and clicks are not independent draws. The tests compare the
    share of exposed people with at least one attributed event of a kind (a proportion of
    independent people). Rates per exposure are shown for reading, without inference.

The lift and its 95 % confidence interval: log ratio, delta method
    The relative lift of an arm over control is ``p_arm / p_control - 1``. Its interval is
    the Wald interval of the log of the ratio of two proportions (the delta method:
    ``Var log p̂ ≈ 1/x - 1/n`` per arm, independent arms), mapped back with ``exp``:
    asymmetric like the ratio itself, never below -100 %, closed-form and deterministic.
    It needs at least one event in both arms; without, the lift (or its interval) is
    not given.

The p-value: two-proportion z-test, Fisher's exact test for small counts
    The pooled two-sided z-test when every cell of the 2 × 2 table (arm × with / without
    an event) expects at least :data:`MIN_EXPECTED` people; Fisher's exact test below
    that, where the normal approximation is poor. No correction for comparing several
    arms and kinds is applied: choose the one metric that decides before the experiment
    starts, and read the others as context.

The sample ratio check: χ² goodness of fit, flagged below p = 0.001
    People per arm are tested against the configured weights with Pearson's χ²
    (:func:`scipy.stats.chisquare`). A mismatch means the split or the logging is broken
    (lost exposures, a bot in one arm, weights changed mid-way), and then no lift can be
    trusted. The threshold :data:`SRM_ALPHA` is strict because the check runs on every
    report of every experiment, often many times while one runs: at 0.001 a fair split
    raises a false alarm once in a thousand reports, while real breakages at the sizes
    experiments reach give p-values far below it (a 52/48 split of 10,000 people against
    50/50 gives p ≈ 6e-5, a 60/40 split of 4,000 gives p ≈ 1e-36). It is the threshold
    usually recommended for the check (Fabijan et al., "Diagnosing Sample Ratio Mismatch
    in Online Controlled Experiments", KDD 2019).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from service.config import Settings
from service.errors import OmnirecError, quote
from service.events import EXPOSURE

log = logging.getLogger(__name__)

#: The event kinds reported: clicks, add-to-carts and purchases.
KINDS: tuple[str, ...] = ("click", "add_to_cart", "purchase")
#: How the table labels each kind.
KIND_LABELS = {"click": "clicks", "add_to_cart": "carts", "purchase": "purchases"}
#: The arm others are compared with, when an arm has this name; else the file's first arm.
CONTROL = "control"
DEFAULT_WINDOW_HOURS = 24.0
#: Confidence level of the lift intervals.
LEVEL = 0.95
#: A sample ratio check below this p-value is flagged (see the module docstring).
SRM_ALPHA = 0.001
#: Fewest expected people in a cell of the 2 × 2 table for the z-test; else Fisher.
MIN_EXPECTED = 5.0
#: MLflow experiment of the reports: the training experiment's name plus this suffix, so
#: A/B runs (whose metrics differ from training runs') never crowd the training runs.
MLFLOW_EXPERIMENT_SUFFIX = "-ab"

#: Why an event naming this experiment is not attributed, in the order they are checked.
UNKNOWN_ID = "unknown id"
ARM_NOT_IN_FILE = "arm not in the file"
ANOTHER_PERSON = "another person"
SEVERAL_ARMS = "person in several arms"
BEFORE_EXPOSURE = "before its exposure"
AFTER_WINDOW = "after the window"
UNATTRIBUTED_REASONS: tuple[str, ...] = (
    UNKNOWN_ID,
    ARM_NOT_IN_FILE,
    ANOTHER_PERSON,
    SEVERAL_ARMS,
    BEFORE_EXPOSURE,
    AFTER_WINDOW,
)


class ReportError(OmnirecError):
    """The report cannot be made from what it was given; the message is one line."""


# --- statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class Lift:
    """One arm's per-person rate of one kind against control's."""

    arm: str
    kind: str
    control_rate: float
    arm_rate: float
    lift: float | None
    """``arm_rate / control_rate - 1``; None when control's rate is 0 (or an arm is empty)."""
    low: float | None
    """Lower end of the :data:`LEVEL` interval of ``lift``; None when not defined."""
    high: float | None
    p_value: float | None
    """Two-sided; None when an arm has nobody."""
    test: str
    """``"z"`` or ``"fisher"`` (or ``""`` without a p-value)."""

    @property
    def significant(self) -> bool:
        """The interval excludes "no lift"."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def relative_lift(
    x_control: int, n_control: int, x_arm: int, n_arm: int, level: float = LEVEL
) -> tuple[float | None, float | None, float | None]:
    """The relative lift ``(x_arm/n_arm) / (x_control/n_control) - 1`` and its ``level``
    interval by the delta method on the log of the ratio (see the module docstring).

    Returns ``(lift, low, high)``: ``lift`` None when a rate is undefined or control's is
    0; ``low``/``high`` None also when the arm has no event (the log is then undefined).
    """
    if n_control <= 0 or n_arm <= 0 or x_control <= 0:
        return None, None, None
    ratio = (x_arm / n_arm) / (x_control / n_control)
    if x_arm <= 0:
        return ratio - 1.0, None, None
    se = math.sqrt(1 / x_arm - 1 / n_arm + 1 / x_control - 1 / n_control)
    z = float(stats.norm.ppf(0.5 + level / 2))
    log_ratio = math.log(ratio)
    return ratio - 1.0, math.exp(log_ratio - z * se) - 1.0, math.exp(log_ratio + z * se) - 1.0


def proportion_test(
    x_control: int, n_control: int, x_arm: int, n_arm: int
) -> tuple[float | None, str]:
    """Two-sided p-value that the two proportions are equal, and the test used: the pooled
    z-test, or Fisher's exact test when a cell expects fewer than :data:`MIN_EXPECTED`.
    ``(None, "")`` when an arm has nobody."""
    if n_control <= 0 or n_arm <= 0:
        return None, ""
    table = np.array([[x_control, n_control - x_control], [x_arm, n_arm - x_arm]], dtype=float)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    if expected.min() < MIN_EXPECTED:
        return float(stats.fisher_exact(table.astype(np.int64)).pvalue), "fisher"
    pooled = (x_control + x_arm) / (n_control + n_arm)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_arm))
    z = (x_arm / n_arm - x_control / n_control) / se
    return float(2 * stats.norm.sf(abs(z))), "z"


@dataclass(frozen=True)
class SampleRatio:
    """People per arm against the configured weights (Pearson's χ² goodness of fit)."""

    people: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        """Flagged: p below :data:`SRM_ALPHA`."""
        return self.p_value < SRM_ALPHA


def sample_ratio(people: Sequence[int], weights: Sequence[float]) -> SampleRatio:
    """Test ``people`` per arm against the split ``weights`` promise (same order)."""
    observed = np.asarray(people, dtype=float)
    share = np.asarray(weights, dtype=float) / float(np.sum(weights))
    expected = share * observed.sum()
    if observed.sum() == 0:
        return SampleRatio(tuple(int(n) for n in people), tuple(expected), 0.0, 1.0)
    chi2, p_value = stats.chisquare(observed, expected)
    return SampleRatio(
        tuple(int(n) for n in people),
        tuple(float(e) for e in expected),
        float(chi2),
        float(p_value),
    )


# --- attribution -------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmCounts:
    """What one arm was shown and what came of it."""

    arm: str
    weight: float
    people: int
    """Distinct people exposed."""
    exposures: int
    events: Mapping[str, int]
    """Kind → attributed events."""
    people_with: Mapping[str, int]
    """Kind → exposed people with at least one attributed event of that kind."""

    def per_exposure(self, kind: str) -> float:
        return self.events[kind] / self.exposures if self.exposures else math.nan

    def per_person(self, kind: str) -> float:
        return self.people_with[kind] / self.people if self.people else math.nan


@dataclass(frozen=True)
class Attribution:
    """The counts of :func:`attribute`."""

    arms: tuple[ArmCounts, ...]
    attributed: int
    unattributed: Mapping[str, int]
    """Reason (one of :data:`UNATTRIBUTED_REASONS`) → events; every reason present."""
    unknown_arm_exposures: int
    """Exposures whose arm the file does not list (left out)."""
    several_arms_people: int
    """People exposed in more than one arm (left out of every arm)."""
    first: int | None
    """Epoch seconds of the first and last exposure counted; None without exposures."""
    last: int | None


def attribute(
    frame: pd.DataFrame,
    experiment: str,
    weights: Mapping[str, float],
    window_hours: float = DEFAULT_WINDOW_HOURS,
) -> Attribution:
    """Count exposures and attributed events per arm of ``experiment`` (arms and their
    order from ``weights``), by the rule of the module docstring.

    ``frame`` has the event log's columns ``user_id``, ``event_type``, ``timestamp`` and
    ``recommendation_id`` (absent means no event carries one). An exposure id seen twice
    (overlapping exports) counts once, at its earliest time.
    """
    prefix = f"{experiment}:"
    if "recommendation_id" in frame.columns:
        ids = frame["recommendation_id"].fillna("").astype(str)
    else:
        ids = pd.Series("", index=frame.index)
    ours = ids.str.startswith(prefix)
    mine = pd.DataFrame(
        {
            "user_id": frame["user_id"][ours].astype(str),
            "event_type": frame["event_type"][ours].astype(str),
            "timestamp": frame["timestamp"][ours].astype(np.int64),
            "rid": ids[ours],
        }
    )

    exposures = (
        mine[mine["event_type"] == EXPOSURE]
        .sort_values("timestamp", kind="stable")
        .drop_duplicates("rid")
    )
    exposures = exposures.assign(arm=exposures["rid"].str.split(":", n=2).str[1].fillna(""))
    known_arm = exposures["arm"].isin(list(weights))
    arms_per_person = exposures[known_arm].groupby("user_id")["arm"].nunique()
    several = set(arms_per_person.index[arms_per_person > 1])
    counted = exposures[known_arm & ~exposures["user_id"].isin(several)]

    events = mine[mine["event_type"].isin(KINDS)]
    joined = events.merge(
        exposures[["rid", "user_id", "timestamp", "arm"]],
        on="rid",
        how="left",
        suffixes=("", "_exposure"),
    )
    delay = joined["timestamp"] - joined["timestamp_exposure"]
    # Checked in the order of UNATTRIBUTED_REASONS: an event counts under its first reason.
    failed = {
        UNKNOWN_ID: joined["arm"].isna(),
        ARM_NOT_IN_FILE: ~joined["arm"].isin(list(weights)),
        ANOTHER_PERSON: joined["user_id"] != joined["user_id_exposure"],
        SEVERAL_ARMS: joined["user_id"].isin(several),
        BEFORE_EXPOSURE: delay < 0,
        AFTER_WINDOW: delay > window_hours * 3600.0,
    }
    left = pd.Series(True, index=joined.index)
    unattributed: dict[str, int] = {}
    for reason in UNATTRIBUTED_REASONS:
        hit = left & failed[reason]
        unattributed[reason] = int(hit.sum())
        left &= ~hit
    attributed = joined[left]

    people = counted.groupby("arm")["user_id"].nunique()
    shown = counted.groupby("arm").size()
    events_by = attributed.groupby(["arm", "event_type"]).size()
    people_by = attributed.groupby(["arm", "event_type"])["user_id"].nunique()
    arms = tuple(
        ArmCounts(
            arm=arm,
            weight=float(weight),
            people=int(people.get(arm, 0)),
            exposures=int(shown.get(arm, 0)),
            events={kind: int(events_by.get((arm, kind), 0)) for kind in KINDS},
            people_with={kind: int(people_by.get((arm, kind), 0)) for kind in KINDS},
        )
        for arm, weight in weights.items()
    )
    return Attribution(
        arms=arms,
        attributed=len(attributed),
        unattributed=unattributed,
        unknown_arm_exposures=int((~known_arm).sum()),
        several_arms_people=len(several),
        first=int(counted["timestamp"].min()) if len(counted) else None,
        last=int(counted["timestamp"].max()) if len(counted) else None,
    )


# --- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Per-arm counts, lifts against control and the sample ratio check of one experiment."""

    experiment: str
    control: str
    window_hours: float
    attribution: Attribution
    lifts: tuple[Lift, ...]
    sample_ratio: SampleRatio

    @property
    def arms(self) -> tuple[ArmCounts, ...]:
        return self.attribution.arms

    def lift(self, arm: str, kind: str) -> Lift:
        return next(x for x in self.lifts if x.arm == arm and x.kind == kind)

    def run_name(self) -> str:
        """``ab · new-model · 2026-11-20``: the experiment and the (UTC) day of its last
        exposure, so a report of the same data has the same name."""
        last = self.attribution.last or 0
        return f"ab · {self.experiment} · {pd.Timestamp(last, unit='s', tz='UTC'):%Y-%m-%d}"

    def table(self) -> str:
        """The report as text: arms, rates, lifts, the sample ratio and attribution."""
        a = self.attribution
        width = max(9, *(len(arm.arm) for arm in self.arms))
        days = " → ".join(
            f"{pd.Timestamp(t, unit='s', tz='UTC'):%Y-%m-%d %H:%M}" for t in (a.first, a.last)
        )
        lines = [
            f"A/B experiment {self.experiment}: control arm {self.control}, attribution last touch "
            f"within {self.window_hours:g} h; exposures {days} UTC",
            "",
            f"{'arm':<{width}}  {'weight':>7}  {'people':>9}  {'exposures':>10}",
        ]
        lines += [
            f"{arm.arm:<{width}}  {arm.weight:>7g}  {arm.people:>9,}  {arm.exposures:>10,}"
            for arm in self.arms
        ]
        lines += [
            "",
            f"{'arm':<{width}}  {'kind':<9}  {'events':>8}  {'per exposure':>12}  "
            f"{'people':>8}  {'per person':>10}",
        ]
        for arm in self.arms:
            for kind in KINDS:
                lines.append(
                    f"{arm.arm:<{width}}  {KIND_LABELS[kind]:<9}  {arm.events[kind]:>8,}  "
                    f"{_number(arm.per_exposure(kind), '.4f'):>12}  {arm.people_with[kind]:>8,}  "
                    f"{_percent(arm.per_person(kind)):>10}"
                )
        lines += [
            "",
            f"lift of the per-person rates vs {self.control} ({LEVEL:.0%} interval: delta "
            "method on the log of the ratio; p: two-proportion z-test, Fisher when small)",
            f"{'arm':<{width}}  {'kind':<9}  {'control':>8}  {'arm':>8}  {'lift':>8}  "
            f"{'interval':>21}  {'p':>8}  test   (*: the interval excludes 0)",
        ]
        for x in self.lifts:
            interval = f"[{_signed(x.low)}, {_signed(x.high)}]" if x.low is not None else "–"
            p_value = "–" if x.p_value is None else f"{x.p_value:.2g}"
            mark = "  *" if x.significant else ""
            lines.append(
                f"{x.arm:<{width}}  {KIND_LABELS[x.kind]:<9}  {_percent(x.control_rate):>8}  "
                f"{_percent(x.arm_rate):>8}  {_signed(x.lift):>8}  {interval:>21}  "
                f"{p_value:>8}  {x.test or '–'}{mark}"
            )
        lines.append("")
        lines += self._sample_ratio_lines()
        reasons = ", ".join(f"{r} {n:,}" for r, n in a.unattributed.items() if n)
        unattributed = sum(a.unattributed.values())
        lines.append(
            f"attributed events: {a.attributed:,}; unattributed: {unattributed:,}"
            + (f" ({reasons})" if reasons else "")
        )
        if a.unknown_arm_exposures:
            lines.append(
                f"warning: {a.unknown_arm_exposures:,} exposures name arms the experiments "
                "file does not list (left out): was the file changed mid-experiment?"
            )
        if a.several_arms_people:
            lines.append(
                f"warning: {a.several_arms_people:,} people were exposed in several arms "
                "(left out of every arm)"
            )
        return "\n".join(lines)

    def _sample_ratio_lines(self) -> list[str]:
        s = self.sample_ratio
        split = " : ".join(f"{n:,}" for n in s.people)
        weights = " : ".join(f"{arm.weight:g}" for arm in self.arms)
        line = (
            f"sample ratio: people per arm {split} against weights {weights}: "
            f"χ² {s.chi2:.2f}, p {s.p_value:.2g}"
        )
        if not s.mismatch:
            return [line + f" (no mismatch at p < {SRM_ALPHA:g})"]
        expected = " : ".join(f"{e:,.0f}" for e in s.expected)
        return [
            line,
            f"WARNING: sample ratio mismatch (p < {SRM_ALPHA:g}; expected {expected}): the "
            "arms did not get the people their weights promise, so the lifts above cannot "
            "be trusted until the cause (lost exposures, bots, weights changed) is found",
        ]

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: ``<arm>_people``, ``<arm>_exposures``,
        ``<arm>_<kind>_rate_per_exposure``, ``<arm>_<kind>_rate_per_person``,
        ``<arm>_<kind>_lift`` (``_ci_low``, ``_ci_high``, ``_p_value``), ``srm_chi2``,
        ``srm_p_value``, ``attributed_events``, ``unattributed_events``; undefined values
        are left out."""
        out: dict[str, float | None] = {}
        for arm in self.arms:
            out[f"{arm.arm}_people"] = arm.people
            out[f"{arm.arm}_exposures"] = arm.exposures
            for kind in KINDS:
                out[f"{arm.arm}_{kind}_rate_per_exposure"] = arm.per_exposure(kind)
                out[f"{arm.arm}_{kind}_rate_per_person"] = arm.per_person(kind)
        for x in self.lifts:
            out[f"{x.arm}_{x.kind}_lift"] = x.lift
            out[f"{x.arm}_{x.kind}_lift_ci_low"] = x.low
            out[f"{x.arm}_{x.kind}_lift_ci_high"] = x.high
            out[f"{x.arm}_{x.kind}_p_value"] = x.p_value
        out["srm_chi2"] = self.sample_ratio.chi2
        out["srm_p_value"] = self.sample_ratio.p_value
        out["attributed_events"] = self.attribution.attributed
        out["unattributed_events"] = sum(self.attribution.unattributed.values())
        return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(v)}

    def rows(self) -> dict[str, list]:
        """One row per arm (columns → values) for ``mlflow.log_table``."""
        rows: dict[str, list] = {"arm": [], "weight": [], "people": [], "exposures": []}
        for arm in self.arms:
            rows["arm"].append(arm.arm)
            rows["weight"].append(arm.weight)
            rows["people"].append(arm.people)
            rows["exposures"].append(arm.exposures)
            for kind in KINDS:
                values: dict[str, float | None] = {
                    "events": arm.events[kind],
                    "rate_per_exposure": _or_none(arm.per_exposure(kind)),
                    "people": arm.people_with[kind],
                    "rate_per_person": _or_none(arm.per_person(kind)),
                    "lift": None,
                    "lift_ci_low": None,
                    "lift_ci_high": None,
                    "p_value": None,
                }
                if arm.arm != self.control:
                    x = self.lift(arm.arm, kind)
                    values |= {
                        "lift": x.lift,
                        "lift_ci_low": x.low,
                        "lift_ci_high": x.high,
                        "p_value": x.p_value,
                    }
                for name, value in values.items():
                    rows.setdefault(f"{kind}_{name}", []).append(value)
        return rows


def control_arm(weights: Mapping[str, float]) -> str:
    """The arm named :data:`CONTROL`, else the first."""
    return CONTROL if CONTROL in weights else next(iter(weights))


def build_report(
    frame: pd.DataFrame,
    experiment: str,
    weights: Mapping[str, float],
    window_hours: float = DEFAULT_WINDOW_HOURS,
) -> Report:
    """The report of ``experiment`` from the events in ``frame``; ``weights`` maps each
    arm, in the file's order, to its weight.

    Raises
    ------
    ReportError
        when no exposure of the experiment is in ``frame`` (of an arm in ``weights``).
    """
    if len(weights) < 2:
        raise ReportError(f"experiment {quote(experiment)} needs at least two arms")
    attribution = attribute(frame, experiment, weights, window_hours)
    if not any(arm.exposures for arm in attribution.arms):
        if attribution.unknown_arm_exposures:
            found = f"only {attribution.unknown_arm_exposures} of arms the file does not list"
        else:
            found = "exposures found: " + (", ".join(_exposed_experiments(frame)) or "none")
        raise ReportError(f"no exposures of experiment {quote(experiment)} in the events ({found})")
    control = control_arm(weights)
    base = next(arm for arm in attribution.arms if arm.arm == control)
    lifts = []
    for arm in attribution.arms:
        if arm.arm == control:
            continue
        for kind in KINDS:
            args = (base.people_with[kind], base.people, arm.people_with[kind], arm.people)
            lift, low, high = relative_lift(*args)
            p_value, test = proportion_test(*args)
            lifts.append(
                Lift(
                    arm.arm,
                    kind,
                    base.per_person(kind),
                    arm.per_person(kind),
                    lift,
                    low,
                    high,
                    p_value,
                    test,
                )
            )
    ratio = sample_ratio([arm.people for arm in attribution.arms], list(weights.values()))
    return Report(experiment, control, window_hours, attribution, tuple(lifts), ratio)


# --- the command -------------------------------------------------------------------------


def arm_weights(experiments_file: str, experiment: str) -> dict[str, float]:
    """Arm → weight of ``experiment`` in the experiments file, in the file's order.

    Raises
    ------
    ReportError / ConfigError
        when no file is named, it is unreadable or malformed (the service's own check,
        :meth:`service.experiments.Experiments.load`), or it has no such experiment.
    """
    from service.experiments import VARIABLE, Experiments

    if not experiments_file:
        raise ReportError(f"no experiments file: pass --experiments-file or set {VARIABLE}")
    # The secret only matters for assigning people, which the report never does.
    found = Experiments.load(experiments_file, "")
    for entry in found.experiments:
        if entry.name == experiment:
            return {arm.name: arm.weight for arm in entry.arms}
    names = ", ".join(e.name for e in found.experiments) or "none"
    raise ReportError(
        f"experiment {quote(experiment)} is not in {experiments_file}; it has: {names}"
    )


def load_frames(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The events of every path (files or folders, see :func:`load_events`) in one frame,
    with a ``recommendation_id`` column ("" where absent)."""
    from training.event_log import load_events

    frames = [load_events(path).frame for path in paths]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if "recommendation_id" not in frame.columns:
        frame = frame.assign(recommendation_id="")
    frame["recommendation_id"] = frame["recommendation_id"].fillna("")
    return frame


def log_to_mlflow(report: Report, settings: Settings, sources: Sequence[str]) -> str:
    """Log ``report`` as a run named :meth:`Report.run_name` in the MLflow experiment
    ``<OMNIREC_EXPERIMENT>-ab``: its :meth:`Report.metrics`, the arms' table
    (``arms.json``) and the text report (``report.txt``). Returns a link to the run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from service.config import local_store_dirs
    from training import mlflow_view

    for folder in local_store_dirs(settings):
        folder.mkdir(parents=True, exist_ok=True)
    uri = settings.mlflow_tracking_uri
    try:
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow_view.experiment(
            settings.experiment + MLFLOW_EXPERIMENT_SUFFIX, settings.artifact_root
        )
        with mlflow.start_run(experiment_id=experiment_id, run_name=report.run_name()) as run:
            mlflow.set_tags(
                {"omnirec.ab_experiment": report.experiment, "omnirec.ab_control": report.control}
            )
            mlflow.log_params(
                {
                    "experiment": report.experiment,
                    "control": report.control,
                    "window_hours": report.window_hours,
                    "weights": ", ".join(f"{a.arm}={a.weight:g}" for a in report.arms),
                    "events": ", ".join(sources)[:500],
                }
            )
            mlflow.log_metrics(report.metrics())
            mlflow.log_table(report.rows(), "arms.json")
            mlflow.log_text(report.table(), "report.txt")
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(f"logging to MLflow at {uri} failed: {first}") from None
    return mlflow_view.ui_link(uri, experiment_id, run.info.run_id)


def run(
    settings: Settings,
    experiment: str,
    events: Sequence[str | Path],
    experiments_file: str | None = None,
    window_hours: float = DEFAULT_WINDOW_HOURS,
    log_run: bool = True,
) -> int:
    """``python -m training experiment-report``: print the report, log it to MLflow.
    ``experiments_file`` defaults to ``settings.experiments_file``."""
    if not window_hours > 0 or math.isinf(window_hours):
        raise ReportError(f"--window-hours: must be a positive number, got {window_hours:g}")
    weights = arm_weights(experiments_file or settings.experiments_file, experiment)
    frame = load_frames(events)
    report = build_report(frame, experiment, weights, window_hours)
    print(report.table(), flush=True)
    if log_run:
        link = log_to_mlflow(report, settings, [str(p) for p in events])
        print(f"logged to MLflow as {report.run_name()!r}: {link}")
    return 0


def _exposed_experiments(frame: pd.DataFrame) -> list[str]:
    if "recommendation_id" not in frame.columns:
        return []
    ids = frame.loc[frame["event_type"] == EXPOSURE, "recommendation_id"].astype(str)
    return sorted(set(ids.str.split(":", n=1).str[0]) - {""})


def _number(value: float, spec: str) -> str:
    return "–" if math.isnan(value) else format(value, spec)


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2%}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
