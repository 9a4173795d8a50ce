"""Loaders that turn recommendation data sets on disk into :class:`Interactions`.

Supported formats:

* GroupLens MovieLens as shipped: ml-100k (:func:`load_ml100k`), ml-1m (:func:`load_ml1m`),
  ml-latest / ml-latest-small / ml-20m / ml-25m (:func:`load_ml_latest`).
* RecBole atomic files, ``NAME.inter`` plus optional ``NAME.item`` (:func:`load_recbole`).
* Any CSV or Parquet event log with a column mapping (:func:`load_event_log`).
* The synthetic generator of :mod:`fedrec.common.data.synthetic`, through :func:`load_dataset`.

Files are read with pyarrow's CSV and Parquet readers (:mod:`fedrec.common.data._tables`);
this module keeps the mapping of each format's columns and the checks of what they hold.

Id maps:
    Dense indices never depend on file order: user and item maps are built with
    :meth:`IdMap.from_ids` (``sort=True``, numeric-aware). For the MovieLens formats the item map
    also holds every item of the metadata file (``u.item``, ``movies.dat``, ``movies.csv``), so
    items nobody rated are still in the catalog; users come from the ratings only. MovieLens ids
    must be integers and are written back as plain decimals (``"0042"`` becomes ``"42"``);
    RecBole and event-log ids are kept as the strings found in the file, without surrounding
    spaces (integer Parquet columns as decimals).

Duplicates policy:
    A data set may rate the same (user, item) pair more than once. Every loader takes
    ``duplicates=``:

    * ``"keep-last"`` (default): keep only the most recent row of each pair, the last by
      (timestamp, file order), i.e. the latest rating. The number of rows dropped is logged as a
      warning on the ``fedrec.data`` logger.
    * ``"keep-all"``: keep every row (their count is logged at INFO level).
    * ``"error"``: raise :class:`DataFormatError` naming the first duplicated pair and its lines.

    Nothing else is dropped: a malformed row is an error, never skipped, and rated items that
    are missing from a metadata file are kept (with a warning) without title or genres.

Errors:
    A file that does not match its format raises :class:`DataFormatError`, whose message (one
    line, never quoting a value in full) names the file, the 1-based line (the row of a Parquet
    file), what was found and what was expected: a wrong separator or field count, missing or
    repeated header columns, an empty file or one with a header only, a truncated ``.gz``, a
    binary file; an id that is empty, a missing value (null, NaN, ``NULL``, ...), not UTF-8
    text, longer than 4,096 characters or with control characters, or of a type that is not
    an integer or a string (a Parquet list); a weight that is not a finite number within
    float32 range; a time that is not a number, an ISO-8601 date/time or a Parquet
    timestamp/date, or beyond 2^62. A missing file raises :class:`FileNotFoundError` saying
    which file the folder should contain.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import _tables as tb
from ._metadata import (
    ML100K_GENRES,
    Catalog,
    align_catalog,
    header_columns,
    read_movies_csv,
    read_movies_dat,
    read_recbole_items,
    read_u_item,
    recbole_header,
)
from .schema import DataFormatError, IdMap, Interactions

__all__ = [
    "DATASETS",
    "DUPLICATE_POLICIES",
    "ML100K_GENRES",
    "event_log_columns",
    "load_dataset",
    "load_event_log",
    "load_ml100k",
    "load_ml1m",
    "load_ml_latest",
    "load_recbole",
]

logger = logging.getLogger("fedrec.data")

DATASETS: tuple[str, ...] = (
    "ml-100k",
    "ml-1m",
    "ml-latest",
    "ml-latest-small",
    "recbole",
    "events",
    "synthetic",
)
"""Names :func:`load_dataset` accepts."""

DUPLICATE_POLICIES: tuple[str, ...] = ("keep-last", "keep-all", "error")
"""Values of the ``duplicates=`` argument of every loader."""

#: (user ids, each row's position among them)
Ids = tuple[list[str], np.ndarray]


# --------------------------------------------------------------------------------------------
# Assembling Interactions: id maps, duplicates, metadata.


def _check_policy(duplicates: str) -> None:
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(
            f"duplicates={duplicates!r}; expected one of {', '.join(DUPLICATE_POLICIES)}"
        )


def _apply_duplicates(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    n_items: int,
    *,
    policy: str,
    source: str,
    line_of: Callable[[int], int | None] | None,
    path: Path | None,
    user_map: IdMap,
    item_map: IdMap,
) -> np.ndarray | None:
    """Rows to keep under ``policy`` (``None``: keep all), logging what is dropped."""
    n = len(user)
    if n == 0:
        return None
    key = user * np.int64(n_items) + item
    all_sorted = np.sort(key)
    repeated = all_sorted[1:] == all_sorted[:-1]
    n_dup = int(repeated.sum())
    if n_dup == 0:
        return None
    dup_keys = np.unique(all_sorted[1:][repeated])
    n_pairs = len(dup_keys)
    # every row of a duplicated pair: filter by user first (cheap), then by exact key
    rows = np.flatnonzero(np.isin(user, np.unique(dup_keys // np.int64(n_items))))
    at = np.minimum(np.searchsorted(dup_keys, key[rows]), n_pairs - 1)
    rows = rows[dup_keys[at] == key[rows]]
    order = rows[np.lexsort((rows, timestamp[rows], key[rows]))]
    sorted_key = key[order]
    last = np.ones(len(order), bool)
    last[:-1] = sorted_key[1:] != sorted_key[:-1]
    if policy == "keep-all":
        logger.info(
            "%s: %d duplicate (user, item) rows over %d pairs, all kept (duplicates='keep-all')",
            source,
            n_dup,
            n_pairs,
        )
        return None
    if policy == "error":
        first = int(rows[0])
        second = int(rows[1:][key[rows[1:]] == key[first]][0])
        where = ""
        if line_of is not None:
            where = f" on lines {line_of(first)} and {line_of(second)}"
        raise DataFormatError(
            f"{n_dup} duplicate (user, item) rows over {n_pairs} pairs, e.g. user "
            f"{user_map.external(user[first])!r} and item {item_map.external(item[first])!r}"
            f"{where}; pass duplicates='keep-last' or 'keep-all' to accept them",
            path=path,
        )
    logger.warning(
        "%s: dropped %d duplicate (user, item) rows over %d pairs, keeping the most recent "
        "rating of each pair (duplicates='keep-last')",
        source,
        n_dup,
        n_pairs,
    )
    drop = np.zeros(n, bool)
    drop[order[~last]] = True
    return np.flatnonzero(~drop)


def _assemble(
    *,
    name: str,
    path: Path,
    table: tb.Table,
    user_ids: Ids,
    item_ids: Ids,
    weight: np.ndarray,
    timestamp: np.ndarray,
    catalog: Catalog | None,
    duplicates: str,
) -> Interactions:
    user_ext, user_pos = user_ids
    item_ext, item_pos = item_ids
    user_map = IdMap.from_ids(user_ext, sort=True)
    catalog_ids = catalog.ids if catalog is not None else []
    item_map = IdMap.from_ids([*item_ext, *catalog_ids], sort=True)
    user = user_map.indices(user_ext)[user_pos] if user_ext else np.zeros(0, np.int64)
    item = item_map.indices(item_ext)[item_pos] if item_ext else np.zeros(0, np.int64)
    keep = _apply_duplicates(
        user,
        item,
        timestamp,
        len(item_map),
        policy=duplicates,
        source=name,
        line_of=table.line,
        path=path,
        user_map=user_map,
        item_map=item_map,
    )
    if keep is not None:
        user, item = user[keep], item[keep]
        weight, timestamp = weight[keep], timestamp[keep]
    items = None
    if catalog is not None:
        items = align_catalog(catalog, item_map)
        missing = len(item_map) - len(set(catalog.ids))
        if missing:
            logger.warning(
                "%s: %d rated items have no entry in %s (kept, without metadata)",
                name,
                missing,
                catalog.path,
            )
    logger.debug(
        "%s: %d interactions, %d users, %d items", name, len(user), len(user_map), len(item_map)
    )
    return Interactions(
        user=user,
        item=item,
        weight=weight.astype(np.float32),
        timestamp=timestamp,
        user_map=user_map,
        item_map=item_map,
        items=items,
        name=name,
    )


# --------------------------------------------------------------------------------------------
# Public loaders.


def _dataset_dir(path: str | Path, marker: str, dataset: str) -> Path:
    root = Path(path)
    if root.is_file():
        return root.parent
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such directory; expected a {dataset} folder containing {marker}"
        )
    return root


def _require(root: Path, filename: str, dataset: str, contents: str) -> Path:
    file = root / filename
    if not file.is_file():
        present = sorted(p.name for p in root.iterdir())
        shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
        raise FileNotFoundError(
            f"{file}: not found; a {dataset} folder should contain {contents} "
            f"(found: {shown or 'nothing'})"
        )
    return file


def _read_headerless(path: Path, *, sep: str, fields: tuple[str, ...], expected: str) -> tb.Table:
    """Every field of a headerless delimited file (MovieLens ratings: no quoting)."""
    return tb.read_delimited(
        path,
        tb.read_bytes(path, expected),
        sep=sep,
        n_fields=len(fields),
        want={f: i for i, f in enumerate(fields)},
        first_line=1,
        describe=", ".join(fields),
        quoting=False,
    )


def _ml_ratings(
    table: tb.Table, *, user: str, item: str, rating: str, timestamp: str
) -> tuple[Ids, Ids, np.ndarray, np.ndarray]:
    users = tb.int_ids(table, user, "user id")
    items = tb.int_ids(table, item, "movie id")
    weights = tb.floats(table, rating, "rating")
    times = tb.times(table, timestamp, "timestamp", iso=False)
    return users, items, weights, times


def load_ml100k(
    path: str | Path, *, duplicates: str = "keep-last", name: str = "ml-100k"
) -> Interactions:
    """Load GroupLens MovieLens 100K.

    Reads ``u.data`` (tab-separated ``user item rating timestamp``, no header) and item metadata
    from ``u.item`` (``|``-separated, latin-1: id, title, release date, video release date,
    IMDb URL and 19 genre flags). Without ``u.item``, metadata comes from a RecBole
    ``items.tsv`` or ``*.item`` file in the same folder, if there is one.

    Args:
        path: the ml-100k folder (or its ``u.data``).
        duplicates: what to do with repeated (user, item) pairs; see the module docstring.
        name: the ``name`` of the result.

    Returns:
        Interactions with ratings 1-5 as weights and unix-second timestamps; ``items`` holds
        titles (as given, e.g. ``"Toy Story (1995)"``), genres and ``extra["year"]``.

    Raises:
        FileNotFoundError: no ``u.data`` in the folder.
        DataFormatError: a file does not have the ml-100k format.
    """
    _check_policy(duplicates)
    root = _dataset_dir(path, "u.data", "ml-100k")
    data_path = _require(root, "u.data", "ml-100k", "u.data (and u.item)")
    fields = ("user", "item", "rating", "timestamp")
    table = _read_headerless(
        data_path,
        sep="\t",
        fields=fields,
        expected="tab-separated lines of user, item, rating, timestamp",
    )
    users, items, weights, times = _ml_ratings(
        table, user="user", item="item", rating="rating", timestamp="timestamp"
    )
    catalog = None
    if (root / "u.item").is_file():
        catalog = read_u_item(root / "u.item")
    else:
        candidates = sorted(root.glob("*.item"))
        if (root / "items.tsv").is_file():
            candidates.insert(0, root / "items.tsv")
        if candidates:
            catalog = read_recbole_items(candidates[0], numeric_ids=True)
        else:
            logger.info("%s: no u.item or items.tsv; loading without item metadata", root)
    return _assemble(
        name=name,
        path=data_path,
        table=table,
        user_ids=users,
        item_ids=items,
        weight=weights,
        timestamp=times,
        catalog=catalog,
        duplicates=duplicates,
    )


def _optional_metadata(root: Path, filename: str, reader: Callable[[Path], Any]) -> Any:
    """Read an optional item-metadata file, or log that there is none and return ``None``."""
    if (root / filename).is_file():
        return reader(root / filename)
    logger.info("%s: no %s; loading without item metadata", root, filename)
    return None


def load_ml1m(
    path: str | Path, *, duplicates: str = "keep-last", name: str = "ml-1m"
) -> Interactions:
    """Load GroupLens MovieLens 1M.

    Reads ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and, if present,
    ``movies.dat`` (``MovieID::Title::Genres``, genres ``|``-separated, latin-1).

    Args:
        path: the ml-1m folder (or its ``ratings.dat``).
        duplicates: what to do with repeated (user, item) pairs; see the module docstring.
        name: the ``name`` of the result.

    Returns:
        Interactions with the ratings as weights; ``items`` holds titles, genres and
        ``extra["year"]`` (from the title).

    Raises:
        FileNotFoundError: no ``ratings.dat`` in the folder.
        DataFormatError: a file does not have the ml-1m format.
    """
    _check_policy(duplicates)
    root = _dataset_dir(path, "ratings.dat", "ml-1m")
    data_path = _require(root, "ratings.dat", "ml-1m", "ratings.dat (and movies.dat)")
    table = _read_headerless(
        data_path,
        sep="::",
        fields=("UserID", "MovieID", "Rating", "Timestamp"),
        expected="lines of UserID::MovieID::Rating::Timestamp",
    )
    users, items, weights, times = _ml_ratings(
        table, user="UserID", item="MovieID", rating="Rating", timestamp="Timestamp"
    )
    catalog = _optional_metadata(root, "movies.dat", read_movies_dat)
    return _assemble(
        name=name,
        path=data_path,
        table=table,
        user_ids=users,
        item_ids=items,
        weight=weights,
        timestamp=times,
        catalog=catalog,
        duplicates=duplicates,
    )


def load_ml_latest(
    path: str | Path, *, duplicates: str = "keep-last", name: str | None = None
) -> Interactions:
    """Load GroupLens ml-latest, ml-latest-small (or ml-20m / ml-25m, the same format).

    Reads ``ratings.csv`` (header ``userId,movieId,rating,timestamp``) and, if present,
    ``movies.csv`` (header ``movieId,title,genres``; quoted titles may contain commas; genres
    ``|``-separated, ``(no genres listed)`` meaning none).

    Args:
        path: the data set folder (or its ``ratings.csv``).
        duplicates: what to do with repeated (user, item) pairs; see the module docstring.
        name: the ``name`` of the result; default the folder name if it starts with ``ml-``,
            else ``"ml-latest"``.

    Returns:
        Interactions with the (half-star) ratings as weights; ``items`` holds titles, genres
        and ``extra["year"]``.

    Raises:
        FileNotFoundError: no ``ratings.csv`` in the folder.
        DataFormatError: a file does not have the ml-latest format.
    """
    _check_policy(duplicates)
    root = _dataset_dir(path, "ratings.csv", "ml-latest")
    data_path = _require(root, "ratings.csv", "ml-latest", "ratings.csv (and movies.csv)")
    if name is None:
        name = root.name if root.name.startswith("ml-") else "ml-latest"
    expected = "a CSV file with header userId,movieId,rating,timestamp"
    raw = tb.read_bytes(data_path, expected)
    header, start = tb.header_line(data_path, raw, expected, sep=",")
    want = header_columns(
        data_path,
        header,
        required={
            "user": "userId",
            "item": "movieId",
            "rating": "rating",
            "timestamp": "timestamp",
        },
        optional={},
        sep=",",
        expected="header userId,movieId,rating,timestamp",
    )
    tb.require_rows(data_path, raw, start, expected)
    table = tb.read_delimited(
        data_path,
        raw,
        start,
        sep=",",
        n_fields=len(header),
        want=want,
        first_line=2,
        describe=",".join(header),
        quoting=True,
    )
    users, items, weights, times = _ml_ratings(
        table, user="user", item="item", rating="rating", timestamp="timestamp"
    )
    catalog = _optional_metadata(root, "movies.csv", read_movies_csv)
    return _assemble(
        name=name,
        path=data_path,
        table=table,
        user_ids=users,
        item_ids=items,
        weight=weights,
        timestamp=times,
        catalog=catalog,
        duplicates=duplicates,
    )


def _recbole_inter_path(p: Path) -> Path:
    """The ``.inter`` file that a folder, a file or a path without the suffix names."""
    if p.is_dir():
        inters = sorted(p.glob("*.inter"))
        if not inters:
            raise FileNotFoundError(f"{p}: no RecBole .inter file in this folder")
        if len(inters) > 1:
            raise DataFormatError(
                f"expected exactly one RecBole .inter file in the folder, found "
                f"{', '.join(x.name for x in inters)}; pass the .inter file itself",
                path=p,
            )
        inter = inters[0]
    elif p.suffix == ".inter":
        inter = p
    else:
        inter = p.with_name(p.name + ".inter")
    if not inter.is_file():
        raise FileNotFoundError(f"{inter}: not found; expected a RecBole .inter atomic file")
    return inter


def load_recbole(
    path_or_prefix: str | Path, *, duplicates: str = "keep-last", name: str | None = None
) -> Interactions:
    """Load RecBole atomic files: ``NAME.inter`` and, if present, ``NAME.item``.

    The ``.inter`` file is tab-separated with a ``name:type`` header; it must have
    ``user_id`` and ``item_id`` fields and may have ``rating`` (default 1.0) and
    ``timestamp`` (default: row order). Ids are kept as the strings in the file.

    Args:
        path_or_prefix: a folder holding exactly one ``.inter`` file, the ``.inter`` file, or
            its path without the suffix (``data/ml-100k`` for ``data/ml-100k.inter``).
        duplicates: what to do with repeated (user, item) pairs; see the module docstring.
        name: the ``name`` of the result; default the ``.inter`` file's stem.

    Returns:
        Interactions; ``items`` from ``NAME.item`` (title from ``movie_title``/``title``,
        genres from ``class``/``genre``, every other field in ``extra``).

    Raises:
        FileNotFoundError: no ``.inter`` file where expected.
        DataFormatError: the folder holds several ``.inter`` files, or a file is malformed.
    """
    _check_policy(duplicates)
    inter = _recbole_inter_path(Path(path_or_prefix))
    expected = "a RecBole .inter file: tab-separated, header user_id:token\titem_id:token ..."
    raw = tb.read_bytes(inter, expected)
    nl = raw.index(b"\n")
    fields = recbole_header(
        inter, tb.decode(raw[:nl], "utf-8", inter), required=("user_id", "item_id")
    )
    _, start = tb.header_line(inter, raw, expected, sep="\t")
    tb.require_rows(inter, raw, start, expected)
    names = [f for f, _ in fields]
    want = {"user": names.index("user_id"), "item": names.index("item_id")}
    for optional in ("rating", "timestamp"):
        if optional in names:
            want[optional] = names.index(optional)
    table = tb.read_delimited(
        inter,
        raw,
        start,
        sep="\t",
        n_fields=len(fields),
        want=want,
        first_line=2,
        describe=", ".join(names),
        quoting=False,
    )
    users, items, weights, times = _mapped(table, want, iso=False)
    item_file = inter.with_suffix(".item")
    catalog = read_recbole_items(item_file) if item_file.is_file() else None
    return _assemble(
        name=name or inter.stem,
        path=inter,
        table=table,
        user_ids=users,
        item_ids=items,
        weight=weights,
        timestamp=times,
        catalog=catalog,
        duplicates=duplicates,
    )


def load_event_log(
    path: str | Path,
    *,
    user_col: str,
    item_col: str,
    weight_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    format: str | None = None,
    duplicates: str = "keep-last",
    name: str | None = None,
    encoding: str = "utf-8",
) -> Interactions:
    """Load a generic event log (CSV with a header, or Parquet) through a column mapping.

    Args:
        path: the file (``.csv``, ``.tsv``, ``.txt``, optionally ``.gz``; or ``.parquet``).
        user_col: the column holding user ids (kept as strings).
        item_col: the column holding item ids (kept as strings).
        weight_col: a numeric column of weights; default every event weighs 1.0.
        timestamp_col: a column of times, as unix seconds (integers or decimals), ISO-8601
            strings (naive ones read as UTC) or, in Parquet, timestamp/date values; default
            row order.
        sep: the CSV field separator (double-quoted fields are understood).
        format: ``"csv"`` or ``"parquet"``; default from the suffix (Parquet for
            ``.parquet``/``.pq``, CSV otherwise).
        duplicates: what to do with repeated (user, item) pairs; see the module docstring.
        name: the ``name`` of the result; default the file's stem.
        encoding: the text encoding of a CSV file.

    Returns:
        Interactions over the mapped columns.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: a mapped column is missing or holds values of the wrong kind.
        ImportError: Parquet was asked for and pyarrow is not installed.
    """
    _check_policy(duplicates)
    p = Path(path)
    if format is None:
        format = "parquet" if p.suffix.lower() in (".parquet", ".pq") else "csv"
    if format not in ("csv", "parquet"):
        raise ValueError(f"format={format!r}; expected 'csv' or 'parquet'")
    if sep is None:
        sep = _default_sep(p)
    if name is None:
        name = p.name.split(".")[0] or "events"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file; expected a {format} event log")
    mapping = {"user": user_col, "item": item_col}
    if weight_col is not None:
        mapping["weight"] = weight_col
    if timestamp_col is not None:
        mapping["timestamp"] = timestamp_col
    if format == "parquet":
        table = tb.read_parquet(p, mapping)
    else:
        table = _read_csv_events(p, mapping, sep=sep, encoding=encoding)
    users, items, weights, times = _mapped(table, mapping, iso=True, names=mapping)
    return _assemble(
        name=name,
        path=p,
        table=table,
        user_ids=users,
        item_ids=items,
        weight=weights,
        timestamp=times,
        catalog=None,
        duplicates=duplicates,
    )


def _read_csv_events(p: Path, mapping: dict[str, str], *, sep: str, encoding: str) -> tb.Table:
    """The mapped columns of a CSV event log (``mapping``: role to column name)."""
    expected = f"a {tb.sep_adjective(sep)}-separated file with a header naming the columns"
    raw = tb.read_bytes(p, expected)
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raw = tb.decode(raw, encoding, p).encode("utf-8")
    header, start = tb.header_line(p, raw, expected, sep=sep)
    want = header_columns(
        p,
        header,
        required={"user": mapping["user"], "item": mapping["item"]},
        optional={"weight": mapping.get("weight"), "timestamp": mapping.get("timestamp")},
        sep=sep,
        expected=f"columns {', '.join(map(repr, mapping.values()))}",
    )
    tb.require_rows(p, raw, start, expected)
    return tb.read_delimited(
        p,
        raw,
        start,
        sep=sep,
        n_fields=len(header),
        want=want,
        first_line=2,
        describe=sep.join(header)[:200],
        quoting=True,
    )


def _mapped(
    table: tb.Table, want: dict[str, Any], *, iso: bool, names: dict[str, str] | None = None
) -> tuple[Ids, Ids, np.ndarray, np.ndarray]:
    """Users, items, weights (default 1) and times (default row order) of a mapped table."""
    names = names or {}

    def what(role: str, label: str) -> str:
        return f"{label} ({names[role]})" if role in names else label

    n = len(table)
    users = tb.ids(table, "user", what("user", "user id"))
    items = tb.ids(table, "item", what("item", "item id"))
    weights = np.ones(n)
    for role in ("weight", "rating"):
        if role in want:
            weights = tb.floats(table, role, what(role, role))
    times = np.arange(n, dtype=np.int64)
    if "timestamp" in want:
        times = tb.times(table, "timestamp", what("timestamp", "timestamp"), iso=iso)
    return users, items, weights, times


def event_log_columns(path: str | Path, *, sep: str | None = None) -> list[str]:
    """The column names of an event log (its CSV header, or its Parquet schema)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file; expected a CSV or Parquet event log")
    if p.suffix.lower() in (".parquet", ".pq"):
        pa = tb.import_pyarrow(parquet=True)
        try:
            return list(pa.parquet.read_schema(p).names)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise DataFormatError(
                f"not a readable Parquet file ({tb.show(str(exc), 120)})", path=p
            ) from None
    raw = tb.read_bytes(p, "a CSV file with a header line")
    header = tb.decode(raw[: raw.index(b"\n")], "utf-8", p)
    names = next(csv.reader([header], delimiter=sep or _default_sep(p)))
    return [tb.show(n)[1:-1] if len(n) > 40 else n for n in names[:50]]


