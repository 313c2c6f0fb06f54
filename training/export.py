"""Live events → Parquet, so the next training run includes everything tracked.

``TrackEvents`` appends every accepted event to a Redis stream. An export reads what
came after the last export's checkpoint, writes it as one Parquet file in the contract's
format, then moves the checkpoint and trims the exported part of the stream. Point
``train --events`` at the base log *and* the export folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from service.store import FeatureStore
from training.event_log import write_events

log = logging.getLogger(__name__)

READ_BATCH = 10_000


@dataclass
class ExportResult:
    events: int
    path: Path | None
    gap: bool
    """True when the stream had dropped entries that were never exported (it was
    trimmed by ``OMNIREC_STREAM_MAXLEN`` before this export ran)."""


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def export_events(store: FeatureStore, out_dir: str | Path) -> ExportResult:
    """Export every stream entry after the checkpoint into ``out_dir``."""
    checkpoint = store.export_checkpoint()
    first = store.first_event_id()
    # finish_export keeps the checkpoint entry itself, so a stream that now starts later
    # lost entries to OMNIREC_STREAM_MAXLEN before anyone exported them.
    gap = (
        checkpoint != "0" and first is not None and _stream_order(first) > _stream_order(checkpoint)
    )
    if gap:
        log.warning(
            "the event stream starts at %s, after the last export (%s): events in between "
            "were trimmed unexported; raise OMNIREC_STREAM_MAXLEN or export more often",
            first,
            checkpoint,
        )
    rows: list[dict[str, str]] = []
    after = checkpoint
    while True:
        batch = store.read_events(after, READ_BATCH)
        if not batch:
            break
        rows.extend(fields for _, fields in batch)
        after = batch[-1][0]
        log.info("export: %d events read", len(rows))
    if not rows:
        log.info("export: nothing new since %s", checkpoint)
        return ExportResult(0, None, gap)
    frame = pd.DataFrame(rows)
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    # The wire format cannot tell "no value" from 0.0; the export treats 0 as absent.
    value = pd.to_numeric(frame.get("value", np.nan), errors="coerce")
    frame["value"] = value.where(value != 0.0)
    if "automated" in frame:
        frame["automated"] = frame["automated"] == "1"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = out / f"events-{stamp}-{after.replace('-', '_')}.parquet"
    write_events(frame, path)
    store.finish_export(after)
    return ExportResult(len(rows), path, gap)
