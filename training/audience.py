"""``python -m training export-audience``: a campaign audience as one Parquet file, for
batch senders.

The members are exactly those ``Campaigns.Audience`` pages through (the same
:class:`service.campaigns.Audience`, run on the sync Redis client instead of gRPC), one
row each: ``user_id``, ``item_ids`` (the promoted items best for them), ``score``,
``reason``, ``explanation``, ``send_at`` (UTC), ``channel``, ``probability``,
``local_hour``, ``timezone``, in audience order.

Resumable by page: pages go to ``<out>.parts/page-NNNNNN.parquet`` as they are planned,
and ``<out>.parts/state.json`` records after each one where the next starts, the model
version, the request and the window's start. ``--resume`` loads that same model version
(whatever the alias says by then) and carries on after the last page written; a page
interrupted half-way is planned again. When the audience ends (or ``--max-members`` is
reached) the pages are joined into ``<out>``, one row group per page, and the parts
folder goes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from service.campaigns import LEFT_OUT, Audience, AudienceModel, Campaign, Member, Page
from service.catalogue import Catalogue
from service.config import Settings, feature_store, identity_secret
from service.contact import ContactPolicy
from service.errors import OmnirecError
from service.identity import Identities
from service.recommender import ServingParams
from service.registry import ModelRegistry

log = logging.getLogger(__name__)

#: The rows' columns.
SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_ids", pa.list_(pa.string())),
        ("score", pa.float32()),
        ("reason", pa.string()),
        ("explanation", pa.string()),
        ("send_at", pa.timestamp("s", tz="UTC")),
        ("channel", pa.string()),
        ("probability", pa.float64()),
        ("local_hour", pa.int8()),
        ("timezone", pa.string()),
    ]
)
STATE = "state.json"
#: Largest page the export plans at once (members; a page's people are read together).
MAX_PAGE_SIZE = 10_000


@dataclass
class ExportResult:
    path: Path | None
    """The Parquet file, or None when stopped early (``--pages``) for ``--resume``."""
    members: int
    pages: int
    left_out: Counter[str] = field(default_factory=Counter)


def parts_of(out: Path) -> Path:
    """The folder holding an export's pages until it is complete."""
    return out.with_name(out.name + ".parts")


