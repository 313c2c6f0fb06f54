"""Loading, validating and writing event files (training/event_log.py)."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.errors import OmnirecError
from service.events import COLUMNS, EVENT_TYPES, MAX_ID_LENGTH
from training.event_log import EventLogError, load_events, write_events

# The files of most tests leave out the optional ``automated`` column (so it is False).
HEADER = ",".join(c for c in COLUMNS if c != "automated")
FULL_HEADER = ",".join(COLUMNS)
JAN_1_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z

CLEAN_ROWS = [
    "u1,i1,view,1700000000,web,Europe/Berlin,",
    "u1,i2,purchase,1700000100,app,,19.99",
    "u2,,message_open,1700000200,email,,",
    "u2,i1,dislike,1700000300,,America/New_York,",
]


def write_csv(directory: Path, rows: list[str], header: str = HEADER, name: str = "e.csv") -> Path:
    path = directory / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def clean_frame() -> pd.DataFrame:
    """What CLEAN_ROWS must load to."""
    return pd.DataFrame(
        {
            "user_id": pd.Series(["u1", "u1", "u2", "u2"], dtype="str"),
            "item_id": pd.Series(["i1", "i2", "", "i1"], dtype="str"),
            "event_type": pd.Categorical(
                ["view", "purchase", "message_open", "dislike"], categories=list(EVENT_TYPES)
            ),
            "timestamp": np.array([1700000000, 1700000100, 1700000200, 1700000300], np.int64),
            "channel": pd.Series(["web", "app", "email", ""], dtype="str"),
            "timezone": pd.Series(["Europe/Berlin", "", "", "America/New_York"], dtype="str"),
            "value": [np.nan, 19.99, np.nan, np.nan],
            "automated": np.zeros(4, dtype=bool),
        }
    )


def one_timestamp(tmp_path: Path, stamp: str) -> int:
    log = load_events(write_csv(tmp_path, [f"u1,i1,view,{stamp},,,"]))
    return int(log.frame["timestamp"].iloc[0])


# --- clean files -----------------------------------------------------------------------


def test_clean_csv_loads_the_contract_frame(tmp_path: Path) -> None:
    log = load_events(write_csv(tmp_path, CLEAN_ROWS))

    pd.testing.assert_frame_equal(log.frame, clean_frame())
    assert list(log.frame.columns) == list(COLUMNS)
    assert list(log.frame["event_type"].cat.categories) == list(EVENT_TYPES)
    assert log.frame["timestamp"].dtype == np.int64
    assert log.report.total_rows == 4
    assert log.report.bad_rows == 0
    assert log.report.summary() == f"{tmp_path / 'e.csv'}: 4 rows, none bad"


def test_clean_parquet_loads_the_same_frame_as_csv(tmp_path: Path) -> None:
    from_csv = load_events(write_csv(tmp_path, CLEAN_ROWS)).frame
    path = tmp_path / "e.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u1", "u2", "u2"],
                "item_id": ["i1", "i2", None, "i1"],
                "event_type": ["view", "purchase", "message_open", "dislike"],
                "timestamp": pa.array([1700000000, 1700000100, 1700000200, 1700000300]),
                "channel": ["web", "app", "email", None],
                "timezone": ["Europe/Berlin", "", None, "America/New_York"],
                "value": [None, 19.99, None, np.nan],
            }
        ),
        path,
    )
    pd.testing.assert_frame_equal(load_events(path).frame, from_csv)


def test_whitespace_around_fields_is_trimmed(tmp_path: Path) -> None:
    log = load_events(write_csv(tmp_path, [" u1 , i1 , view , 1700000000 , web , UTC , 2.5 "]))
    row = log.frame.iloc[0]
    assert (row["user_id"], row["item_id"], row["event_type"]) == ("u1", "i1", "view")
    assert (row["timestamp"], row["channel"], row["timezone"], row["value"]) == (
        1700000000,
        "web",
        "UTC",
        2.5,
    )


def test_blank_lines_are_not_rows_and_do_not_shift_line_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["u1,i1,view,1700000000,,,", "", ",,,,,,", "u2,i1,nope,1,,,", ""])
    with pytest.raises(EventLogError) as caught:
        load_events(path)
    report = caught.value.report
    assert (report.total_rows, report.bad_rows) == (2, 1)
    assert report.examples[0][0] == "line 5"


def test_extra_columns_are_ignored(tmp_path: Path) -> None:
    rows = ["u1,i1,view,1700000000,web,,,12", "u2,i2,click,1700000001,,,,not a number"]
    log = load_events(write_csv(tmp_path, rows, header=HEADER + ",campaign"))
    assert list(log.frame.columns) == list(COLUMNS)
    assert len(log.frame) == 2


def test_optional_columns_may_be_absent(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        ["u1,view,1700000000", "u1,session_start,1700000001"],
        "user_id,event_type,timestamp",
    )
    log = load_events(path, skip_bad_rows=True)
    # Without an item_id column the view is missing its item; the session start is fine.
    assert log.report.reasons == collections.Counter({"missing item_id": 1})
    frame = log.frame
    assert list(frame.columns) == list(COLUMNS)
    assert frame["event_type"].tolist() == ["session_start"]
    assert frame[["item_id", "channel", "timezone"]].iloc[0].tolist() == ["", "", ""]
    assert np.isnan(frame["value"].iloc[0])
    assert frame["item_id"].dtype == "str"


# --- timestamps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "epoch"),
    [
        ("1700000000", 1_700_000_000),
        ("1700000000.9", 1_700_000_000),  # fractions are floored
        ("1.7e9", 1_700_000_000),
        ("0", 0),
        ("2024-01-01T00:00:00Z", JAN_1_2024),
        ("2024-01-01T02:00:00+02:00", JAN_1_2024),
        ("2023-12-31T19:30:00-04:30", JAN_1_2024),
        ("2024-01-01T00:00:00", JAN_1_2024),  # naive is UTC
        ("2024-01-01 00:00:00.999", JAN_1_2024),
        ("2024-01-01", JAN_1_2024),
    ],
)
def test_timestamp_forms(tmp_path: Path, stamp: str, epoch: int) -> None:
    assert one_timestamp(tmp_path, stamp) == epoch


def test_mixed_timestamp_forms_in_one_file(tmp_path: Path) -> None:
    rows = [
        "u1,i1,view,2024-01-01T01:00:00+01:00,,,",
        f"u1,i1,view,{JAN_1_2024 + 5},,,",
        "u1,i1,view,2024-01-01T00:00:10,,,",
    ]
    stamps = load_events(write_csv(tmp_path, rows)).frame["timestamp"].tolist()
    assert stamps == [JAN_1_2024, JAN_1_2024 + 5, JAN_1_2024 + 10]


def test_parquet_native_timestamp_columns(tmp_path: Path) -> None:
    berlin = pd.Timestamp("2024-01-01T01:00:00", tz="Europe/Berlin")
    cases = {
        "aware": pa.array([berlin], pa.timestamp("ms", tz="Europe/Berlin")),
        "naive": pa.array([pd.Timestamp("2024-01-01T00:00:00.750")], pa.timestamp("us")),
        "date": pa.array([pd.Timestamp("2024-01-01").date()], pa.date32()),
        "float": pa.array([JAN_1_2024 + 0.5]),
        "string": pa.array(["2024-01-01T00:00:00Z"]),
    }
    for name, stamps in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(
            pa.table({"user_id": ["u"], "event_type": ["session_start"], "timestamp": stamps}), path
        )
        assert load_events(path).frame["timestamp"].tolist() == [JAN_1_2024], name


def test_parquet_native_id_and_value_types(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table(
        {
            "user_id": pa.array([7, 8], pa.int64()),
            "item_id": pa.array(["a", "b"]).dictionary_encode(),
            "event_type": ["view", "click"],
            "timestamp": pa.array([1, 2], pa.int32()),
            "value": ["1.5", ""],
        }
    )
    pq.write_table(table, path)
    frame = load_events(path).frame
    assert frame["user_id"].tolist() == ["7", "8"]
    assert frame["item_id"].tolist() == ["a", "b"]
    assert frame["value"].tolist()[0] == 1.5
    assert np.isnan(frame["value"].iloc[1])


def test_parquet_column_of_an_unusable_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table({"user_id": ["u"], "event_type": ["view"], "timestamp": [True]})
    pq.write_table(table, path)
    with pytest.raises(EventLogError, match="column timestamp has type bool"):
        load_events(path)


# --- bad rows --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "kind", "reason"),
    [
        ("u1,i1,foo,1700000000,,,", "unknown event_type", "event_type 'foo' is not one of view"),
        ("u1,i1,View,1700000000,,,", "unknown event_type", "did you mean 'view'?"),
        ("u1,i1,,1700000000,,,", "missing event_type", "event_type is required"),
        (",i1,view,1700000000,,,", "missing user_id", "user_id is required"),
        ("u1,,purchase,1700000000,,,", "missing item_id", "item_id is required for a 'purchase'"),
        (f"{'u' * (MAX_ID_LENGTH + 1)},i1,view,1,,,", "user_id too long", "user_id is longer"),
        (f"u1,{'i' * (MAX_ID_LENGTH + 1)},view,1,,,", "item_id too long", "item_id is longer"),
        ("u1,i1,view,,,,", "missing timestamp", "timestamp is required"),
        ("u1,i1,view,yesterday,,,", "unparseable timestamp", "timestamp 'yesterday' is neither"),
        ("u1,i1,view,now,,,", "unparseable timestamp", "timestamp 'now'"),
        ("u1,i1,view,2024-13-01,,,", "unparseable timestamp", "timestamp '2024-13-01'"),
        ("u1,i1,view,nan,,,", "unparseable timestamp", "timestamp 'nan'"),
        ("u1,i1,view,-5,,,", "negative timestamp", "timestamp '-5' is before 1970"),
        ("u1,i1,view,1700000000000,,,", "timestamp out of range", "milliseconds"),
        ("u1,i1,view,1,fax,,", "unknown channel", "channel 'fax' is not one of web"),
        ("u1,i1,view,1,Web,,", "unknown channel", "did you mean 'web'?"),
        ("u1,i1,view,1,,Mars/Olympus,", "unknown timezone", "timezone 'Mars/Olympus' is not"),
        ("u1,i1,view,1,,America,", "unknown timezone", "timezone 'America' is not"),
        ("u1,i1,view,1,,,abc", "bad value", "value 'abc' is not a finite number"),
        ("u1,i1,view,1,,,inf", "bad value", "value 'inf'"),
        ("u1,i1,view,1,,,1e999", "bad value", "value '1e999'"),
        ("u1,i1,view,1,,,,extra", "malformed row", "expected 7 columns, got 8"),
    ],
)
def test_each_kind_of_bad_row_is_reported_with_its_line(
    tmp_path: Path, row: str, kind: str, reason: str
) -> None:
    path = write_csv(tmp_path, [CLEAN_ROWS[0], CLEAN_ROWS[1], row, CLEAN_ROWS[2]])
    with pytest.raises(EventLogError) as caught:
        load_events(path)
    report = caught.value.report
    assert report is not None
    assert (report.total_rows, report.bad_rows) == (4, 1)
    assert report.reasons == collections.Counter({kind: 1})
    location, text = report.examples[0]
    assert location == "line 4"
    assert reason in text


def test_message_events_need_no_item(tmp_path: Path) -> None:
    rows = [
        f"u1,,{t},1700000000,,,"
        for t in ("message_delivered", "message_open", "message_click", "session_start")
    ]
    assert len(load_events(write_csv(tmp_path, rows)).frame) == 4


def test_a_row_with_several_problems_reports_the_first(tmp_path: Path) -> None:
    with pytest.raises(EventLogError) as caught:
        load_events(write_csv(tmp_path, [",,purchase,never,fax,Nowhere,x"]))
    assert caught.value.report.reasons == collections.Counter({"missing user_id": 1})


def test_bad_rows_refuse_the_file_with_one_line(tmp_path: Path) -> None:
    rows = [*CLEAN_ROWS, "u3,i3,foo,1700000000,,,", "u3,i3,view,soon,,,", "u4,i4,bar,1,,,"]
    path = write_csv(tmp_path, rows)
    with pytest.raises(EventLogError) as caught:
        load_events(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"{path}: 3 bad rows of 7 (unknown event_type: 2, unparseable timestamp: 1)"
    )
    assert "first: line 6: event_type 'foo'" in message
    assert isinstance(caught.value, OmnirecError)
    details = caught.value.report.details()
    assert "  unknown event_type: 2" in details
    assert "  line 8: event_type 'bar'" in details


def test_skip_bad_rows_keeps_the_good_ones_and_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [CLEAN_ROWS[0], "u3,,purchase,1700000000,,,", CLEAN_ROWS[1], "u1,i1,view,1,,,,x"]
    with caplog.at_level(logging.WARNING, logger="training.event_log"):
        log = load_events(write_csv(tmp_path, rows), skip_bad_rows=True)
    assert log.frame["item_id"].tolist() == ["i1", "i2"]
    assert log.frame.index.tolist() == [0, 1]
    assert (log.report.total_rows, log.report.bad_rows) == (4, 2)
    assert log.report.examples == [
        ("line 3", "item_id is required for a 'purchase' event"),
        ("line 5", "expected 7 columns, got 8"),
    ]
    assert "2 bad rows of 4" in caplog.text


def test_malformed_rows_do_not_shift_later_line_numbers(tmp_path: Path) -> None:
    rows = ["u1,i1,view,1,,,,x", "u1,i1,view,1,,,", "u1,i1,view,1,,,,x", "u1,i1,foo,1,,,"]
    with pytest.raises(EventLogError) as caught:
        load_events(write_csv(tmp_path, rows))
    assert [where for where, _ in caught.value.report.examples] == ["line 2", "line 4", "line 5"]


def test_parquet_bad_rows_are_located_by_0_based_row(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table(
        {"user_id": ["u", "u", ""], "event_type": ["session_start"] * 3, "timestamp": [1, 2, 3]}
    )
    pq.write_table(table, path)
    with pytest.raises(EventLogError) as caught:
        load_events(path)
    assert caught.value.report.examples == [("row 2", "user_id is required")]


# --- files -----------------------------------------------------------------------------


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["u1,i1,view"], header="user_id,item_id,event_type")
    with pytest.raises(EventLogError, match="missing required column timestamp") as caught:
        load_events(path)
    assert caught.value.report is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match=r"nope\.csv: no such file"):
        load_events(tmp_path / "nope.csv")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text("{}")
    with pytest.raises(EventLogError, match=r"events\.json: unsupported format; expected \.csv"):
        load_events(path)


def test_parquet_directory_is_one_data_set(tmp_path: Path) -> None:
    frame = clean_frame()
    (tmp_path / "events").mkdir()
    write_events(frame.iloc[:2], tmp_path / "events" / "part-0.parquet")
    write_events(frame.iloc[2:], tmp_path / "events" / "part-1.parquet")
    (tmp_path / "events" / "_SUCCESS").write_text("")
    pd.testing.assert_frame_equal(load_events(tmp_path / "events").frame, frame)


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz", "e.parquet", "e.pq"])
def test_write_then_load_round_trips(tmp_path: Path, name: str) -> None:
    frame = clean_frame()
    frame.loc[0, "value"] = 1 / 3
    frame.loc[2, "automated"] = True
    write_events(frame, tmp_path / name)
    loaded = load_events(tmp_path / name).frame
    pd.testing.assert_frame_equal(loaded, frame)
    assert loaded["automated"].dtype == bool


def test_write_events_accepts_loose_input(tmp_path: Path) -> None:
    loose = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2024-01-01T01:00:00+01:00", "2024-01-01T01:00:05+01:00"]),
            "event_type": ["view", "session_start"],
            "user_id": ["u1", "u2"],
            "item_id": ["i1", None],
            "note": ["dropped", "dropped"],
        }
    )
    path = tmp_path / "e.csv"
    write_events(loose, path)
    header = path.read_text().splitlines()[0]
    assert header.replace('"', "") == ",".join(COLUMNS)
    frame = load_events(path).frame
    assert frame["timestamp"].tolist() == [JAN_1_2024, JAN_1_2024 + 5]
    assert frame["item_id"].tolist() == ["i1", ""]
    assert frame["channel"].tolist() == ["", ""]


def test_write_events_refuses_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="cannot write"):
        write_events(clean_frame(), tmp_path / "e.json")


# --- the optional automated flag -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("true", True),
        ("TRUE", True),
        (" Yes ", True),
        ("1", True),
        ("t", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("0", False),
        ("F", False),
        ("", False),
    ],
)
def test_automated_spellings_in_csv(tmp_path: Path, text: str, flag: bool) -> None:
    path = write_csv(tmp_path, [f"u1,,message_open,1700000000,email,,,{text}"], FULL_HEADER)
    frame = load_events(path).frame
    assert frame["automated"].dtype == bool
    assert frame["automated"].tolist() == [flag]


@pytest.mark.parametrize("text", ["maybe", "2", "-1", "y", "nope"])
def test_bad_automated_is_a_bad_row_naming_the_field(tmp_path: Path, text: str) -> None:
    rows = ["u1,,message_open,1700000000,email,,,true", f"u1,,message_open,1,email,,,{text}"]
    with pytest.raises(EventLogError) as caught:
        load_events(write_csv(tmp_path, rows, FULL_HEADER))
    report = caught.value.report
    assert report.reasons == collections.Counter({"bad automated": 1})
    location, reason = report.examples[0]
    assert location == "line 3"
    assert reason.startswith(f"automated {text!r} is not a boolean")


def test_skip_bad_rows_drops_bad_automated(tmp_path: Path) -> None:
    rows = ["u1,,message_open,1700000000,email,,,yes", "u2,,message_open,1,email,,,perhaps"]
    log = load_events(write_csv(tmp_path, rows, FULL_HEADER), skip_bad_rows=True)
    assert log.frame["user_id"].tolist() == ["u1"]
    assert log.frame["automated"].tolist() == [True]


def test_parquet_native_automated_types(tmp_path: Path) -> None:
    base = {"user_id": ["u"] * 3, "event_type": ["message_open"] * 3, "timestamp": [1, 2, 3]}
    cases = {
        "bool": pa.array([True, None, False], pa.bool_()),
        "int": pa.array([1, 0, None], pa.int8()),
        "text": pa.array(["yes", "", "no"]),
        "dictionary": pa.array(["TRUE", "false", None]).dictionary_encode(),
    }
    for name, flags in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({**base, "automated": flags}), path)
        frame = load_events(path).frame
        assert frame["automated"].tolist() == [True, False, False], name


def test_parquet_integer_automated_other_than_0_1_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table(
        {"user_id": ["u", "u"], "event_type": ["message_open"] * 2, "timestamp": [1, 2]}
    ).append_column("automated", pa.array([0, 2]))
    pq.write_table(table, path)
    with pytest.raises(EventLogError) as caught:
        load_events(path)
    assert caught.value.report.examples == [
        ("row 1", "automated '2' is not a boolean (true/false, 1/0, yes/no, t/f or empty)")
    ]


def test_parquet_automated_of_an_unusable_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table(
        {"user_id": ["u"], "event_type": ["message_open"], "timestamp": [1], "automated": [0.5]}
    )
    pq.write_table(table, path)
    with pytest.raises(EventLogError, match="column automated has type double"):
        load_events(path)


def test_write_events_converts_automated_text_and_refuses_other_values(tmp_path: Path) -> None:
    frame = clean_frame().drop(columns="automated")
    write_events(frame, tmp_path / "absent.parquet")
    assert not load_events(tmp_path / "absent.parquet").frame["automated"].any()

    frame["automated"] = ["yes", "No", None, "TRUE"]
    write_events(frame, tmp_path / "text.csv")
    assert load_events(tmp_path / "text.csv").frame["automated"].tolist() == [
        True,
        False,
        False,
        True,
    ]
    assert pq.read_schema(_written(frame, tmp_path)).field("automated").type == pa.bool_()

    frame["automated"] = ["yes", "maybe", "no", "no"]
    with pytest.raises(EventLogError, match="automated 'maybe' is not a boolean in 1 rows"):
        write_events(frame, tmp_path / "bad.parquet")


def _written(frame: pd.DataFrame, directory: Path) -> Path:
    path = directory / "written.parquet"
    write_events(frame, path)
    return path
