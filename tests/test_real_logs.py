"""The real-log converters of bench/real_logs on hand-made files (the real files are
downloads kept out of the repository and out of the tests)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from real_logs import instacart  # noqa: E402


def test_instacart_orders_get_their_weekday_and_hour(tmp_path: Path) -> None:
    raw = tmp_path / "orders.csv"
    raw.write_text(
        "order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order\n"
        # Out of order on purpose: the converter sorts by user and order number.
        "12,1,prior,2,3,9,3.0\n"
        "11,1,prior,1,0,22,\n"
        "13,1,prior,3,5,14,30.0\n"  # capped: 30 or more, stretched to the next dow 5
        "21,2,prior,1,1,8,\n"
        "22,2,prior,2,1,23,7.0\n",
        encoding="utf-8",
    )
    frame = instacart.events(raw)
    assert list(frame["user_id"]) == ["1", "1", "1", "2", "2"]
    assert set(frame["event_type"]) == {"purchase"} and set(frame["timezone"]) == {
        instacart.TIMEZONE
    }
    zone = ZoneInfo(instacart.TIMEZONE)
    local = [datetime.fromtimestamp(int(ts), zone) for ts in frame["timestamp"]]
    # order_dow 0 is read as Saturday: Python weekdays (Monday 0) are dow + 5 mod 7.
    assert [(t.weekday() - 5) % 7 for t in local] == [0, 3, 5, 1, 1]
    assert [(t.hour, t.minute) for t in local] == [(22, 30), (9, 30), (14, 30), (8, 30), (23, 30)]
    gaps = [(local[k + 1].date() - local[k].date()).days for k in (0, 1, 3)]
    assert gaps == [3, 30 + (5 - 3 - 30) % 7, 7]
    assert local[0].date() == instacart.ANCHOR  # the Saturday of the anchor week
