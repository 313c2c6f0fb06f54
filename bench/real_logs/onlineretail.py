"""UCI "Online Retail": a year of invoice lines of a UK online gift-ware retailer, as
shipped by the R package ``onlineretail``.

Source
    UCI Machine Learning Repository, "Online Retail" (donated by Daqing Chen, 2015),
    https://archive.ics.uci.edu/dataset/352/online+retail : 541,909 invoice lines of
    2010-12-01 to 2011-12-09 (InvoiceNo, StockCode, Description, Quantity, InvoiceDate
    to the minute, UnitPrice, CustomerID, Country).
Where the file is
    GitHub repository ``allanvc/onlineretail`` (the CRAN package's source),
    ``data/onlineretail.rda``: all 541,909 lines, 2.8 MB, xz-compressed R data.
    https://github.com/allanvc/onlineretail/raw/master/data/onlineretail.rda
    (UCI's own ``Online Retail.xlsx`` is the same table; this reads the R file only.)
Licence
    The data set is CC BY 4.0 at UCI; the package (``DESCRIPTION``: ``License: CC0``)
    ships it with the donor's permission.
Citation
    Chen, D. (2015). Online Retail [Dataset]. UCI Machine Learning Repository,
    https://doi.org/10.24432/C5BW33. Chen, D., Sain, S. L. and Guo, K. (2012), Data
    mining for the online retail industry, Journal of Database Marketing and Customer
    Strategy Management 19(3), 197-208, doi:10.1057/dbm.2012.17.

As events
    one ``purchase`` per invoice line that is a sale of a product to a known customer:
    invoices starting with ``C`` (cancellations), lines of quantity or unit price ≤ 0
    and lines without a CustomerID are left out, and so are item codes that do not start
    with a digit (postage ``POST``/``DOT``, manual ``M``, fees, samples, vouchers
    ``gift_0001_*``, ``DCGS*``). ``user_id`` the customer, ``item_id`` the stock code as
    written, ``value`` quantity × unit price in pounds, ``channel`` ``web``, ``timezone``
    Europe/London. The R file stores InvoiceDate as UTC, but it is the shop's wall clock
    (the invoices' hours do not move at the change to summer time), so it is read as
    London time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .r_files import read

FILES = ("onlineretail.rda",)
URL = "https://github.com/allanvc/onlineretail/raw/master/data/onlineretail.rda"
REPOSITORY = "allanvc/onlineretail (data/onlineretail.rda; CRAN: onlineretail)"
LICENCE = "CC BY 4.0 (UCI); packaged under CC0 with the donor's permission"
CITATION = (
    "Chen, D. (2015). Online Retail [Dataset]. UCI Machine Learning Repository, doi:10.24432/C5BW33"
)
TIMEZONE = "Europe/London"


def events(raw: Path) -> pd.DataFrame:
    """The sales of ``raw`` (``onlineretail.rda``) as omnirec events."""
    (lines,) = read(raw).values()
    code = lines["StockCode"].astype(str)
    sale = (
        ~lines["InvoiceNo"].astype(str).str.startswith("C")
        & (lines["Quantity"] > 0)
        & (lines["UnitPrice"] > 0)
        & lines["CustomerID"].notna()
        & code.str.match(r"^\d")
    ).to_numpy()
    lines = lines[sale]
    wall = pd.to_datetime(lines["InvoiceDate"].to_numpy(), unit="s")
    local = wall.tz_localize(TIMEZONE, ambiguous=False, nonexistent="shift_forward")
    return pd.DataFrame(
        {
            "user_id": lines["CustomerID"].astype(np.int64).astype(str).to_numpy(),
            "item_id": code[sale].to_numpy(),
            "event_type": "purchase",
            "timestamp": local.as_unit("s").asi8,
            "channel": "web",
            "timezone": TIMEZONE,
            "value": (lines["Quantity"] * lines["UnitPrice"]).to_numpy(dtype=np.float64),
        }
    )
