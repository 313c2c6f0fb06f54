"""84.51° "The Complete Journey" grocery receipts, as shipped by the R package
``completejourney``.

Source
    84.51° (Kroger's data science arm), Complete Journey 2.0 source files,
    https://www.8451.com/area51 : every receipt line of 2,469 frequent-shopper households
    at one US grocery chain over 2017, with the time of the purchase to the second
    (America/New_York).
Where the file is
    GitHub repository ``bradleyboehmke/completejourney`` (the CRAN package's source;
    mirror ``cran/completejourney``), ``data/transactions_sample.rda``: 75,000 receipt
    lines drawn at random from the 1,469,307 (``set.seed(8451); sample_n(75000)``,
    ``data-raw/prep-data.R``), 1.2 MB, bzip2-compressed R data. The whole log is
    ``data/transactions.rds`` in the same repository (too large for the package; the
    package's ``get_transactions()`` downloads it), read the same way.
    https://github.com/bradleyboehmke/completejourney/raw/master/data/transactions_sample.rda
Licence
    The package is released under CC0 (``DESCRIPTION``: ``License: CC0``).
Citation
    Boehmke, B. and Mortimer, S. M. (2025). completejourney: Retail Shopping Data. R
    package version 1.1.1, https://CRAN.R-project.org/package=completejourney. Data:
    84.51°, The Complete Journey 2.0.

As events
    one ``purchase`` per receipt line with a positive quantity (lines of quantity 0 move
    no product: 416 of the sample's), ``user_id`` the household, ``item_id`` the
    product, ``value`` the line's sales value in dollars, ``channel`` ``store``,
    ``timezone`` America/New_York. The sample keeps about 1.6 of a basket's lines, so its
    baskets are thinner than a real receipt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .r_files import read

FILES = ("transactions_sample.rda", "transactions.rds")
URL = "https://github.com/bradleyboehmke/completejourney/raw/master/data/transactions_sample.rda"
REPOSITORY = "bradleyboehmke/completejourney (data/transactions_sample.rda; CRAN: completejourney)"
LICENCE = "CC0 (the R package completejourney)"
CITATION = (
    "Boehmke, B. and Mortimer, S. M. completejourney: Retail Shopping Data, R package 1.1.1; "
    "data: 84.51°, The Complete Journey 2.0"
)
TIMEZONE = "America/New_York"


def events(raw: Path) -> pd.DataFrame:
    """The receipt lines of ``raw`` (``transactions_sample.rda`` or ``transactions.rds``)
    as omnirec events."""
    (lines,) = read(raw).values()
    lines = lines[lines["quantity"].to_numpy() > 0]
    return pd.DataFrame(
        {
            "user_id": lines["household_id"].astype(str).to_numpy(),
            "item_id": lines["product_id"].astype(str).to_numpy(),
            "event_type": "purchase",
            # POSIXct: seconds since 1970 in UTC; the column's zone only prints them.
            "timestamp": np.floor(lines["transaction_timestamp"].to_numpy()).astype(np.int64),
            "channel": "store",
            "timezone": TIMEZONE,
            "value": lines["sales_value"].to_numpy(dtype=np.float64),
        }
    )
