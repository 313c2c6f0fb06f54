"""The durable event stream: every accepted live event, until ``python -m training
export-events`` turns it into Parquet for the next training run."""

from __future__ import annotations

from collections.abc import Iterable

from service.store.codecs import text
from service.store.keys import export_checkpoint_key, stream_key
from service.store.plans import Client, unavailable

#: Stream entries an erasure reads per round trip.
STREAM_STEP = 5000


class EventStream:
    """Reading and trimming the stream (part of :class:`~service.store.FeatureStore`)."""

    client: Client
    prefix: str

    def read_events(self, after: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` stream entries with ids greater than ``after`` ("0" = all)."""
        with unavailable("reading the event stream"):
            raw = self.client.xrange(stream_key(self.prefix), min=f"({after}", count=count)
        return [(text(i), {text(k): text(v) for k, v in f.items()}) for i, f in raw]

    def first_event_id(self) -> str | None:
        with unavailable("reading the event stream"):
            raw = self.client.xrange(stream_key(self.prefix), count=1)
        return text(raw[0][0]) if raw else None

    def export_checkpoint(self) -> str:
        with unavailable("reading the export checkpoint"):
            raw = self.client.get(export_checkpoint_key(self.prefix))
        return text(raw) if raw else "0"

    def finish_export(self, last_id: str) -> None:
        """Remember what was exported, then drop it from the stream (memory)."""
        with unavailable("finishing an export"):
            self.client.set(export_checkpoint_key(self.prefix), last_id)
            # MINID keeps last_id itself; readers start after the checkpoint anyway.
            self.client.xtrim(stream_key(self.prefix), minid=last_id)

    def drop_events_of(self, people: Iterable[str], step: int = STREAM_STEP) -> int:
        """Delete every stream entry of ``people``, ``step`` entries per round trip (so a
        long stream never holds Redis, or a lock, for long); returns how many went."""
        ids = set(people)
        removed = 0
        after = "-"
        while True:
            with unavailable("erasing events from the stream"):
                batch = self.client.xrange(stream_key(self.prefix), min=after, count=step)
                if not batch:
                    return removed
                doomed = [i for i, fields in batch if text(fields.get(b"user_id", b"")) in ids]
                if doomed:
                    removed += int(self.client.xdel(stream_key(self.prefix), *doomed))
            after = f"({text(batch[-1][0])}"
