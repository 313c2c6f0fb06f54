"""MovieLens 100K as an omnirec event log, read from ../shared/datasets (never copied).

Ratings 1–3 read as ``view``, 4 as ``favourite``, 5 as ``purchase``; the rating time is
the event time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"


def dataset_dir() -> Path | None:
    """The ml-100k folder (``OMNIREC_ML100K`` or ../shared/datasets/ml-100k), or None."""
    folder = Path(os.environ.get("OMNIREC_ML100K", DEFAULT_DIR))
    return folder if (folder / "ratings.csv").exists() else None


#: First digit of a US zip code → the time zone most of that zip region lies in (coarse:
#: e.g. 3xxxx mixes Eastern and Central). Anything else (Canadian codes) → Toronto.
ZIP_ZONES = {
    "0": "America/New_York",
    "1": "America/New_York",
    "2": "America/New_York",
    "3": "America/New_York",
    "4": "America/New_York",
    "5": "America/Chicago",
    "6": "America/Chicago",
    "7": "America/Chicago",
    "8": "America/Denver",
    "9": "America/Los_Angeles",
}


def zones(folder: Path) -> dict[str, str]:
    users = pd.read_csv(folder / "users.csv", dtype={"zip_code": str})
    return {
        str(u): ZIP_ZONES.get(str(z)[:1], "America/Toronto")
        for u, z in zip(users["user_id"], users["zip_code"], strict=True)
    }


def events(folder: Path, with_timezones: bool = False) -> pd.DataFrame:
    ratings = pd.read_csv(folder / "ratings.csv")
    kind = np.where(
        ratings["rating"] >= 5, "purchase", np.where(ratings["rating"] == 4, "favourite", "view")
    )
    return pd.DataFrame(
        {
            "user_id": ratings["user_id"].astype(str),
            "item_id": ratings["item_id"].astype(str),
            "event_type": pd.Categorical(kind),
            "timestamp": ratings["timestamp"].astype(np.int64),
            "channel": "web",
            "timezone": (
                ratings["user_id"].astype(str).map(zones(folder)).fillna("")
                if with_timezones
                else ""
            ),
            "value": np.nan,
            "automated": False,
        }
    )


def catalogue(folder: Path) -> dict[str, dict[str, object]]:
    items = pd.read_csv(folder / "items.csv")
    return {
        str(row.item_id): {"title": str(row.title), "category": str(row.genres).split(" ")[0]}
        for row in items.itertuples()
    }
