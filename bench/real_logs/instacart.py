"""Instacart Online Grocery Shopping 2017: when people placed their grocery orders,
from ``orders.csv``.

Source
    Instacart, "The Instacart Online Grocery Shopping Dataset 2017" (released 2017-05-03,
    https://www.instacart.com/datasets/grocery-shopping-2017 , the Kaggle competition
    "Instacart Market Basket Analysis"): 3,421,083 orders of 206,209 anonymised users, 4
    to 100 orders each. ``orders.csv`` has, per order, ``order_id``, ``user_id``,
    ``eval_set`` (prior, train or test), ``order_number`` (1 = the person's first),
    ``order_dow`` (day of the week), ``order_hour_of_day`` and ``days_since_prior_order``
    (capped at 30, empty for a person's first order). No dates: only a weekday, an hour
    and the whole days since the person's order before.
Where the file is
    GitHub repository ``JamieEtn/instacart-insights_ML_Project``, ``data/orders.csv``:
    the first 49,999 orders of Instacart's file as it is sorted (by user, then order
    number), that is every order of users 1 to 3,105 and the first of user 3,106, 1.4 MB
    of plain CSV.
    https://github.com/JamieEtn/instacart-insights_ML_Project/raw/main/data/orders.csv
    Instacart's whole ``orders.csv`` (or the Kaggle ``orders.csv.zip``) reads the same
    way.
Licence
    Instacart's terms, as the dataset's README states them (archived with the data in
    ``subwaymatch/instacart-dataset-2017``): "The dataset is provided as-is for
    non-commercial use, and is subject to our Terms and Conditions"
    (https://gist.github.com/jeremystan/582eba13d6ee27ed465c43dc78934700). The
    repository holding the copy states no licence of its own ("Educational project").
Citation
    "The Instacart Online Grocery Shopping Dataset 2017", Accessed from
    https://www.instacart.com/datasets/grocery-shopping-2017 on <date> (the form
    Instacart asks for).

As events
    one ``purchase`` per order: ``user_id`` the user, ``item_id`` the constant
    ``order`` (``orders.csv`` names no products; this log is for when people buy, not
    what), ``channel`` empty (the file does not say app or website), ``timezone``
    America/New_York, no ``value``.

Dates
    A person's first order is their day 0 and each next order comes
    ``days_since_prior_order`` days after the one before. In the GitHub copy, of the
    46,893 orders that follow another, 41,356 have fewer than 30 days since it, and for
    every one of them (100 %) ``order_dow`` is the day before's ``order_dow`` plus those
    days, modulo 7; of the 5,537 at the cap of 30, only 773 (14.0 %, the 1 in 7 of
    chance) agree, so 89.8 % agree in all. A capped gap means "30 days or more": it is
    read as the fewest days from 30 on that land on the order's weekday (30 to 36), so
    every reconstructed date falls on its order's weekday. Day 0 is the first date from
    :data:`ANCHOR` (a Saturday) on the weekday of the person's first order. Only weekday,
    hour and gaps are real: the dates themselves are invented, and people's calendars
    are not aligned with one another (everybody starts in the same week).
Weekdays
    Instacart does not say which day ``order_dow`` 0 is; this reads 0 as Saturday and 1
    as Sunday (the weekend), so 6 is Friday. The two values with the most orders, 0 and
    1 (8,906 and 8,509 of the GitHub copy's 49,999; the other five 6,098 to 6,781), are
    adjacent, as the two days of a weekend are; read as Sunday, 0 would make Monday the
    second busiest day and Saturday (6) only the fifth of seven for grocery shopping.
Hours
    ``order_hour_of_day`` is taken as the person's local clock hour, the order placed at
    half past it, in one zone with summer time (America/New_York) so that local hours
    come out as written. An hour that the clock skips (02:30 on the night of the change
    to summer time) is moved to 03:00; no order of the GitHub copy falls in one.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

FILES = ("orders.csv", "orders.csv.zip")
URL = "https://github.com/JamieEtn/instacart-insights_ML_Project/raw/main/data/orders.csv"
REPOSITORY = (
    "JamieEtn/instacart-insights_ML_Project (data/orders.csv: the first 49,999 orders of "
    "Instacart's orders.csv, users 1-3,106)"
)
LICENCE = (
    "Instacart's terms: provided as-is for non-commercial use "
    "(https://gist.github.com/jeremystan/582eba13d6ee27ed465c43dc78934700)"
)
CITATION = (
    '"The Instacart Online Grocery Shopping Dataset 2017", accessed from '
    "https://www.instacart.com/datasets/grocery-shopping-2017"
)
TIMEZONE = "America/New_York"
#: The week everybody's day 0 falls in: a Saturday, the day ``order_dow`` 0 is read as.
ANCHOR = date(2016, 1, 2)
#: ``days_since_prior_order`` is capped here: 30 means 30 days or more.
CAP = 30
#: Minute of the hour every order is placed at.
MINUTE = 30

_COLUMNS = ("user_id", "order_number", "order_dow", "order_hour_of_day", "days_since_prior_order")


def days(orders: pd.DataFrame) -> np.ndarray:
    """Days since :data:`ANCHOR` of each order of ``orders`` (sorted by user, then order
    number): the first order on its weekday in the anchor's week, each next one
    ``days_since_prior_order`` later, a capped gap stretched to the order's weekday."""
    user = orders["user_id"].to_numpy()
    dow = orders["order_dow"].to_numpy(dtype=np.int64)
    first = np.r_[True, user[1:] != user[:-1]]
    gap = orders["days_since_prior_order"].to_numpy(dtype=np.float64)
    gap = np.where(first, dow, np.nan_to_num(gap)).astype(np.int64)
    previous = np.r_[0, dow[:-1]]
    capped = ~first & (gap >= CAP)
    gap[capped] = CAP + (dow[capped] - previous[capped] - CAP) % 7
    start = np.flatnonzero(first)
    total = np.cumsum(gap)
    # Each person's running sum restarts at their first order (which holds its weekday).
    return total - np.repeat(total[start] - gap[start], np.diff(np.r_[start, len(gap)]))


def events(raw: Path) -> pd.DataFrame:
    """The orders of ``raw`` (``orders.csv``, or the Kaggle ``orders.csv.zip``) as
    omnirec events."""
    orders = pd.read_csv(raw, usecols=list(_COLUMNS))
    orders = orders.sort_values(["user_id", "order_number"], kind="stable", ignore_index=True)
    wall = (
        pd.Timestamp(ANCHOR)
        + pd.to_timedelta(days(orders), unit="D")
        + pd.to_timedelta(orders["order_hour_of_day"].to_numpy(dtype=np.int64), unit="h")
        + pd.Timedelta(minutes=MINUTE)
    )
    local = pd.DatetimeIndex(wall).tz_localize(
        TIMEZONE, ambiguous=False, nonexistent="shift_forward"
    )
    return pd.DataFrame(
        {
            "user_id": orders["user_id"].astype(str).to_numpy(),
            "item_id": "order",
            "event_type": "purchase",
            "timestamp": local.as_unit("s").asi8,
            "channel": "",
            "timezone": TIMEZONE,
        }
    )
