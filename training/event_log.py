"""Load and write event files (CSV or Parquet), validating every row against the contract.

The contract lives in :mod:`service.events`. A file holds the columns of ``COLUMNS`` (extra
columns are ignored, optional ones may be absent). :func:`load_events` checks every row,
vectorised, and either refuses the file with one readable line or, with
``skip_bad_rows=True``, drops the bad rows and says how many and why.

Timestamps are accepted as epoch seconds (int or float, fractions are floored), as ISO 8601
strings with or without an offset (naive means UTC), or as a native Parquet timestamp or
date column. The check is deliberately permissive: only negative (before 1970) and
unparseable timestamps are refused, plus anything after 9999-12-31, which no datetime
library can represent and which is almost always epoch milliseconds passed as seconds.

The optional ``automated`` flag is a native boolean in Parquet (null is false), 0/1 in an
integer column, or in text one of ``service.events.AUTOMATED_TRUE`` / ``AUTOMATED_FALSE``
in any case (empty is false).
"""

from __future__ import annotations

import collections
import csv
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from service.errors import OmnirecError
from service.events import (
    AUTOMATED_FALSE,
    AUTOMATED_TRUE,
    CHANNELS,
    COLUMNS,
    EVENT_TYPES,
    EXTRA_COLUMNS,
    ITEM_EVENT_TYPES,
    MAX_ID_LENGTH,
    REQUIRED_COLUMNS,
    is_valid_timezone,
)

log = logging.getLogger(__name__)

#: How many bad rows a report quotes.
MAX_EXAMPLES = 10
#: 9999-12-31T23:59:59Z, the last second every datetime library can represent.
MAX_TIMESTAMP = 253_402_300_799

ACCEPTED_FORMATS = ".csv, .csv.gz, .parquet, .pq or a directory of *.parquet files"

_STRING_FIELDS = ("user_id", "item_id", "event_type", "channel", "timezone", "recommendation_id")
# Plain decimal numbers only: "nan", "inf" and hex are not epoch seconds or values.
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# pandas parses "now" and "today" even with format="ISO8601"; demand a year first.
_ISO_START = r"^\d{4}-\d\d"
_UNIT_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}

# Row checks in the order they are reported: a row with several problems reports the first.
_MISSING_USER, _LONG_USER = 1, 2
_MISSING_TYPE, _UNKNOWN_TYPE = 3, 4
_MISSING_ITEM, _LONG_ITEM = 5, 6
_MISSING_TS, _BAD_TS, _NEGATIVE_TS, _LATE_TS = 7, 8, 9, 10
_UNKNOWN_CHANNEL, _UNKNOWN_ZONE, _BAD_VALUE, _BAD_AUTOMATED = 11, 12, 13, 14
_KINDS = {
    _MISSING_USER: "missing user_id",
    _LONG_USER: "user_id too long",
    _MISSING_TYPE: "missing event_type",
    _UNKNOWN_TYPE: "unknown event_type",
    _MISSING_ITEM: "missing item_id",
    _LONG_ITEM: "item_id too long",
    _MISSING_TS: "missing timestamp",
    _BAD_TS: "unparseable timestamp",
    _NEGATIVE_TS: "negative timestamp",
    _LATE_TS: "timestamp out of range",
    _UNKNOWN_CHANNEL: "unknown channel",
    _UNKNOWN_ZONE: "unknown timezone",
    _BAD_VALUE: "bad value",
    _BAD_AUTOMATED: "bad automated",
}
MALFORMED_ROW = "malformed row"