def _default_sep(p: Path) -> str:
    return "\t" if ".tsv" in [x.lower() for x in p.suffixes] else ","


def _resolve_dir(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise ValueError(f"load_dataset({name!r}) needs data_dir")
    base = Path(data_dir)
    return base / name if (base / name).is_dir() else base


def load_dataset(name: str, data_dir: str | Path | None = None, **kwargs: Any) -> Interactions:
    """Load a data set by name.

    Args:
        name: one of :data:`DATASETS`: ``"ml-100k"``, ``"ml-1m"``, ``"ml-latest"``,
            ``"ml-latest-small"``, ``"recbole"``, ``"events"`` or ``"synthetic"``.
        data_dir: for the MovieLens names, the data set folder or a folder holding it under
            its name (``datasets/`` for ``datasets/ml-100k``); for ``"recbole"`` the folder,
            ``.inter`` file or prefix; for ``"events"`` the file. Ignored by ``"synthetic"``.
        **kwargs: passed to the loader (e.g. ``duplicates=``; ``user_col=``/``item_col=`` for
            ``"events"``; the generator's parameters for ``"synthetic"``).

    Returns:
        The loaded :class:`Interactions`.

    Raises:
        ValueError: unknown name, or ``data_dir`` missing where one is needed.
    """
    if name == "synthetic":
        from .synthetic import generate_synthetic

        return generate_synthetic(**kwargs)
    if name == "ml-100k":
        return load_ml100k(_resolve_dir(name, data_dir), **kwargs)
    if name == "ml-1m":
        return load_ml1m(_resolve_dir(name, data_dir), **kwargs)
    if name in ("ml-latest", "ml-latest-small"):
        kwargs.setdefault("name", name)
        return load_ml_latest(_resolve_dir(name, data_dir), **kwargs)
    if name in ("recbole", "events"):
        if data_dir is None:
            raise ValueError(f"load_dataset({name!r}) needs data_dir (the file or folder)")
        if name == "recbole":
            return load_recbole(data_dir, **kwargs)
        return load_event_log(data_dir, **kwargs)
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
