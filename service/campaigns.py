"""Campaign audiences: who should get a message about some items, when, on which channel.

The core of ``Campaigns.Audience`` and of ``python -m training export-audience``: both
build an :class:`Audience` and run its :meth:`Audience.page_plan` (the gRPC layer in
``service/api/campaigns.py`` only validates and translates). Ranking is numpy over the
bundle; Redis is read through plans, so the server runs them on its asyncio reader and
the export on the sync client.

Who ranks first
    Everybody the model knows, scored against the promoted items in one product:
    ``user_factors @ mean(item_factors[items])`` for ALS / BPR, and
    ``interactions @ mean(similarity[:, items])`` for item-kNN / EASE (the weighted
    training matrix the bundle ships; a bundle from before it is FAILED_PRECONDITION, as
    is the popularity baseline, which knows no one's taste). The score is the person's
    mean predicted preference over the promoted items, scaled so the best is 1 and rounded
    to 6 decimals; the order is (score descending, row in the bundle), a pure function of
    the model and the promoted items, which is what makes page tokens stable.

Why the trained representation, not the live one
    Ranking a million people against the items needs every person's representation at
    once; folding each one's live history in would read every person from Redis on
    every request. So the order is as of the model's training run (people new since then
    join at the next run; a nightly run bounds it to a day), while everything that can
    exclude or time a member is read live, for the members of the page only: purchases
    and dislikes (Recommender.rank over the promoted items, with its filters), opt-outs,
    deliveries (fatigue), engagement (channel and send time), erasure and identity links.

Planning a member
    :func:`place`: the person's channels best first by predicted engagement
    (``send_time.rank_channels``, with the learnt fatigue of unanswered deliveries) among
    the allowed ones they did not unsubscribe from (``contact.allowed``); the first whose
    fatigue gap and daily cap (``contact.earliest_send``) leave at least one whole hour
    of the window, and outside quiet hours, is planned by ``send_time.plan_send`` — the
    same functions ``PredictSendTime`` and ``RankChannels`` answer with. Nobody is
    planned inside the gap: the gap moves the window's start, never its end.

Why pages are planned together
    Planning one person is a few dozen small numpy operations on arrays of 24 or 168
    hours, so one at a time it costs their overhead, not their arithmetic. A page's
    people are planned at once (:func:`place_all`: ``send_time.channel_rankings`` and
    ``send_time.plan_sends`` over arrays of people × hours), with answers identical to
    :func:`place`'s for each person alone, to the last bit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import threading
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import scipy.sparse as sp

from service.bundle import FACTOR_KINDS, POPULARITY, SIMILARITY_KINDS, ModelBundle
from service.catalogue import MAX_CATEGORY_LENGTH, Catalogue
from service.config import Settings
from service.contact import ContactPolicy, ContactState, allowed, earliest_send
from service.engagement import (
    check_ahead,
    check_quiet_hours,
    check_window,
    open_window,
    profile_of,
)
from service.errors import BadInput, ModelNotFound, NotAllowed, NotFound, quote
from service.events import MESSAGE_CHANNELS, id_problem
from service.identity import Identities, default_token
from service.recommender import RankingOptions, Recommender, explain
from service.send_time import (
    EngagementProfile,
    Priors,
    SendQuestion,
    channel_rankings,
    plan_sends,
)
from service.store.plans import Plan
from service.store.reads import PersonView, together

log = logging.getLogger(__name__)

#: Most members one page may ask for (``limit``), and the default.
MAX_AUDIENCE_LIMIT = 1000
DEFAULT_AUDIENCE_LIMIT = 100
#: Most ``item_ids`` one request may name.
MAX_PROMOTED_IDS = 1000
#: Promoted items each member is ranked over (named ones first, then the category's
#: with the most appeal to the audience's best people): a category of thousands would
#: otherwise cost thousands of scores per member.
MAX_MEMBER_CHOICES = 200
#: The audience's best people whose mean taste picks a large category's choices.
APPEAL_PEOPLE = 100
#: Items of the promotion a member gets (``AudienceMember.item_ids``), best first.
MEMBER_ITEMS = 3
#: Of the choices a member did not buy or dislike, those with their best trained scores
#: that ``Recommender.rank`` orders (with their live history) and explains: its cost is
#: per item, and only the first few are shown.
MEMBER_SHORTLIST = 12
#: People one page examines at most: this many per member asked for, plus
#: :data:`EXAMINE_EXTRA`. A page stops there with fewer members (and a token) rather than
#: read far down an audience most of whom are left out.
EXAMINE_PER_MEMBER = 5
EXAMINE_EXTRA = 50
#: Longest ``page_token`` accepted (ours are ~200 characters).
MAX_TOKEN_LENGTH = 1024
#: Scores are rounded to this many decimals (the best is 1): replicas whose BLAS sums in
#: another order then still agree on the order, so a token works on any of them.
SCORE_DECIMALS = 6
#: Why a person examined for a page is not in it (``AudienceResponse.left_out``).
LEFT_OUT = ("bought", "opted_out", "fatigued", "quiet", "erased")
_TOKEN_VERSION = 1


class NoAudienceModel(ModelNotFound):
    """The served model cannot rank people against items: the popularity baseline, or a
    similarity bundle from before the training matrix was shipped (FAILED_PRECONDITION)."""


# --- the request ----------------------------------------------------------------------


@dataclass(frozen=True)
class Campaign:
    """One audience request, validated: what is promoted, and where it may be planned."""

    item_ids: tuple[str, ...]
    """The named items, in the caller's order, repeats dropped."""
    category: str
    channels: tuple[str, ...]
    """The allowed channels, in the caller's order (all message channels when none)."""
    not_before: float | None
    """Epoch seconds; None: "now", fixed by the first page (:class:`PageToken`)."""
    window_hours: int
    quiet: tuple[int, int] | None
    """Local quiet hours ``(start, end)``; None: ignored."""

    @classmethod
    def of(
        cls,
        item_ids: Iterable[str] = (),
        category: str = "",
        channels: Iterable[str] = (),
        not_before: float | None = None,
        window_hours: int = 0,
        quiet_start: int | None = None,
        quiet_end: int | None = None,
        ignore_quiet_hours: bool = False,
        *,
        now: float,
    ) -> Campaign:
        """Validate; :class:`BadInput` naming the field at fault (the request's names)."""
        named = list(item_ids)
        if len(named) > MAX_PROMOTED_IDS:
            raise BadInput("item_ids", f"at most {MAX_PROMOTED_IDS} items, got {len(named)}")
        for n, item in enumerate(named):
            if (problem := id_problem(item)) is not None:
                raise BadInput(f"item_ids[{n}]", problem)
        if category and (len(category) > MAX_CATEGORY_LENGTH or not category.strip()):
            raise BadInput("category", f"must be 1 to {MAX_CATEGORY_LENGTH} characters, not blank")
        if not named and not category:
            raise BadInput("item_ids", "give the promoted item_ids, a category, or both")
        wanted = list(channels)
        for n, channel in enumerate(wanted):
            if channel not in MESSAGE_CHANNELS:
                raise BadInput(
                    f"channels[{n}]",
                    f"{quote(channel)} is not one of {', '.join(MESSAGE_CHANNELS)}",
                )
        window = check_window(window_hours)
        quiet = check_quiet_hours(quiet_start, quiet_end, ignore_quiet_hours)
        if not_before is not None:
            check_ahead(not_before, now)
        return cls(
            tuple(dict.fromkeys(named)),
            category,
            tuple(dict.fromkeys(wanted)) or MESSAGE_CHANNELS,
            not_before,
            window,
            quiet,
        )

    def fingerprint(self) -> str:
        """What a page token must have been issued for (every field: the same request)."""
        return _digest(asdict(self))


