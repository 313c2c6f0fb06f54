"""Data frames out of R's own files (``save()`` → ``.rda``, ``saveRDS()`` → ``.rds``),
read by the ``rdata`` package (a dev dependency; no R needed).

The public logs the benches use ship inside R packages (CRAN caps a package at a few MB,
so R's compressed format is the smallest form they exist in).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd


def read(path: Path) -> dict[str, pd.DataFrame]:
    """Every object in ``path`` by name, as pandas data frames."""
    import rdata

    with warnings.catch_warnings():
        # rdata has no constructor for POSIXct and keeps R's own values: seconds since
        # 1970 (UTC) as floats, which is what the converters want. It says so each time.
        warnings.filterwarnings("ignore", message="Missing constructor for R class")
        if path.suffix == ".rds":
            return {path.stem: rdata.read_rds(path)}
        return rdata.read_rda(path)
