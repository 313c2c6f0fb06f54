"""The item catalogue file: ``item_id`` plus optional ``category``, ``title``, ``price``,
``in_stock`` (CSV or Parquet). Other columns are ignored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.catalogue import MAX_TITLE_LENGTH
from service.errors import BadInput

log = logging.getLogger(__name__)

OPTIONAL = ("category", "title", "price", "in_stock")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def load_catalogue(path: str | Path) -> dict[str, dict[str, Any]]:
    """item_id → metadata. Raises :class:`BadInput` (field ``items``) on a bad file."""
    src = Path(path)
    if not src.exists():
        raise BadInput("items", f"{src}: no such file")
    try:
        if src.suffix in (".parquet", ".pq"):
            table = pq.read_table(src)
        elif src.name.endswith((".csv", ".csv.gz")):
            table = pacsv.read_csv(
                src, convert_options=pacsv.ConvertOptions(column_types={"item_id": pa.string()})
            )
        else:
            raise BadInput("items", f"{src}: expected a .csv, .csv.gz or .parquet file")
    except pa.ArrowInvalid as exc:
        raise BadInput("items", f"{src}: unreadable ({exc})") from None
    if "item_id" not in table.column_names:
        raise BadInput("items", f"{src}: no item_id column")
    columns = {
        c: table.column(c).to_pylist() for c in ("item_id", *OPTIONAL) if c in table.column_names
    }
    catalogue: dict[str, dict[str, Any]] = {}
    for n, item in enumerate(columns["item_id"]):
        where = f"{src.name} row {n + 1}"
        item = str(item).strip() if item is not None else ""
        if not item:
            raise BadInput("items", f"{where}: empty item_id")
        meta: dict[str, Any] = {}
        if "category" in columns and columns["category"][n] not in (None, ""):
            meta["category"] = str(columns["category"][n])
        if "title" in columns and columns["title"][n] not in (None, ""):
            meta["title"] = str(columns["title"][n])
            if len(meta["title"]) > MAX_TITLE_LENGTH:
                raise BadInput("items", f"{where}: title longer than {MAX_TITLE_LENGTH} characters")
        if "price" in columns and columns["price"][n] not in (None, ""):
            meta["price"] = _price(columns["price"][n], where)
        if "in_stock" in columns:
            meta["in_stock"] = _flag(columns["in_stock"][n], where)
        catalogue[item] = meta
    log.info("catalogue %s: %d items", src, len(catalogue))
    return catalogue


def _price(value: Any, where: str) -> float:
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise BadInput("items", f"{where}: price {value!r} is not a number") from None
    if not np.isfinite(price) or price < 0:
        raise BadInput("items", f"{where}: price must be a finite number ≥ 0")
    return price


def _flag(value: Any, where: str) -> bool:
    if value is None or value == "":
        # Unknown stock counts as available; only an explicit "false" hides an item.
        return True
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadInput("items", f"{where}: in_stock {value!r} is not true/false")