@dataclass
class LoadReport:
    """What loading one events file found: how many rows, how many bad ones and why."""

    source: str
    total_rows: int
    """Data rows in the file (blank CSV lines are not rows)."""
    bad_rows: int
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    """Kind of problem (e.g. ``"unknown event_type"``) → number of rows with it."""
    examples: list[tuple[str, str]] = field(default_factory=list)
    """The first bad rows as (location, reason): ``"line 17"`` in a CSV file (the header
    is line 1), ``"row 16"`` in Parquet (0-based, files of a directory in name order)."""

    def summary(self) -> str:
        """One line for logs and error messages."""
        if not self.bad_rows:
            return f"{self.source}: {self.total_rows} rows, none bad"
        kinds = ", ".join(f"{kind}: {n}" for kind, n in self.reasons.most_common())
        line = f"{self.source}: {_plural(self.bad_rows, 'bad row')} of {self.total_rows} ({kinds})"
        if self.examples:
            location, reason = self.examples[0]
            line += f"; first: {location}: {reason}"
        return line

    def details(self) -> str:
        """Several lines: the count per kind of problem, then the quoted bad rows."""
        lines = [f"{self.source}: {_plural(self.bad_rows, 'bad row')} of {self.total_rows}"]
        lines += [f"  {kind}: {n}" for kind, n in self.reasons.most_common()]
        if self.examples:
            lines.append(f"first {_plural(len(self.examples), 'bad row')}:")
            lines += [f"  {location}: {reason}" for location, reason in self.examples]
        return "\n".join(lines)