@dataclass(frozen=True)
class PageToken:
    """Where the next page starts, and what it is valid for. Opaque to callers: base64url
    of compact JSON and a checksum (it holds no personal data, and altering the offset
    only moves where a page starts)."""

    model: str
    """The model version label that ranked the first page."""
    request: str
    """:meth:`Campaign.fingerprint` of the first page's request."""
    promoted: str
    """:attr:`Promotion.key`: the promoted items as the catalogue resolved them."""
    offset: int
    """Position in the audience's order of the next person to examine."""
    start: float
    """The window's start fixed by the first page (its "now" when not_before was unset)."""

    def encode(self) -> str:
        body = json.dumps([_TOKEN_VERSION, *asdict(self).values()], separators=(",", ":"))
        check = hashlib.sha256(body.encode()).hexdigest()[:12]
        return base64.urlsafe_b64encode(f"{check}{body}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> PageToken:
        """:class:`BadInput` naming ``page_token`` for anything we did not issue."""
        bad = BadInput("page_token", "is not a next_page_token this service issued")
        if len(text) > MAX_TOKEN_LENGTH:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            check, body = raw[:12], raw[12:]
            if hashlib.sha256(body.encode()).hexdigest()[:12] != check:
                raise bad
            version, model, request, promoted, offset, start = json.loads(body)
            start = float(start)
        except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
            raise bad from None
        if (
            version != _TOKEN_VERSION
            or not isinstance(offset, int)
            or offset < 0
            or not math.isfinite(start)
        ):
            raise bad
        return cls(str(model), str(request), str(promoted), offset, start)

    def check(self, campaign: Campaign, model: str) -> None:
        """The token must come from this request's earlier pages, under this model."""
        if self.request != campaign.fingerprint():
            raise BadInput(
                "page_token",
                "was issued for another request: keep every field but limit and "
                "page_token as on the first page",
            )
        if self.model != model:
            raise NotAllowed(
                "page_token",
                f"the served model changed from {self.model} to {model} since the first "
                "page: start again without page_token",
            )

    def check_promoted(self, promotion: Promotion) -> None:
        if self.promoted != promotion.key:
            raise NotAllowed(
                "page_token",
                "the promoted items changed since the first page (the catalogue moved an "
                "item between categories): start again without page_token",
            )


# --- who ranks first ------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    """The promoted items as the model and the catalogue know them."""

    item_ids: tuple[str, ...]
    """What members may get: the named items, then the category's (by id)."""
    scored: np.ndarray
    """Model item indices the audience is ranked against (named items the model knows,
    the category's items, and the category's items standing in for named ones it does
    not know yet)."""
    named: int
    """How many of :attr:`item_ids` were named by the caller."""

    @property
    def key(self) -> str:
        return _digest([list(self.item_ids), self.scored.tolist()])


class Ranking:
    """Everybody the model ranks for one promotion, best first, in a fixed order.
    Thread-safe; the order is worked out as far as pages have asked, doubling."""

    def __init__(self, scores: np.ndarray, choices: tuple[str, ...]) -> None:
        self.scores = scores
        """Per bundle user row: the scaled, rounded score; -inf for no candidate."""
        self.size = int(np.isfinite(scores).sum())
        """How many people are candidates."""
        self.choices = choices
        """The promoted items each member is ranked over (:data:`MAX_MEMBER_CHOICES`)."""
        self._order = np.empty(0, dtype=np.int64)
        self._lock = threading.Lock()

    def prefix(self, count: int) -> np.ndarray:
        """The first ``count`` candidates (bundle user rows), best first."""
        count = min(count, self.size)
        with self._lock:
            if len(self._order) < count:
                want = min(self.size, max(count, 2 * len(self._order)))
                self._order = top_order(self.scores, want)
            return self._order[:count]


def top_order(scores: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` indices in the order (score descending, index ascending), skipping
    non-finite scores. Exact under ties, unlike a bare ``argpartition``: every index tied
    with the ``k``-th score takes part in the final sort, so a longer prefix always
    begins with a shorter one."""
    finite = np.isfinite(scores)
    k = min(k, int(finite.sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < len(scores):
        masked = np.where(finite, scores, -np.inf)
        part = np.argpartition(-masked, k - 1)[:k]
        threshold = masked[part].min()
        candidates = np.flatnonzero(masked >= threshold)
    else:
        candidates = np.flatnonzero(finite)
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    return order[:k]


class AudienceModel:
    """Ranks everybody in a bundle against promoted items: one product over the user
    factors (ALS, BPR) or the shipped training matrix (item-kNN, EASE)."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.user_ids = bundle.user_ids
        self.item_index = {str(item): j for j, item in enumerate(bundle.item_ids)}
        self.problem: str | None = None
        if bundle.kind == POPULARITY:
            self.problem = (
                "is the popularity baseline: it knows no one's taste, so it cannot rank an "
                "audience; serve a personalised model (a training run that beats it)"
            )
        elif bundle.kind in SIMILARITY_KINDS and bundle.interactions is None:
            self.problem = (
                f"is an {bundle.kind} bundle from before training shipped its interactions "
                "matrix, which Audience ranks people with: retrain (python -m training train)"
            )
        self._categories: OrderedDict[tuple[int, str], tuple[str, ...]] = OrderedDict()

    def check(self, label: str) -> None:
        if self.problem is not None:
            raise NoAudienceModel(f"the served model {label} {self.problem}")

    def promote(self, campaign: Campaign, catalogue: Catalogue) -> Promotion:
        """Resolve the named items and the category; :class:`NotFound` naming the field
        when something names nothing the model can rank against."""
        scored: list[int] = []
        for n, item in enumerate(campaign.item_ids):
            j = self.item_index.get(item)
            if j is not None:
                scored.append(j)
                continue
            # New to the model: its category's items stand in for it.
            category = catalogue.category(item)
            if catalogue.meta(item) is None:
                raise NotFound(
                    f"item_ids[{n}]: {quote(item)} is unknown to the model and the catalogue"
                )
            stand_ins = self._known(self._category_items(catalogue, category)) if category else []
            if not stand_ins:
                raise NotFound(
                    f"item_ids[{n}]: {quote(item)} is new to the model, and no item of its "
                    "catalogue category is known to it"
                )
            scored += stand_ins
        extra: tuple[str, ...] = ()
        if campaign.category:
            extra = self._category_items(catalogue, campaign.category)
            if not extra:
                raise NotFound(f"category: {quote(campaign.category)} names no catalogue item")
            known = self._known(extra)
            if not known:
                raise NotFound(
                    f"category: no item of {quote(campaign.category)} is known to the model"
                )
            scored += known
        named = campaign.item_ids
        items = named + tuple(i for i in extra if i not in set(named))
        return Promotion(items, np.unique(np.asarray(scored, dtype=np.int64)), len(named))

    def rank(self, promotion: Promotion) -> Ranking:
        """Everybody's score against ``promotion``: one product (seconds for ten million
        people; run it off the event loop)."""
        b, items = self.bundle, promotion.scored
        if b.kind in FACTOR_KINDS:
            target = b.item_factors[items].astype(np.float64).mean(axis=0)
            raw = b.user_factors @ target.astype(b.user_factors.dtype)
            eligible = np.ones(len(raw), dtype=bool)
        else:
            column = _columns_mean(b.similarity, items)
            raw = np.asarray(b.interactions @ column.astype(np.float32)).ravel()
            # Nothing in their training history leads to the items: not an audience.
            eligible = raw > 0
        raw = raw.astype(np.float64)
        eligible &= np.isfinite(raw)
        top = float(np.max(np.abs(raw[eligible]))) if eligible.any() else 1.0
        scores = np.round(raw / max(top, 1e-12), SCORE_DECIMALS)
        scores[~eligible] = -np.inf
        ranking = Ranking(scores, promotion.item_ids)
        if len(promotion.item_ids) > MAX_MEMBER_CHOICES:
            ranking.choices = self._choices(promotion, ranking)
        return ranking

    def _choices(self, promotion: Promotion, ranking: Ranking) -> tuple[str, ...]:
        """At most :data:`MAX_MEMBER_CHOICES` promoted items: the named ones first, then
        the category's by their mean score over the audience's best people."""
        named = list(promotion.item_ids[: promotion.named])[:MAX_MEMBER_CHOICES]
        rest = [i for i in promotion.item_ids[promotion.named :] if i in self.item_index]
        room = MAX_MEMBER_CHOICES - len(named)
        if room <= 0 or not rest:
            return tuple(named)
        columns = np.array([self.item_index[i] for i in rest], dtype=np.int64)
        appeal = self._appeal(ranking.prefix(APPEAL_PEOPLE), columns)
        best = np.lexsort((np.arange(len(rest)), -appeal))[:room]
        return tuple(named + [rest[k] for k in best])

    def shortlist(self, row: int, item_ids: Sequence[str], count: int) -> list[str]:
        """The ``count`` of ``item_ids`` the person of bundle row ``row`` scores best (as
        trained; ties by position), then, if room is left, those the model does not know."""
        known = [
            (n, j) for n, i in enumerate(item_ids) if (j := self.item_index.get(i)) is not None
        ]
        columns = np.array([j for _, j in known], dtype=np.int64)
        b = self.bundle
        if b.kind in FACTOR_KINDS:
            scores = b.item_factors[columns] @ b.user_factors[row]
        else:
            history = b.interactions[row]
            part = b.similarity[history.indices][:, columns]
            part = part.toarray() if sp.issparse(part) else part
            scores = history.data @ part
        best = np.lexsort((np.arange(len(known)), -np.asarray(scores, dtype=np.float64)))
        chosen = [item_ids[known[k][0]] for k in best[:count]]
        unknown = [i for i in item_ids if i not in self.item_index]
        return chosen + unknown[: count - len(chosen)]

    def _appeal(self, people: np.ndarray, columns: np.ndarray) -> np.ndarray:
        b = self.bundle
        if b.kind in FACTOR_KINDS:
            taste = b.user_factors[people].astype(np.float64).mean(axis=0)
            return b.item_factors[columns].astype(np.float64) @ taste
        history = np.asarray(b.interactions[people].mean(axis=0)).ravel()
        rows = np.flatnonzero(history)
        part = b.similarity[rows][:, columns]
        if sp.issparse(part):
            return np.asarray(part.T @ history[rows]).ravel()
        return history[rows] @ part

    def _category_items(self, catalogue: Catalogue, category: str) -> tuple[str, ...]:
        """The catalogue's items of ``category``, by id (kept per catalogue version)."""
        key = (catalogue.version, category)
        found = self._categories.get(key)
        if found is None:
            found = tuple(
                sorted(i for i, meta in catalogue.items.items() if meta.get("category") == category)
            )
            self._categories[key] = found
            if len(self._categories) > 64:
                self._categories.popitem(last=False)
        return found

    def _known(self, items: Iterable[str]) -> list[int]:
        return [j for i in items if (j := self.item_index.get(i)) is not None]


def _columns_mean(similarity: sp.csr_matrix | np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The mean of ``similarity``'s ``columns``: what each history item adds, on average,
    to the promoted items' scores."""
    part = similarity[:, columns]
    return np.asarray(part.mean(axis=1)).ravel()


# --- planning one member --------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """When and where to message one member."""

    channel: str
    send_at: datetime
    probability: float
    local_hour: int
    timezone: str


@dataclass(frozen=True)
class Recipient:
    """One member as planning sees them."""

    profile: EngagementProfile
    contact: ContactState
    rng: np.random.Generator | None = None
    """Their own draws when exploring (None: not exploring)."""


def place(
    profile: EngagementProfile,
    contact: ContactState,
    priors: Priors,
    policy: ContactPolicy,
    channels: Sequence[str],
    start: float,
    window_hours: int,
    quiet: tuple[int, int] | None,
    default_timezone: str,
    explore_rate: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Placement | str:
    """The member's channel and moment (see the module docstring), or why there is none:
    ``"opted_out"`` (every allowed channel closed by the person), ``"fatigued"`` (the gap
    or the daily cap closes the open ones until after the window), ``"quiet"`` (what is
    left of the window is quiet hours)."""
    return place_all(
        [Recipient(profile, contact, rng)],
        priors,
        policy,
        channels,
        start,
        window_hours,
        quiet,
        default_timezone,
        explore_rate,
    )[0]


def place_all(
    recipients: Sequence[Recipient],
    priors: Priors,
    policy: ContactPolicy,
    channels: Sequence[str],
    start: float,
    window_hours: int,
    quiet: tuple[int, int] | None,
    default_timezone: str,
    explore_rate: float = 0.0,
) -> list[Placement | str]:
    """:func:`place` for each of ``recipients``, worked out together: everybody's channels
    ranked at once (``send_time.channel_rankings``), then round by round each member's
    next open channel whose window is left is planned, all at once
    (``send_time.plan_sends``), until every member has a slot or no channel left. Each
    answer is the one that member alone gets; their ``rng`` draws in the same order.

    Raises
    ------
    ValueError
        as ``send_time.plan_sends`` (a profile naming a zone this machine does not know).
    """
    outcome: dict[int, Placement | str] = {}
    reachable: dict[int, set[str]] = {}
    for n, recipient in enumerate(recipients):
        open_ = set(allowed(recipient.contact, channels))
        if open_:
            reachable[n] = open_
        else:
            outcome[n] = "opted_out"
    rankings = channel_rankings(
        [recipients[n].profile for n in reachable],
        priors,
        [recipients[n].contact.unanswered for n in reachable],
    )
    tries = {
        n: iter([c for c, _score, _evidence in ranking if c in open_])
        for (n, open_), ranking in zip(reachable.items(), rankings, strict=True)
    }
    why = dict.fromkeys(reachable, "fatigued")
    waiting = list(reachable)
    while waiting:
        asked: list[tuple[int, SendQuestion]] = []
        for n in waiting:
            question = _next_question(
                recipients[n], tries[n], policy, start, window_hours, quiet, default_timezone
            )
            if question is None:
                outcome[n] = why[n]
            else:
                asked.append((n, question))
        plans = plan_sends(
            [q for _, q in asked], priors, explore_rate, alternatives=0, counted_in=default_timezone
        )
        waiting = []
        for (n, question), plan in zip(asked, plans, strict=True):
            if plan.slots:
                slot = plan.slots[0]
                outcome[n] = Placement(
                    question.channel,
                    slot.send_at,
                    slot.probability,
                    slot.local_hour,
                    question.timezone,
                )
            else:
                why[n] = "quiet"
                waiting.append(n)
    return [outcome[n] for n in range(len(recipients))]


def _next_question(
    recipient: Recipient,
    channels: Iterator[str],
    policy: ContactPolicy,
    start: float,
    window_hours: int,
    quiet: tuple[int, int] | None,
    default_timezone: str,
) -> SendQuestion | None:
    """The question for the next of ``channels`` that has a whole hour of the window
    left; None when no channel has."""
    for channel in channels:
        # As PredictSendTime: the gap moves the window's start, never its end.
        begin, hours = open_window(
            start, window_hours, earliest_send(recipient.contact, channel, policy, start)
        )
        if hours >= 1:
            return SendQuestion(
                recipient.profile,
                channel,
                recipient.profile.timezone or default_timezone,
                datetime.fromtimestamp(begin, UTC),
                hours,
                quiet,
                recipient.rng,
            )
    return None


# --- pages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    user_id: str
    score: float
    reason: str
    explanation: str
    item_ids: tuple[str, ...]
    send_at: datetime
    channel: str
    probability: float
    local_hour: int
    timezone: str


@dataclass
class Page:
    members: list[Member]
    next_offset: int | None
    """Where the next page starts; None after the last."""
    examined: int
    """People this page looked at (members, left out, repeats)."""
    left_out: Counter[str] = field(default_factory=Counter)
    """Of :data:`LEFT_OUT`, how many."""


@dataclass
class Audience:
    """One request's audience, ready to be paged: the ranking and what planning needs."""

    campaign: Campaign
    start: float
    """The window's start (epoch seconds), fixed for every page."""
    promotion: Promotion
    ranking: Ranking
    model: AudienceModel
    """What ranked them (the ranking's rows are its bundle's users)."""
    recommender: Recommender
    priors: Priors
    policy: ContactPolicy
    settings: Settings
    identities: Identities
    catalogue: Catalogue

    def examine_at_most(self, limit: int) -> int:
        return EXAMINE_PER_MEMBER * limit + EXAMINE_EXTRA

    def page_plan(self, offset: int, limit: int) -> Plan[Page]:
        """Members from position ``offset`` of the order until ``limit`` are found, the
        order ends, or :meth:`examine_at_most` people were looked at. Each batch of people
        is read in one round trip (two when some were merged into others) and planned
        together (:func:`place_all`); each person is then ranked over the promoted items
        in order, until the page is full."""
        budget = self.examine_at_most(limit)
        order = self.ranking.prefix(offset + budget)
        members: list[Member] = []
        left_out: Counter[str] = Counter()
        seen: set[str] = set()
        at = offset
        while len(members) < limit and at < len(order) and at - offset < budget:
            # A few more than still needed: most people examined usually become members.
            want = (limit - len(members)) * 11 // 10 + 2
            rows = order[at : min(at + want, len(order), offset + budget)]
            people = [str(p) for p in self.model.user_ids[rows]]
            views = yield from together(
                [
                    self.identities.view_plan(default_token(p), popular_count=0, engagement=True)
                    for p in people
                ]
            )
            examined = [
                self._examined(view, row, seen)
                for row, view in zip(rows.tolist(), views, strict=True)
            ]
            # Planning the whole batch costs less than ranking the few past a full page,
            # which is why ranking (Recommender.rank, per person) waits for the walk below.
            placements = iter(self._placements([e for e in examined if isinstance(e, Candidate)]))
            for candidate in examined:
                at += 1
                outcome = (
                    self._member(candidate, next(placements))
                    if isinstance(candidate, Candidate)
                    else candidate
                )
                if isinstance(outcome, Member):
                    members.append(outcome)
                    if len(members) == limit:
                        break
                elif outcome:
                    left_out[outcome] += 1
        ended = at >= self.ranking.size
        return Page(members, None if ended else at, at - offset, left_out)

    def _examined(self, found: PersonView, row: int, seen: set[str]) -> Candidate | str:
        """The person of bundle row ``row``, as far as their view tells: a candidate, why
        they are left out, or "" (already in the page: linked to another examined person
        since training)."""
        if found.erased:
            return "erased"
        if found.person in seen:
            return ""
        seen.add(found.person)
        assert found.serving is not None and found.engagement is not None
        user = found.serving.user
        # Bought or disliked every promoted item: nothing to promote to them.
        done = user.purchased | user.disliked
        choices = [i for i in self.ranking.choices if i not in done]
        if not choices:
            return "bought"
        return Candidate(found, row, choices)

    def _placements(self, candidates: list[Candidate]) -> list[Placement | str | ValueError]:
        """:func:`place_all` for ``candidates``. When someone's stored evidence is broken
        (a profile that does not parse, or names a zone this machine does not know), one
        at a time instead: the error is then that member's, raised only if the page
        reaches them, as when each member was planned alone."""
        rules = (
            self.priors,
            self.policy,
            self.campaign.channels,
            self.start,
            self.campaign.window_hours,
            self.campaign.quiet,
            self.settings.default_timezone,
            self.settings.explore_rate,
        )
        try:
            return list(place_all([self._recipient(c) for c in candidates], *rules))
        except ValueError:
            alone: list[Placement | str | ValueError] = []
            for candidate in candidates:
                try:
                    alone.append(place_all([self._recipient(candidate)], *rules)[0])
                except ValueError as exc:
                    alone.append(exc)
            return alone

    def _recipient(self, candidate: Candidate) -> Recipient:
        person, engagement = candidate.found.person, candidate.found.engagement
        assert engagement is not None
        rng = None
        if self.settings.explore_rate > 0:
            # Seeded by person and window: a page asked for again plans the same.
            rng = np.random.default_rng([zlib.crc32(person.encode()), int(self.start)])
        return Recipient(
            profile_of(engagement, self.settings, self.priors), ContactState.of(engagement), rng
        )

    def _member(self, candidate: Candidate, placed: Placement | str | ValueError) -> Member | str:
        """The candidate, examined: a member, or why they are left out."""
        found, row, choices = candidate.found, candidate.row, candidate.choices
        assert found.serving is not None
        if len(choices) > MEMBER_SHORTLIST:
            choices = self.model.shortlist(row, choices, MEMBER_SHORTLIST)
        ranked = self.recommender.rank(
            found.scored_as,
            choices,
            found.serving,
            self.catalogue,
            RankingOptions(limit=len(choices)),
        )
        if not ranked:
            return "bought"
        if isinstance(placed, ValueError):
            raise placed
        if isinstance(placed, str):
            return placed
        reason = next((r.reason for r in ranked if r.reason != "unranked"), "personalised")
        return Member(
            user_id=found.person,
            score=float(self.ranking.scores[row]),
            reason=reason,
            explanation=explain(reason, self.catalogue),
            item_ids=tuple(r.item_id for r in ranked[:MEMBER_ITEMS]),
            send_at=placed.send_at,
            channel=placed.channel,
            probability=placed.probability,
            local_hour=placed.local_hour,
            timezone=placed.timezone,
        )


@dataclass(frozen=True)
class Candidate:
    """A person examined for a page who may become a member: what ranking them needs."""

    found: PersonView
    row: int
    """Their bundle user row."""
    choices: list[str]
    """The promoted items they neither bought nor disliked."""


class Rankings:
    """The latest few rankings, by model version and promotion: the pages of one audience
    reuse its ranking instead of scoring everybody again."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._held: OrderedDict[tuple[str, str], Ranking] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, label: str, model: AudienceModel, promotion: Promotion) -> Ranking:
        key = (label, promotion.key)
        with self._lock:
            found = self._held.get(key)
            if found is not None:
                self._held.move_to_end(key)
                return found
        ranking = model.rank(promotion)
        with self._lock:
            self._held[key] = ranking
            while len(self._held) > self.keep:
                self._held.popitem(last=False)
        return ranking


def _digest(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