def export_audience(
    settings: Settings,
    campaign: Campaign,
    out: Path,
    *,
    page_size: int = 1000,
    max_members: int | None = None,
    pages: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Write ``campaign``'s audience to ``out`` (see the module docstring); raises
    :class:`OmnirecError` (one line) on bad input or an unusable parts folder."""
    from tqdm import tqdm

    from service.served_model import Engine

    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise OmnirecError(f"--page-size: must be 1 to {MAX_PAGE_SIZE}, got {page_size}")
    parts = parts_of(out)
    state = _read_state(parts, campaign) if resume else None
    if state is None and parts.exists():
        raise OmnirecError(
            f"{parts} holds an interrupted export: pass --resume to continue it, or delete it"
        )
    registry = ModelRegistry(settings)
    model = (
        registry.load_version(state["version"])
        if state
        else registry.load_alias(settings.model_alias)
    )
    engine = Engine.of(model, ServingParams.of(settings))
    ranker = AudienceModel(model.bundle)
    ranker.check(model.label)
    store = feature_store(settings, max(settings.redis_timeout_seconds, 10.0))
    catalogue = Catalogue(*store.catalogue())
    promotion = ranker.promote(campaign, catalogue)
    if state and state["promoted"] != promotion.key:
        raise OmnirecError(
            f"--resume: the promoted items changed since {parts} was begun (the catalogue "
            "moved an item between categories); delete it and start again"
        )
    if state:
        start = float(state["start"])
    else:
        start = time.time() if campaign.not_before is None else campaign.not_before
    ranking = ranker.rank(promotion)
    audience = Audience(
        campaign,
        start,
        promotion,
        ranking,
        ranker,
        engine.recommender,
        engine.priors,
        ContactPolicy.of(settings),
        settings,
        Identities(store, identity_secret(settings)),
        catalogue,
    )
    state = state or {
        "version": model.version,
        "label": model.label,
        "request": campaign.fingerprint(),
        "promoted": promotion.key,
        "start": start,
        "next": 0,
        "pages": 0,
        "members": 0,
        "left_out": {},
    }
    parts.mkdir(parents=True, exist_ok=True)
    _write_json(parts / STATE, state)
    left_out = Counter(state["left_out"])
    done_now = 0
    offset: int | None = state["next"]
    log.info(
        "audience of %d people ranked by %s; starting at %d", ranking.size, model.label, offset
    )
    with tqdm(
        total=ranking.size,
        initial=offset,
        unit="people",
        desc="audience",
        disable=not progress,
        mininterval=1.0,
    ) as bar:
        while offset is not None and (max_members is None or state["members"] < max_members):
            if pages is not None and done_now == pages:
                break
            wanted = (
                page_size if max_members is None else min(page_size, max_members - state["members"])
            )
            page = store.run(audience.page_plan(offset, wanted), "reading the audience")
            number = state["pages"] + 1
            _write_page(parts / f"page-{number:06d}.parquet", page)
            offset = page.next_offset
            left_out.update(page.left_out)
            state |= {
                "next": offset,
                "pages": number,
                "members": state["members"] + len(page.members),
                "left_out": dict(left_out),
            }
            # After the page: a crash in between plans the page again on --resume.
            _write_json(parts / STATE, state)
            done_now += 1
            bar.update(page.examined)
            bar.set_postfix(members=state["members"], refresh=False)
    finished = offset is None or (max_members is not None and state["members"] >= max_members)
    if not finished:
        log.info("stopped after %d pages; --resume continues", state["pages"])
        return ExportResult(None, state["members"], state["pages"], left_out)
    _join(parts, out)
    shutil.rmtree(parts)
    return ExportResult(out, state["members"], state["pages"], left_out)


def _read_state(parts: Path, campaign: Campaign) -> dict[str, Any]:
    try:
        state = json.loads((parts / STATE).read_text())
    except FileNotFoundError:
        raise OmnirecError(f"--resume: no interrupted export at {parts}") from None
    except json.JSONDecodeError as exc:
        raise OmnirecError(f"--resume: {parts / STATE} is unreadable ({exc})") from None
    if state.get("request") != campaign.fingerprint():
        raise OmnirecError(
            f"--resume: {parts} was begun for another audience (other items, category, "
            "channels, window or quiet hours); give the same arguments, or delete it"
        )
    return state


def _rows(members: list[Member]) -> pa.Table:
    return pa.table(
        {
            "user_id": [m.user_id for m in members],
            "item_ids": [list(m.item_ids) for m in members],
            "score": [m.score for m in members],
            "reason": [m.reason for m in members],
            "explanation": [m.explanation for m in members],
            "send_at": [m.send_at for m in members],
            "channel": [m.channel for m in members],
            "probability": [m.probability for m in members],
            "local_hour": [m.local_hour for m in members],
            "timezone": [m.timezone for m in members],
        },
        schema=SCHEMA,
    )


def _write_page(path: Path, page: Page) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(_rows(page.members), tmp)
    os.replace(tmp, path)


def _join(parts: Path, out: Path) -> None:
    """Every page file, in order, as one row group each of ``out`` (written beside it,
    then moved into place)."""
    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp, SCHEMA) as writer:
        for page in sorted(parts.glob("page-*.parquet")):
            table = pq.read_table(page, schema=SCHEMA)
            if table.num_rows:
                writer.write_table(table)
    os.replace(tmp, out)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def summary(result: ExportResult) -> str:
    """What a run did, in one line for people."""
    skipped = ", ".join(f"{result.left_out[w]} {w}" for w in LEFT_OUT if result.left_out[w])
    where = f"to {result.path}" if result.path else "so far (--resume continues)"
    return f"{result.members} members in {result.pages} pages {where}" + (
        f"; left out: {skipped}" if skipped else ""
    )