class EventLogError(OmnirecError):
    """An events file cannot be used; ``str()`` is one line naming the file and the problem.

    ``report`` is set when the file was read but has bad rows (see :class:`LoadReport`),
    and is ``None`` when the file itself is the problem (missing, wrong format, columns).
    """

    def __init__(self, message: str, report: LoadReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class EventLog:
    """Validated events and the report of how loading went.

    ``frame`` has exactly the columns of ``COLUMNS`` in that order and a RangeIndex:
    ``user_id``, ``item_id``, ``channel``, ``timezone`` are ``str`` (``""`` when absent),
    ``event_type`` is Categorical with categories ``EVENT_TYPES``, ``timestamp`` is int64
    epoch seconds UTC, ``value`` is float64 (NaN when absent) and ``automated`` is bool
    (False when absent).
    """

    frame: pd.DataFrame
    report: LoadReport


def load_events(path: str | Path, *, skip_bad_rows: bool = False) -> EventLog:
    """Read and validate an events file: ``.csv``, ``.csv.gz``, ``.parquet``/``.pq`` or a
    directory of ``*.parquet`` files read as one data set.

    Raises
    ------
    EventLogError
        when the file is missing, unreadable, of another format or lacks a required
        column; and when any row is bad, unless ``skip_bad_rows`` is set, in which case
        the bad rows are dropped, counted in the report and logged as a warning.
    """
    src = Path(path)
    source = str(path)
    log.info("reading events from %s", source)
    started = time.perf_counter()
    raw = _read(src, source)
    log.info(
        "read %d rows from %s in %.2fs", raw.table.num_rows, source, time.perf_counter() - started
    )

    started = time.perf_counter()
    fields = _Fields.parse(raw.table, source)
    codes = fields.check()
    if raw.blank is not None:
        codes[raw.blank] = _BLANK
    bad_at = np.flatnonzero((codes > 0) & (codes != _BLANK))
    report = _report(source, raw, codes, bad_at, fields)
    log.info(
        "validated %s in %.2fs: %d bad rows",
        source,
        time.perf_counter() - started,
        report.bad_rows,
    )
    if report.bad_rows:
        if not skip_bad_rows:
            raise EventLogError(report.summary(), report)
        log.warning("skipping bad rows: %s", report.summary())
    return EventLog(frame=fields.frame(codes == 0), report=report)


def write_events(frame: pd.DataFrame, path: str | Path) -> None:
    """Write events as Parquet (``.parquet``/``.pq``) or CSV (``.csv``, ``.csv.gz``).

    Writes the contract's columns in contract order (extra columns are dropped, absent
    optional ones written empty, an absent ``automated`` as false) with ``timestamp`` as
    int64 epoch seconds; a datetime64 ``timestamp`` column is converted (naive means UTC);
    ``automated`` is written as a boolean (text in the accepted spellings is converted).
    Rows are not validated here: :func:`load_events` reads back a frame equal to one it
    returned.

    Raises
    ------
    EventLogError
        on another extension, a missing required column, a missing timestamp or an
        ``automated`` value that is not a boolean.
    """
    dest = Path(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise EventLogError(f"{path}: frame has no {', '.join(missing)} column")
    table = _to_arrow(frame, str(path))
    if dest.suffix in (".parquet", ".pq"):
        pq.write_table(table, dest)
    elif dest.name.endswith(".csv"):
        pacsv.write_csv(table, dest)
    elif dest.name.endswith(".csv.gz"):
        with pa.CompressedOutputStream(str(dest), "gzip") as out:
            pacsv.write_csv(table, out)
    else:
        raise EventLogError(f"{path}: cannot write this format; expected .csv, .csv.gz, .parquet")
    log.info("wrote %d events to %s", table.num_rows, path)


# --- reading ---------------------------------------------------------------------------

# Code of CSV rows that are blank lines: neither kept nor bad.
_BLANK = 127


@dataclass
class _Raw:
    table: pa.Table
    """The contract columns the file has, as read (strings for CSV, native for Parquet)."""
    locate: Callable[[int], tuple[int, str]]
    """Row index → (sort key, location) for the report."""
    malformed: list[tuple[int, str]] = field(default_factory=list)
    """CSV lines dropped by the parser as (line number, reason)."""
    blank: np.ndarray | None = None
    """CSV rows that are blank lines (or only commas): not events, silently skipped."""


def _read(src: Path, source: str) -> _Raw:
    if not src.exists():
        raise EventLogError(f"{source}: no such file")
    if src.is_dir():
        files = sorted(src.rglob("*.parquet"))
        if not files:
            raise EventLogError(f"{source}: directory holds no *.parquet files")
        return _read_parquet([str(f) for f in files], source)
    if src.suffix in (".parquet", ".pq"):
        return _read_parquet(str(src), source)
    if src.name.endswith((".csv", ".csv.gz")):
        return _read_csv(src, source)
    raise EventLogError(f"{source}: unsupported format; expected {ACCEPTED_FORMATS}")


def _read_parquet(files: str | list[str], source: str) -> _Raw:
    try:
        dataset = ds.dataset(files, format="parquet")
        present = _present_columns(dataset.schema.names, source)
        table = dataset.to_table(columns=present)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise EventLogError(f"{source}: unreadable Parquet ({_one_line(str(exc))})") from None
    return _Raw(table=table, locate=lambda i: (i, f"row {i}"))


def _read_csv(src: Path, source: str) -> _Raw:
    present = _present_columns(_csv_header(src, source), source)
    try:
        table, malformed = _parse_csv(src, present, use_threads=True)
        if malformed:
            # The multi-threaded parser cannot tell where a dropped line was; the single
            # threaded one can, and only files with malformed lines pay for it.
            table, malformed = _parse_csv(src, present, use_threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise EventLogError(f"{source}: unreadable CSV ({_one_line(str(exc))})") from None

    blank = np.ones(table.num_rows, dtype=bool)
    for name in present:
        blank &= pc.equal(table.column(name), "").fill_null(True).to_numpy(zero_copy_only=False)
    # Row i sits on line i + 2 plus the dropped lines before it; a_j below is the row
    # index the j-th dropped line would have had, so searchsorted counts those before i.
    dropped = np.array([line for line, _ in malformed], dtype=np.int64)
    shift = dropped - 2 - np.arange(len(dropped))

    def locate(i: int) -> tuple[int, str]:
        line = i + 2 + int(np.searchsorted(shift, i, side="right"))
        return line, f"line {line}"

    return _Raw(table=table, locate=locate, malformed=malformed, blank=blank)


def _csv_header(src: Path, source: str) -> list[str]:
    try:
        with pa.input_stream(str(src)) as stream:  # decompresses .gz by extension
            head = b""
            while b"\n" not in head and len(head) < 1 << 20:
                chunk = stream.read(1 << 16)
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        raise EventLogError(f"{source}: unreadable CSV ({_one_line(str(exc))})") from None
    first = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    header = next(csv.reader(io.StringIO(first)), [])
    if not header:
        raise EventLogError(f"{source}: empty file, expected a header row")
    return header


def _parse_csv(
    src: Path, columns: list[str], *, use_threads: bool
) -> tuple[pa.Table, list[tuple[int, str]]]:
    malformed: list[tuple[int, str]] = []

    def drop(row: pacsv.InvalidRow) -> str:
        reason = f"expected {row.expected_columns} columns, got {row.actual_columns}"
        malformed.append((row.number or 0, reason))
        return "skip"

    table = pacsv.read_csv(
        src,
        read_options=pacsv.ReadOptions(use_threads=use_threads),
        # Blank lines are kept as rows (and skipped later) so row i stays on line i + 2.
        parse_options=pacsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=drop),
        # Every column as a string: empty cells stay "", and one odd value cannot make
        # type inference fail halfway through a big file.
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in columns},
            include_columns=columns,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, sorted(malformed)


def _present_columns(names: Sequence[str], source: str) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise EventLogError(
            f"{source}: missing required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (columns are {', '.join(COLUMNS)})"
        )
    return [c for c in (*COLUMNS, *EXTRA_COLUMNS) if c in names]


# --- validating ------------------------------------------------------------------------


@dataclass
class _Fields:
    """The columns parsed into their final types, plus what is needed to explain a row."""

    strings: dict[str, pa.ChunkedArray]
    """Trimmed strings, "" where empty; also how bad values are quoted."""
    shown: dict[str, pa.ChunkedArray]
    """How to quote timestamp and value in a reason (the trimmed text, or native)."""
    type_index: np.ndarray
    """Position in EVENT_TYPES, -1 when unknown."""
    seconds: np.ndarray
    ts_code: np.ndarray
    values: np.ndarray
    bad_value: np.ndarray
    automated: np.ndarray
    bad_automated: np.ndarray

    @classmethod
    def parse(cls, table: pa.Table, source: str) -> _Fields:
        n = table.num_rows
        names = table.column_names
        strings = {
            name: _strings(table.column(name), name, source)
            if name in names
            else pa.chunked_array([pa.repeat("", n)], pa.string())
            for name in _STRING_FIELDS
        }
        type_index = (
            pc.index_in(strings["event_type"], value_set=pa.array(EVENT_TYPES))
            .fill_null(-1)
            .to_numpy()
        )
        stamp = table.column("timestamp")
        seconds, ts_code, stamp_shown = _timestamps(stamp, source)
        if "value" in names:
            values, bad_value, value_shown = _values(table.column("value"), source)
        else:
            values, bad_value = np.full(n, np.nan), np.zeros(n, dtype=bool)
            value_shown = pa.chunked_array([pa.nulls(n)])
        if "automated" in names:
            automated, bad_automated, automated_shown = _flags(
                table.column("automated"), "automated", source
            )
        else:
            automated, bad_automated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
            automated_shown = pa.chunked_array([pa.nulls(n)])
        return cls(
            strings=strings,
            shown={"timestamp": stamp_shown, "value": value_shown, "automated": automated_shown},
            type_index=type_index,
            seconds=seconds,
            ts_code=ts_code,
            values=values,
            bad_value=bad_value,
            automated=automated,
            bad_automated=bad_automated,
        )

    def check(self) -> np.ndarray:
        """Per row: 0 when good, else the code of its first problem."""
        user, item = self.strings["user_id"], self.strings["item_id"]
        event_type = self.strings["event_type"]
        is_item_event = (self.type_index >= 0) & (self.type_index < len(ITEM_EVENT_TYPES))
        zones = self.strings["timezone"]
        channel = self.strings["channel"]
        checks = [
            (_MISSING_USER, _empty(user)),
            (_LONG_USER, _too_long(user)),
            (_MISSING_TYPE, _empty(event_type)),
            (_UNKNOWN_TYPE, self.type_index < 0),
            (_MISSING_ITEM, is_item_event & _empty(item)),
            (_LONG_ITEM, _too_long(item)),
            *(
                (code, self.ts_code == code)
                for code in (_MISSING_TS, _BAD_TS, _NEGATIVE_TS, _LATE_TS)
            ),
            (_UNKNOWN_CHANNEL, ~_np(pc.is_in(channel, value_set=pa.array(("", *CHANNELS))))),
            (_UNKNOWN_ZONE, ~_np(pc.is_in(zones, value_set=_valid_zones(zones)))),
            (_BAD_VALUE, self.bad_value),
            (_BAD_AUTOMATED, self.bad_automated),
        ]
        codes = np.zeros(len(self.type_index), dtype=np.int8)
        # Later checks first, so that the earliest problem of a row is the one that stays.
        for code, bad in reversed(checks):
            codes[bad] = code
        return codes

    def reason(self, code: int, i: int) -> str:
        """The one-line explanation of row ``i``'s problem ``code``."""
        if code in (_MISSING_USER, _MISSING_TYPE, _MISSING_TS):
            name = {_MISSING_USER: "user_id", _MISSING_TYPE: "event_type"}.get(code, "timestamp")
            return f"{name} is required"
        if code in (_LONG_USER, _LONG_ITEM):
            name = "user_id" if code == _LONG_USER else "item_id"
            length = len(self.strings[name][i].as_py())
            return f"{name} is longer than {MAX_ID_LENGTH} characters ({length})"
        if code == _UNKNOWN_TYPE:
            return _not_one_of("event_type", self.strings["event_type"][i].as_py(), EVENT_TYPES)
        if code == _MISSING_ITEM:
            return f"item_id is required for a {EVENT_TYPES[self.type_index[i]]!r} event"
        if code == _UNKNOWN_CHANNEL:
            return _not_one_of("channel", self.strings["channel"][i].as_py(), CHANNELS)
        if code == _UNKNOWN_ZONE:
            zone = _quote(self.strings["timezone"][i].as_py())
            return f"timezone {zone} is not a known IANA time zone"
        if code == _BAD_VALUE:
            return f"value {_quote(self.shown['value'][i].as_py())} is not a finite number"
        if code == _BAD_AUTOMATED:
            return (
                f"automated {_quote(self.shown['automated'][i].as_py())} is not a boolean "
                "(true/false, 1/0, yes/no, t/f or empty)"
            )
        stamp = _quote(self.shown["timestamp"][i].as_py())
        if code == _BAD_TS:
            return f"timestamp {stamp} is neither epoch seconds nor ISO 8601"
        if code == _NEGATIVE_TS:
            return f"timestamp {stamp} is before 1970-01-01"
        return f"timestamp {stamp} is after 9999-12-31 (epoch milliseconds instead of seconds?)"

    def frame(self, keep: np.ndarray) -> pd.DataFrame:
        """The good rows (``keep``) as the contract frame."""
        mask = None if keep.all() else pa.array(keep)

        def text(name: str) -> pd.Series:
            column = self.strings[name]
            return (column if mask is None else column.filter(mask)).to_pandas()

        columns = {
            "user_id": text("user_id"),
            "item_id": text("item_id"),
            "event_type": pd.Categorical.from_codes(
                self.type_index[keep], categories=list(EVENT_TYPES)
            ),
            "timestamp": self.seconds[keep],
            "channel": text("channel"),
            "timezone": text("timezone"),
            "value": self.values[keep],
            "automated": self.automated[keep],
        }
        frame = pd.DataFrame({name: columns[name] for name in COLUMNS})
        for name in EXTRA_COLUMNS:
            if pc.any(pc.not_equal(self.strings[name], "")).as_py():
                frame[name] = text(name).to_numpy()
        return frame


def _strings(column: pa.ChunkedArray, name: str, source: str) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    ids_as_numbers = name in ("user_id", "item_id") and pa.types.is_integer(kind)
    if not (_is_text(kind) or pa.types.is_null(kind) or ids_as_numbers):
        raise EventLogError(f"{source}: column {name} has type {column.type}; expected strings")
    text = pc.cast(column, pa.string()).fill_null("")
    return pc.utf8_trim_whitespace(text)


def _timestamps(
    column: pa.ChunkedArray, source: str
) -> tuple[np.ndarray, np.ndarray, pa.ChunkedArray]:
    """Epoch seconds (floored), per-row problem code (0 = fine), and how to quote a row."""
    kind = column.type
    n = len(column)
    missing = _np(column.is_null())
    if pa.types.is_date(kind):
        column, kind = pc.cast(column, pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(kind):
        # Arrow stores instants as UTC epoch; a naive timestamp is read as UTC.
        ticks = pc.cast(column, pa.int64()).fill_null(0).to_numpy()
        seconds = np.floor_divide(ticks, _UNIT_PER_SECOND[kind.unit])
        return seconds, _timestamp_codes(seconds.astype(np.float64), missing), column
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        floats = pc.cast(column, pa.float64()).fill_null(np.nan).to_numpy()
        return _floor_seconds(floats), _timestamp_codes(floats, missing), column
    if not (_is_text(kind) or pa.types.is_null(kind)):
        raise EventLogError(
            f"{source}: column timestamp has type {kind}; "
            "expected epoch seconds, ISO 8601 strings or a timestamp"
        )
    text = _strings(column, "timestamp", source)
    missing = _empty(text)
    floats = np.full(n, np.nan)
    numeric = _np(pc.match_substring_regex(text, _NUMBER))
    if numeric.any():
        floats[numeric] = pc.cast(text.filter(pa.array(numeric)), pa.float64()).to_numpy()
    seconds = _floor_seconds(floats)
    iso = ~numeric & _np(pc.match_substring_regex(text, _ISO_START))
    if iso.any():
        parsed = pd.DatetimeIndex(
            pd.to_datetime(
                text.filter(pa.array(iso)).to_numpy(zero_copy_only=False),
                utc=True,
                errors="coerce",
                format="ISO8601",
            )
        )
        ok = ~parsed.isna()
        instants = np.floor_divide(parsed.asi8[ok], _UNIT_PER_SECOND[parsed.unit])
        where = np.flatnonzero(iso)[ok]
        seconds[where] = instants
        floats[where] = instants
    return seconds, _timestamp_codes(floats, missing), text


def _floor_seconds(floats: np.ndarray) -> np.ndarray:
    usable = np.isfinite(floats) & (np.abs(floats) <= MAX_TIMESTAMP)
    return np.floor(np.where(usable, floats, 0.0)).astype(np.int64)


def _timestamp_codes(floats: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """``floats``: epoch seconds, NaN where unparseable."""
    codes = np.zeros(len(floats), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        codes[floats > MAX_TIMESTAMP] = _LATE_TS
        codes[floats < 0] = _NEGATIVE_TS
    codes[np.isnan(floats)] = _BAD_TS
    codes[missing] = _MISSING_TS
    return codes


def _values(column: pa.ChunkedArray, source: str) -> tuple[np.ndarray, np.ndarray, pa.ChunkedArray]:
    """float64 (NaN when absent), the rows that are bad, and how to quote a row."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        # A NaN in a native float column is how Parquet writers say "no value".
        floats = pc.cast(column, pa.float64()).fill_null(np.nan).to_numpy()
        return floats, np.isinf(floats), column
    if not (_is_text(kind) or pa.types.is_null(kind)):
        raise EventLogError(f"{source}: column value has type {kind}; expected numbers")
    text = _strings(column, "value", source)
    floats = np.full(len(text), np.nan)
    numeric = _np(pc.match_substring_regex(text, _NUMBER))
    if numeric.any():
        floats[numeric] = pc.cast(text.filter(pa.array(numeric)), pa.float64()).to_numpy()
    bad = (~numeric & ~_empty(text)) | np.isinf(floats)
    return floats, bad, text


def _flags(
    column: pa.ChunkedArray, name: str, source: str
) -> tuple[np.ndarray, np.ndarray, pa.ChunkedArray]:
    """A boolean column (null and empty are False), the rows that are bad, and how to quote
    a row. Native booleans, integers 0/1 and the text spellings of the contract are read."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = pc.cast(column, kind.value_type)
        kind = kind.value_type
    n = len(column)
    if pa.types.is_boolean(kind) or pa.types.is_null(kind):
        flags = pc.cast(column, pa.bool_()).fill_null(False)
        return _np(flags), np.zeros(n, dtype=bool), column
    if pa.types.is_integer(kind):
        filled = pc.cast(column, pa.int64()).fill_null(0).to_numpy()
        return filled == 1, (filled != 0) & (filled != 1), column
    if not _is_text(kind):
        raise EventLogError(f"{source}: column {name} has type {kind}; expected booleans")
    text = pc.utf8_lower(_strings(column, name, source))
    flags = _np(pc.is_in(text, value_set=pa.array(AUTOMATED_TRUE)))
    known = flags | _np(pc.is_in(text, value_set=pa.array(AUTOMATED_FALSE)))
    return flags, ~known, _strings(column, name, source)


def _valid_zones(zones: pa.ChunkedArray) -> pa.Array:
    """The distinct names in ``zones`` that are known IANA zones, plus ""."""
    valid = [""]
    for name in pc.unique(zones).to_pylist():
        try:
            if name and is_valid_timezone(name):
                valid.append(name)
        except OSError:
            # zoneinfo raises IsADirectoryError for "America" and similar; not a zone.
            continue
    return pa.array(valid, pa.string())


def _report(
    source: str, raw: _Raw, codes: np.ndarray, bad_at: np.ndarray, fields: _Fields
) -> LoadReport:
    blank_rows = 0 if raw.blank is None else int(raw.blank.sum())
    counts = np.bincount(codes[bad_at], minlength=len(_KINDS) + 1)
    reasons = collections.Counter({_KINDS[c]: int(n) for c, n in enumerate(counts) if n})
    if raw.malformed:
        reasons[MALFORMED_ROW] = len(raw.malformed)
    # The first bad rows in file order, from validation and from the CSV parser.
    found = [
        (*raw.locate(int(i)), fields.reason(int(codes[i]), int(i))) for i in bad_at[:MAX_EXAMPLES]
    ]
    found += [(line, f"line {line}", reason) for line, reason in raw.malformed[:MAX_EXAMPLES]]
    found.sort(key=lambda item: item[0])
    return LoadReport(
        source=source,
        total_rows=raw.table.num_rows - blank_rows + len(raw.malformed),
        bad_rows=len(bad_at) + len(raw.malformed),
        reasons=reasons,
        examples=[(location, reason) for _, location, reason in found[:MAX_EXAMPLES]],
    )


# --- writing ---------------------------------------------------------------------------


def _to_arrow(frame: pd.DataFrame, dest: str) -> pa.Table:
    n = len(frame)
    arrays: dict[str, pa.Array] = {}
    for name in COLUMNS:
        if name == "timestamp":
            arrays[name] = pa.array(_epoch_seconds(frame[name], dest), pa.int64())
        elif name == "value":
            value = frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)
            floats = pd.to_numeric(value, errors="raise").astype(np.float64)
            arrays[name] = pa.array(floats.to_numpy(), pa.float64(), from_pandas=True)
        elif name == "automated":
            arrays[name] = pa.array(_automated_flags(frame, name, dest), pa.bool_())
        elif name in frame.columns:
            text = frame[name].astype("str").fillna("")
            arrays[name] = pa.array(text).cast(pa.string())
        else:
            arrays[name] = pa.repeat("", n).cast(pa.string())
    for name in EXTRA_COLUMNS:  # only when the frame has them: files stay as they were
        if name in frame.columns:
            arrays[name] = pa.array(frame[name].astype("str").fillna("")).cast(pa.string())
    return pa.table(arrays)


def _automated_flags(frame: pd.DataFrame, name: str, dest: str) -> np.ndarray:
    if name not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    column = frame[name]
    if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
        return column.fillna(False).astype(bool).to_numpy()
    # Text or objects: the contract's spellings (Python booleans print as True / False).
    text = column.fillna("").astype("str").str.strip().str.lower()
    unknown = ~text.isin((*AUTOMATED_TRUE, *AUTOMATED_FALSE))
    if unknown.any():
        example = _quote(text[unknown].iloc[0])
        raise EventLogError(
            f"{dest}: automated {example} is not a boolean in {int(unknown.sum())} rows"
        )
    return text.isin(AUTOMATED_TRUE).to_numpy()


def _epoch_seconds(stamps: pd.Series, dest: str) -> np.ndarray:
    if stamps.isna().any():
        raise EventLogError(f"{dest}: timestamp is missing in {int(stamps.isna().sum())} rows")
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(stamps.dtype):
        index = pd.DatetimeIndex(stamps)
        return np.floor_divide(index.asi8, _UNIT_PER_SECOND[index.unit])
    return np.floor(stamps.to_numpy(dtype=np.float64)).astype(np.int64)


# --- small helpers ---------------------------------------------------------------------


def _np(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return mask.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _empty(text: pa.ChunkedArray) -> np.ndarray:
    return _np(pc.equal(text, ""))


def _too_long(text: pa.ChunkedArray) -> np.ndarray:
    return _np(pc.greater(pc.utf8_length(text), MAX_ID_LENGTH))


def _is_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or (pa.types.is_string_view(kind))
    )


def _not_one_of(name: str, value: str, allowed: Sequence[str]) -> str:
    reason = f"{name} {_quote(value)} is not one of {', '.join(allowed)}"
    if value.lower() in allowed:
        reason += f"; did you mean {value.lower()!r}? (values are lower case)"
    return reason


def _quote(value: object) -> str:
    # repr() escapes newlines, so a reason always stays on one line.
    text = str(value)
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
