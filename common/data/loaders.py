"""Loaders that turn recommendation data sets on disk into :class:`Interactions`.

Supported formats:

* GroupLens MovieLens as shipped: ml-100k (:func:`load_ml100k`), ml-1m (:func:`load_ml1m`),
  ml-latest / ml-latest-small / ml-20m / ml-25m (:func:`load_ml_latest`).
* RecBole atomic files, ``NAME.inter`` plus optional ``NAME.item`` (:func:`load_recbole`).
* Any CSV or Parquet event log with a column mapping (:func:`load_event_log`).
* The synthetic generator of :mod:`fedrec.common.data.synthetic`, through :func:`load_dataset`.

Id maps:
    Dense indices never depend on file order: user and item maps are built with
    :meth:`IdMap.from_ids` (``sort=True``, numeric-aware). For the MovieLens formats the item map
    also holds every item of the metadata file (``u.item``, ``movies.dat``, ``movies.csv``), so
    items nobody rated are still in the catalog; users come from the ratings only. MovieLens ids
    must be integers and are written back as plain decimals (``"0042"`` becomes ``"42"``);
    RecBole and event-log ids are kept as the exact strings found in the file.

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
    A file that does not match its format raises :class:`DataFormatError`, whose message names
    the file, the 1-based line, what was found and what was expected (wrong separator, wrong
    field count, missing header columns, non-numeric ids or ratings, empty files). A missing
    file raises :class:`FileNotFoundError` saying which file the folder should contain.

Performance:
    Numeric tables are split and parsed with vectorised numpy over the raw bytes (no per-row
    Python), so ml-100k loads in about 0.1 s and 25M-row files at roughly a million rows per second.
    Only cells the fast path cannot read (quoted CSV, ISO dates, scientific notation, stray
    spaces) are parsed in Python, once per distinct value.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .schema import DataFormatError, IdMap, Interactions, ItemMetadata

__all__ = [
    "DATASETS",
    "DUPLICATE_POLICIES",
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

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The 19 genre flag columns of ml-100k's ``u.item``, in GroupLens order."""

_CHUNK_BYTES = 1 << 23
_BLOCK_ROWS = 1 << 20
_SEP_CANDIDATES = ("\t", ",", ";", "|", "::", " ")
_POW10F = 10.0 ** np.arange(19)
_POW10I = 10 ** np.arange(19, dtype=np.int64)
_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")


# --------------------------------------------------------------------------------------------
# Raw tables: the wanted columns of a delimited file, as fixed-width byte-string arrays.


@dataclass
class _Table:
    """Selected columns of a delimited file as ``S`` (bytes) arrays, rows in file order."""

    path: Path
    columns: dict[str, np.ndarray]
    first_line: int
    encoding: str
    lines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def line(self, row: int) -> int:
        """Return the 1-based line of data row ``row``."""
        if self.lines is not None:
            return int(self.lines[row])
        return self.first_line + int(row)


def _sep_adjective(sep: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}.get(sep, repr(sep))


def _sep_hint(line: str, sep: str, n_fields: int) -> str:
    """Return a ``; is the separator X?`` hint if another separator splits ``line`` better."""
    found = len(line.split(sep))
    best, best_count = None, 0
    for cand in _SEP_CANDIDATES:
        if cand == sep or (cand == " " and found > 1):
            continue
        count = line.count(cand)
        if count == n_fields - 1:
            best = cand
            break
        if count > best_count and found == 1:
            best, best_count = cand, count
    return f"; is the separator {best!r}?" if best is not None else ""


def _field_count_error(
    path: Path, line_no: int, line: str, *, sep: str, n_fields: int, describe: str
) -> DataFormatError:
    expected = f"expected {n_fields} {_sep_adjective(sep)}-separated fields ({describe})"
    if not line.strip():
        return DataFormatError(f"empty line; {expected}", path=path, line=line_no)
    found = len(line.split(sep))
    shown = line if len(line) <= 80 else line[:77] + "..."
    return DataFormatError(
        f"{expected}, found {found} in {shown!r}{_sep_hint(line, sep, n_fields)}",
        path=path,
        line=line_no,
    )


def _read_bytes(path: Path, expected: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not raw or raw.isspace():
        raise DataFormatError(f"file is empty; expected {expected}", path=path)
    if raw.endswith(b"\n") and not raw.endswith(b"\n\n"):
        return raw
    return raw.rstrip(b"\n") + b"\n"


def _split_header(path: Path, raw: bytes, expected: str) -> tuple[bytes, bytes]:
    """Split off the first line; error if no data rows follow it."""
    nl = raw.index(b"\n")
    header, body = raw[:nl], raw[nl + 1 :]
    if not body or body.isspace():
        raise DataFormatError(
            f"has a header but no data rows; expected {expected}", path=path, line=2
        )
    return header, body


def _gather_column(a: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Cut fields ``a[s:s+l]`` out of a byte buffer into one fixed-width ``S`` array.

    Cells past a field's end are zeroed, which the ``S`` dtype treats as padding.
    """
    width = max(int(lens.max()) if len(lens) else 1, 1)
    padded = np.concatenate([a, np.zeros(width, np.uint8)])
    cells = np.lib.stride_tricks.sliding_window_view(padded, width)[starts]
    cells *= np.arange(width) < lens[:, None]
    return cells.view(f"S{width}").ravel()


def _read_fields(
    path: Path,
    body: bytes,
    *,
    sep: str,
    n_fields: int,
    want: dict[str, int],
    first_line: int,
    describe: str,
    encoding: str,
    quoting: bool = False,
) -> _Table:
    """Split ``body`` into fields and keep the ``want`` columns.

    Args:
        path: the file, for messages.
        body: the data lines (after any header), newline-normalised, ending in a newline.
        sep: the field separator (one or more characters).
        n_fields: how many fields each line must have.
        want: logical column name -> field position, the columns to keep.
        first_line: the 1-based line number of the first line of ``body``.
        describe: field names for messages ("user, item, rating, timestamp").
        encoding: the text encoding, for messages and the csv fallback.
        quoting: whether the format allows CSV quoting (``"a,b"``).
    """
    if quoting and b'"' in body:
        return _read_fields_csv(
            path,
            body,
            sep=sep,
            n_fields=n_fields,
            want=want,
            first_line=first_line,
            describe=describe,
            encoding=encoding,
        )
    sep_bytes = sep.encode(encoding)
    if len(sep_bytes) == 1:
        sep_byte = sep_bytes[0]
    else:
        sep_byte = 0x1F  # multi-character separators are replaced by the unit separator
    pattern = np.full(n_fields, sep_byte, dtype=np.uint8)
    pattern[-1] = 10
    parts: dict[str, list[np.ndarray]] = {name: [] for name in want}
    pos, line_no = 0, first_line
    while pos < len(body):
        end = body.find(b"\n", min(pos + _CHUNK_BYTES, len(body) - 1))
        chunk = body[pos : end + 1]
        pos = end + 1
        if len(sep_bytes) > 1:
            if b"\x1f" in chunk:
                raise DataFormatError("unexpected control character \\x1f", path=path, line=line_no)
            chunk = chunk.replace(sep_bytes, b"\x1f")
        a = np.frombuffer(chunk, dtype=np.uint8)
        ends = np.flatnonzero((a == sep_byte) | (a == 10))
        kinds = a[ends]
        if len(ends) % n_fields or not (kinds.reshape(-1, n_fields) == pattern).all():
            _raise_first_bad_line(
                path,
                chunk,
                line_no=line_no,
                sep=sep,
                n_fields=n_fields,
                describe=describe,
                encoding=encoding,
            )
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        lens = ends - starts
        for name, j in want.items():
            parts[name].append(_gather_column(a, starts[j::n_fields], lens[j::n_fields]))
        line_no += len(ends) // n_fields
    columns = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return _Table(path=path, columns=columns, first_line=first_line, encoding=encoding)


def _raise_first_bad_line(
    path: Path,
    chunk: bytes,
    *,
    line_no: int,
    sep: str,
    n_fields: int,
    describe: str,
    encoding: str,
) -> None:
    """Find the first line of ``chunk`` with the wrong field count and raise for it."""
    sep_bytes = sep.encode(encoding)
    lines = chunk.split(b"\n")[:-1]
    for k, raw_line in enumerate(lines):
        if len(sep_bytes) > 1:
            raw_line = raw_line.replace(b"\x1f", sep_bytes)
        line = raw_line.decode(encoding, "replace")
        if len(line.split(sep)) != n_fields or not line:
            raise _field_count_error(
                path, line_no + k, line, sep=sep, n_fields=n_fields, describe=describe
            )
    raise DataFormatError(  # pragma: no cover - the vectorised check and this scan agree
        f"could not split into {n_fields} fields ({describe})", path=path, line=line_no
    )


def _read_fields_csv(
    path: Path,
    body: bytes,
    *,
    sep: str,
    n_fields: int,
    want: dict[str, int],
    first_line: int,
    describe: str,
    encoding: str,
) -> _Table:
    """Read quoted CSV with the csv module, one row at a time (the slow, exact path)."""
    text = body.decode(encoding, "replace")
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    cells: dict[str, list[bytes]] = {name: [] for name in want}
    lines: list[int] = []
    start = 1
    for row in reader:
        line_no = first_line + start - 1
        if len(row) != n_fields:
            raw = text.split("\n")[start - 1] if row else ""
            raise _field_count_error(
                path, line_no, raw, sep=sep, n_fields=n_fields, describe=describe
            )
        for name, j in want.items():
            cells[name].append(row[j].encode(encoding))
        lines.append(line_no)
        start = reader.line_num + 1
    columns = {name: np.array(vals, dtype=bytes) for name, vals in cells.items()}
    return _Table(
        path=path,
        columns=columns,
        first_line=first_line,
        encoding=encoding,
        lines=np.asarray(lines, dtype=np.int64),
    )


def _read_headerless(
    path: Path, *, sep: str, fields: Sequence[str], encoding: str, expected: str
) -> _Table:
    raw = _read_bytes(path, expected)
    return _read_fields(
        path,
        raw,
        sep=sep,
        n_fields=len(fields),
        want={f: i for i, f in enumerate(fields)},
        first_line=1,
        describe=", ".join(fields),
        encoding=encoding,
    )


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header_columns(
    path: Path,
    header: list[str],
    *,
    required: dict[str, str],
    optional: dict[str, str | None],
    sep: str,
    expected: str,
) -> dict[str, int]:
    """Map logical names to positions in ``header``; error naming missing columns."""
    positions = {name: i for i, name in enumerate(header)}
    missing = [col for col in required.values() if col not in positions]
    if missing:
        hint = ""
        if len(header) == 1:
            hint = _sep_hint(header[0], sep, len(required))
        elif all(_looks_numeric(h) for h in header):
            hint = "; the first line looks like data: the file needs a header line"
        raise DataFormatError(
            f"missing column(s) {', '.join(map(repr, missing))}; expected {expected}; "
            f"found columns: {', '.join(map(repr, header))}{hint}",
            path=path,
            line=1,
        )
    want = {logical: positions[col] for logical, col in required.items()}
    for logical, col in optional.items():
        if col is not None:
            if col not in positions:
                raise DataFormatError(
                    f"missing column {col!r}; found columns: {', '.join(map(repr, header))}",
                    path=path,
                    line=1,
                )
            want[logical] = positions[col]
    return want


# --------------------------------------------------------------------------------------------
# Column conversion: vectorised numbers, with a per-cell fallback for what numpy cannot read.


def _parse_decimal(
    col: np.ndarray, *, integer: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``[-]digits[.digits]`` byte strings without a Python loop.

    Args:
        col: a fixed-width ``S`` array.
        integer: whether a decimal point makes a cell bad.

    Returns:
        ``(mantissa, frac_digits, bad)``: the value is ``mantissa / 10**frac_digits``; ``bad``
        flags cells that are not such a number (left for the caller's per-cell fallback).
    """
    n = len(col)
    width = col.dtype.itemsize
    mantissa = np.zeros(n, np.int64)
    frac = np.zeros(n, np.int64)
    bad = np.zeros(n, bool)
    if n == 0 or width == 0:
        return mantissa, frac, np.ones(n, bool)
    cells_all = np.ascontiguousarray(col).view(np.uint8).reshape(n, width)
    for lo in range(0, n, _BLOCK_ROWS):
        cells = cells_all[lo : lo + _BLOCK_ROWS]
        m = len(cells)
        value = np.zeros(m, np.int64)
        digits = np.zeros(m, np.int64)
        fdig = np.zeros(m, np.int64)
        seen_dot = np.zeros(m, bool)
        wrong = np.zeros(m, bool)
        neg = cells[:, 0] == 45
        for c in range(width):
            b = cells[:, c]
            d = b - np.uint8(48)
            is_digit = d < 10
            ok = is_digit | (b == 0)
            if c == 0:
                ok |= neg
            if not integer:
                is_dot = b == 46
                ok |= is_dot
                wrong |= is_dot & seen_dot
                if seen_dot.any():
                    fdig += is_digit & seen_dot
                seen_dot |= is_dot
            wrong |= ~ok
            value = np.where(is_digit, value * 10 + d, value)
            digits += is_digit
        wrong |= (digits == 0) | (digits > 18)
        mantissa[lo : lo + m] = np.where(neg, -value, value)
        frac[lo : lo + m] = fdig
        bad[lo : lo + m] = wrong
    return mantissa, frac, bad


def _fallback(
    table: _Table,
    column: str,
    rows: np.ndarray,
    out: np.ndarray,
    convert: Callable[[str], Any],
    what: str,
    expected: str,
) -> None:
    """Convert the cells numpy could not, once per distinct value; raise for the first bad row."""
    uniq, inverse = np.unique(table.columns[column][rows], return_inverse=True)
    values = np.empty(len(uniq), dtype=out.dtype)
    failed: list[int] = []
    for k, raw in enumerate(uniq):
        try:
            values[k] = convert(bytes(raw).decode(table.encoding, "replace").strip())
        except (ValueError, OverflowError):
            failed.append(k)
    if failed:
        row = int(rows[np.flatnonzero(np.isin(inverse, failed))[0]])
        text = bytes(table.columns[column][row]).decode(table.encoding, "replace")
        if text.strip():
            message = f"{what} {text!r} is not {expected}"
        else:
            message = f"{what} is empty; expected {expected}"
        raise DataFormatError(message, path=table.path, line=table.line(row))
    out[rows] = values[inverse.reshape(-1)]


def _py_int(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise OverflowError(text)
    return value


def _py_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _py_time(text: str, *, iso: bool) -> int:
    try:
        return math.floor(_py_float(text))
    except ValueError:
        if not iso:
            raise
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _iso_to_seconds(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse the common ISO-8601 forms without a Python loop.

    Understands ``YYYY-MM-DD``, ``YYYY-MM-DD[T ]HH:MM``, ``YYYY-MM-DD[T ]HH:MM:SS`` with an
    optional ``Z`` or ``±HH:MM`` suffix (naive times are UTC). Returns ``(seconds, ok)``; cells
    not ``ok`` (other forms, invalid dates) are left to the Python fallback.
    """
    n, width = len(cells), cells.dtype.itemsize
    c = np.zeros((n, 25), np.uint8)
    c[:, : min(width, 25)] = np.ascontiguousarray(cells).view(np.uint8).reshape(n, width)[:, :25]
    length = np.count_nonzero(c, axis=1)
    if width > 25:
        length[np.char.str_len(cells) > 25] = 0
    d = c.astype(np.int64) - 48
    is_digit = (d >= 0) & (d <= 9)

    def number(*cols: int) -> np.ndarray:
        value = np.zeros(n, np.int64)
        for col in cols:
            value = value * 10 + d[:, col]
        return value

    def digits(*cols: int) -> np.ndarray:
        return is_digit[:, list(cols)].all(axis=1)

    ok = np.isin(length, (10, 16, 19, 20, 25))
    ok &= (c[:, 4] == 45) & (c[:, 7] == 45) & digits(0, 1, 2, 3, 5, 6, 8, 9)
    timed = length >= 16
    ok &= ~timed | (
        ((c[:, 10] == 84) | (c[:, 10] == 32)) & (c[:, 13] == 58) & digits(11, 12, 14, 15)
    )
    secs = length >= 19
    ok &= ~secs | ((c[:, 16] == 58) & digits(17, 18))
    ok &= (length != 20) | (c[:, 19] == 90)
    offset = length == 25
    ok &= ~offset | (
        ((c[:, 19] == 43) | (c[:, 19] == 45)) & (c[:, 22] == 58) & digits(20, 21, 23, 24)
    )
    year, month, day = number(0, 1, 2, 3), number(5, 6), number(8, 9)
    hour = np.where(timed, number(11, 12), 0)
    minute = np.where(timed, number(14, 15), 0)
    second = np.where(secs, number(17, 18), 0)
    off_h, off_m = number(20, 21), number(23, 24)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    month_days = _MONTH_DAYS[np.clip(month, 1, 12) - 1] + (leap & (month == 2))
    ok &= month_ok & (day >= 1) & (day <= month_days) & (year >= 1)
    ok &= (hour < 24) & (minute < 60) & (second < 60)
    ok &= ~offset | ((off_h < 24) & (off_m < 60))
    sign = np.where(c[:, 19] == 45, -1, 1)
    shift = np.where(offset, sign * (off_h * 3600 + off_m * 60), 0)
    seconds = (
        _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - shift
    )
    return seconds, ok


def _to_int(table: _Table, column: str, what: str) -> np.ndarray:
    out, _, bad = _parse_decimal(table.columns[column], integer=True)
    if bad.any():
        _fallback(table, column, np.flatnonzero(bad), out, _py_int, what, "an integer")
    return out


def _to_float(table: _Table, column: str, what: str) -> np.ndarray:
    mantissa, frac, bad = _parse_decimal(table.columns[column])
    out = mantissa / _POW10F[np.minimum(frac, 18)]
    if bad.any():
        _fallback(table, column, np.flatnonzero(bad), out, _py_float, what, "a finite number")
    return out


def _to_time(table: _Table, column: str, what: str, *, iso: bool = False) -> np.ndarray:
    mantissa, frac, bad = _parse_decimal(table.columns[column])
    out = np.floor_divide(mantissa, _POW10I[np.minimum(frac, 18)])
    if iso and bad.any():
        rows = np.flatnonzero(bad)
        seconds, ok = _iso_to_seconds(table.columns[column][rows])
        out[rows[ok]] = seconds[ok]
        bad[rows[ok]] = False
    if bad.any():
        expected = "a number or an ISO-8601 date/time" if iso else "a number (unix seconds)"
        _fallback(
            table,
            column,
            np.flatnonzero(bad),
            out,
            lambda t: _py_time(t, iso=iso),
            what,
            expected,
        )
    return out


# --------------------------------------------------------------------------------------------
# Assembling Interactions: id maps, duplicates, metadata.


def _encode_ids(values: np.ndarray, to_str: Callable[[Any], str]) -> tuple[list[str], np.ndarray]:
    """Return the unique external ids (as strings) and each row's position in that list."""
    if values.dtype.kind == "i" and len(values):
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= max(8 * len(values), 1 << 20):
            present = np.zeros(hi + 1, bool)
            present[values] = True
            uniq = np.flatnonzero(present)
            lookup = np.cumsum(present) - 1
            return [to_str(v) for v in uniq], lookup[values]
    if values.dtype.kind == "S" and len(values):
        uniq, inverse = _unique_bytes(values)
    else:
        uniq, inverse = np.unique(values, return_inverse=True)
    return [to_str(v) for v in uniq], inverse.reshape(-1)


def _unique_bytes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for an ``S`` array, sorting integers.

    Sorting fixed-width byte strings directly is slow; their bytes, read as big-endian 64-bit
    words, sort the same way and sort fast.
    """
    n, width = len(values), values.dtype.itemsize
    words = -(-width // 8)
    cells = np.zeros((n, words * 8), np.uint8)
    cells[:, :width] = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    keys = cells.view(">u8").astype(np.uint64)  # (n, words)
    if words == 1:
        order = np.argsort(keys[:, 0], kind="stable")
    else:
        order = np.lexsort(keys.T[::-1])
    sorted_keys = keys[order]
    new = np.ones(n, bool)
    new[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.cumsum(new) - 1
    return values[order[new]], inverse


def _int_str(v: Any) -> str:
    return str(int(v))


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


@dataclass
class _Catalog:
    """Item metadata read from a metadata file, keyed by external item id."""

    path: Path
    ids: list[str]
    titles: list[str | None] | None
    genres: list[tuple[str, ...]] | None
    extra: dict[str, list[object]]


def _assemble(
    *,
    name: str,
    path: Path,
    table: _Table | None,
    user_ids: tuple[list[str], np.ndarray],
    item_ids: tuple[list[str], np.ndarray],
    weight: np.ndarray,
    timestamp: np.ndarray,
    catalog: _Catalog | None,
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
        line_of=table.line if table is not None else None,
        path=path,
        user_map=user_map,
        item_map=item_map,
    )
    if keep is not None:
        user, item = user[keep], item[keep]
        weight, timestamp = weight[keep], timestamp[keep]
    items = None
    if catalog is not None:
        items = _align_catalog(catalog, item_map)
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


def _align_catalog(catalog: _Catalog, item_map: IdMap) -> ItemMetadata:
    n = len(item_map)
    pos = item_map.indices(catalog.ids)
    titles: list[str | None] | None = None
    genres: list[tuple[str, ...]] | None = None
    if catalog.titles is not None:
        titles = [None] * n
        for p, t in zip(pos, catalog.titles, strict=True):
            titles[p] = t
    if catalog.genres is not None:
        genres = [()] * n
        for p, g in zip(pos, catalog.genres, strict=True):
            genres[p] = g
    extra: dict[str, list[object]] = {}
    for key, values in catalog.extra.items():
        column: list[object] = [None] * n
        for p, v in zip(pos, values, strict=True):
            column[p] = v
        extra[key] = column
    return ItemMetadata(titles=titles, genres=genres, extra=extra)


def _dedupe_catalog(catalog: _Catalog) -> _Catalog:
    """Keep the first entry of an item listed twice in a metadata file (with a warning)."""
    seen: dict[str, int] = {}
    for i, item in enumerate(catalog.ids):
        seen.setdefault(item, i)
    if len(seen) == len(catalog.ids):
        return catalog
    keep = sorted(seen.values())
    logger.warning(
        "%s: %d repeated item ids, keeping the first entry of each",
        catalog.path,
        len(catalog.ids) - len(keep),
    )

    def pick(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[i] for i in keep]

    return _Catalog(
        path=catalog.path,
        ids=[catalog.ids[i] for i in keep],
        titles=pick(catalog.titles),
        genres=pick(catalog.genres),
        extra={k: [v[i] for i in keep] for k, v in catalog.extra.items()},
    )


def _year_of_title(title: str) -> int | None:
    match = _YEAR_IN_TITLE.search(title)
    return int(match.group(1)) if match else None


def _numeric_id(text: str, *, path: Path, line: int, what: str) -> str:
    try:
        return str(int(text.strip()))
    except ValueError:
        raise DataFormatError(f"{what} {text!r} is not an integer", path=path, line=line) from None


def _text_lines(path: Path, encoding: str, expected: str) -> list[str]:
    return _read_bytes(path, expected).decode(encoding, "replace").split("\n")[:-1]


# --------------------------------------------------------------------------------------------
# Metadata files.


def _read_u_item(path: Path) -> _Catalog:
    """GroupLens ``u.item``: ``id|title|release date|video release date|IMDb URL|19 flags``."""
    n_fields = 5 + len(ML100K_GENRES)
    describe = "id|title|release date|video release date|IMDb URL|19 genre flags"
    ids: list[str] = []
    titles: list[str | None] = []
    genres: list[tuple[str, ...]] = []
    release: list[object] = []
    video: list[object] = []
    urls: list[object] = []
    years: list[object] = []
    for k, line in enumerate(_text_lines(path, "latin-1", f"'|'-separated lines: {describe}")):
        line_no = k + 1
        parts = line.split("|")
        if len(parts) != n_fields:
            raise _field_count_error(
                path, line_no, line, sep="|", n_fields=n_fields, describe=describe
            )
        ids.append(_numeric_id(parts[0], path=path, line=line_no, what="movie id"))
        titles.append(parts[1])
        flags = parts[5:]
        for flag in flags:
            if flag not in ("0", "1"):
                raise DataFormatError(f"genre flag {flag!r} is not 0 or 1", path=path, line=line_no)
        genres.append(tuple(g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"))
        release.append(parts[2] or None)
        video.append(parts[3] or None)
        urls.append(parts[4] or None)
        year = parts[2][-4:]
        years.append(int(year) if year.isdigit() else _year_of_title(parts[1]))
    return _dedupe_catalog(
        _Catalog(
            path=path,
            ids=ids,
            titles=titles,
            genres=genres,
            extra={
                "year": years,
                "release_date": release,
                "video_release_date": video,
                "imdb_url": urls,
            },
        )
    )


_RECBOLE_TITLE_FIELDS = ("movie_title", "title", "item_title", "name")
_RECBOLE_GENRE_FIELDS = ("class", "genre", "genres", "categories", "category")


def _recbole_header(
    path: Path, header_line: str, *, required: Sequence[str]
) -> list[tuple[str, str]]:
    """Parse a RecBole header (``name:type`` fields, tab-separated)."""
    fields = []
    for raw in header_line.split("\t"):
        field_name, _, kind = raw.partition(":")
        fields.append((field_name.strip(), kind.strip() or "token"))
    names = [f for f, _ in fields]
    missing = [r for r in required if r not in names]
    if missing:
        hint = _sep_hint(header_line, "\t", len(required)) if len(fields) == 1 else ""
        raise DataFormatError(
            f"missing field(s) {', '.join(map(repr, missing))}; expected a RecBole atomic "
            f"header of tab-separated 'name:type' fields with {', '.join(required)}; "
            f"found fields: {', '.join(map(repr, names))}{hint}",
            path=path,
            line=1,
        )
    return fields


def _recbole_value(text: str, kind: str, *, path: Path, line: int, field: str) -> object:
    if kind.endswith("_seq"):
        parts = text.split()
        if kind.startswith("float"):
            try:
                return tuple(float(p) for p in parts)
            except ValueError:
                raise DataFormatError(
                    f"field {field!r} value {text!r} is not a list of numbers",
                    path=path,
                    line=line,
                ) from None
        return tuple(parts)
    if kind == "float":
        if not text.strip():
            return None
        try:
            return float(text)
        except ValueError:
            raise DataFormatError(
                f"field {field!r} value {text!r} is not a number", path=path, line=line
            ) from None
    return text


def _read_recbole_items(path: Path, *, numeric_ids: bool = False) -> _Catalog:
    """Read a RecBole ``.item`` atomic file: ``item_id:token`` plus any other fields."""
    lines = _text_lines(path, "utf-8", "a RecBole .item file with an item_id:token header")
    fields = _recbole_header(path, lines[0], required=("item_id",))
    names = [f for f, _ in fields]
    id_pos = names.index("item_id")
    title_pos = next((names.index(f) for f in _RECBOLE_TITLE_FIELDS if f in names), None)
    genre_pos = next((names.index(f) for f in _RECBOLE_GENRE_FIELDS if f in names), None)
    extra_pos = [i for i in range(len(names)) if i not in (id_pos, title_pos, genre_pos)]
    ids: list[str] = []
    titles: list[str | None] = []
    genres: list[tuple[str, ...]] = []
    extra: dict[str, list[object]] = {names[i]: [] for i in extra_pos}
    describe = ", ".join(names)
    for k, line in enumerate(lines[1:]):
        line_no = k + 2
        parts = line.split("\t")
        if len(parts) != len(fields):
            raise _field_count_error(
                path, line_no, line, sep="\t", n_fields=len(fields), describe=describe
            )
        if numeric_ids:
            ids.append(_numeric_id(parts[id_pos], path=path, line=line_no, what="item id"))
        else:
            ids.append(parts[id_pos])
        if title_pos is not None:
            titles.append(parts[title_pos] or None)
        if genre_pos is not None:
            genres.append(tuple(parts[genre_pos].split()))
        for i in extra_pos:
            extra[names[i]].append(
                _recbole_value(parts[i], fields[i][1], path=path, line=line_no, field=names[i])
            )
    if "release_year" in extra and "year" not in extra:
        extra["year"] = [
            int(y) if isinstance(y, str) and y.strip().isdigit() else None
            for y in extra["release_year"]
        ]
    return _dedupe_catalog(
        _Catalog(
            path=path,
            ids=ids,
            titles=titles if title_pos is not None else None,
            genres=genres if genre_pos is not None else None,
            extra=extra,
        )
    )


def _split_genres(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text or text == "(no genres listed)":
        return ()
    return tuple(g for g in text.split("|") if g)


def _read_movies_dat(path: Path) -> _Catalog:
    """ml-1m ``movies.dat``: ``MovieID::Title::Genres`` (latin-1)."""
    describe = "MovieID, Title, Genres"
    ids: list[str] = []
    titles: list[str | None] = []
    genres: list[tuple[str, ...]] = []
    years: list[object] = []
    for k, line in enumerate(_text_lines(path, "latin-1", f"'::'-separated lines: {describe}")):
        parts = line.split("::")
        if len(parts) < 3:
            raise _field_count_error(path, k + 1, line, sep="::", n_fields=3, describe=describe)
        ids.append(_numeric_id(parts[0], path=path, line=k + 1, what="movie id"))
        title = "::".join(parts[1:-1])
        titles.append(title)
        genres.append(_split_genres(parts[-1]))
        years.append(_year_of_title(title))
    return _dedupe_catalog(
        _Catalog(path=path, ids=ids, titles=titles, genres=genres, extra={"year": years})
    )


def _read_movies_csv(path: Path) -> _Catalog:
    """ml-latest ``movies.csv``: header ``movieId,title,genres``; quoted titles allowed."""
    expected = "a CSV file with header movieId,title,genres"
    text = _read_bytes(path, expected).decode("utf-8", "replace")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    want = _header_columns(
        path,
        header,
        required={"id": "movieId", "title": "title", "genres": "genres"},
        optional={},
        sep=",",
        expected="header movieId,title,genres",
    )
    ids: list[str] = []
    titles: list[str | None] = []
    genres: list[tuple[str, ...]] = []
    years: list[object] = []
    line_no = 2
    for row in reader:
        if len(row) != len(header):
            raw = text.split("\n")[line_no - 1] if row else ""
            raise _field_count_error(
                path, line_no, raw, sep=",", n_fields=len(header), describe=",".join(header)
            )
        ids.append(_numeric_id(row[want["id"]], path=path, line=line_no, what="movieId"))
        title = row[want["title"]]
        titles.append(title)
        genres.append(_split_genres(row[want["genres"]]))
        years.append(_year_of_title(title))
        line_no = reader.line_num + 1
    return _dedupe_catalog(
        _Catalog(path=path, ids=ids, titles=titles, genres=genres, extra={"year": years})
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


def _ml_ratings(
    table: _Table, *, user: str, item: str, rating: str, timestamp: str
) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray], np.ndarray, np.ndarray]:
    users = _encode_ids(_to_int(table, user, "user id"), _int_str)
    items = _encode_ids(_to_int(table, item, "movie id"), _int_str)
    weights = _to_float(table, rating, "rating")
    times = _to_time(table, timestamp, "timestamp")
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
        encoding="latin-1",
        expected="tab-separated lines of user, item, rating, timestamp",
    )
    users, items, weights, times = _ml_ratings(
        table, user="user", item="item", rating="rating", timestamp="timestamp"
    )
    catalog = None
    if (root / "u.item").is_file():
        catalog = _read_u_item(root / "u.item")
    else:
        candidates = sorted(root.glob("*.item"))
        if (root / "items.tsv").is_file():
            candidates.insert(0, root / "items.tsv")
        if candidates:
            catalog = _read_recbole_items(candidates[0], numeric_ids=True)
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
        encoding="latin-1",
        expected="lines of UserID::MovieID::Rating::Timestamp",
    )
    users, items, weights, times = _ml_ratings(
        table, user="UserID", item="MovieID", rating="Rating", timestamp="Timestamp"
    )
    catalog = _optional_metadata(root, "movies.dat", _read_movies_dat)
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
    raw = _read_bytes(data_path, expected)
    header_bytes, body = _split_header(data_path, raw, expected)
    header = next(csv.reader([header_bytes.decode("utf-8", "replace")]))
    want = _header_columns(
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
    table = _read_fields(
        data_path,
        body,
        sep=",",
        n_fields=len(header),
        want=want,
        first_line=2,
        describe=",".join(header),
        encoding="utf-8",
        quoting=True,
    )
    users, items, weights, times = _ml_ratings(
        table, user="user", item="item", rating="rating", timestamp="timestamp"
    )
    catalog = _optional_metadata(root, "movies.csv", _read_movies_csv)
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


def _bytes_str(encoding: str) -> Callable[[Any], str]:
    def convert(v: Any) -> str:
        return bytes(v).decode(encoding, "replace")

    return convert


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
    raw = _read_bytes(inter, expected)
    header_bytes, body = _split_header(inter, raw, expected)
    fields = _recbole_header(
        inter, header_bytes.decode("utf-8", "replace"), required=("user_id", "item_id")
    )
    names = [f for f, _ in fields]
    want = {"user": names.index("user_id"), "item": names.index("item_id")}
    for optional in ("rating", "timestamp"):
        if optional in names:
            want[optional] = names.index(optional)
    table = _read_fields(
        inter,
        body,
        sep="\t",
        n_fields=len(fields),
        want=want,
        first_line=2,
        describe=", ".join(names),
        encoding="utf-8",
    )
    n = len(table)
    to_str = _bytes_str("utf-8")
    users = _encode_ids(table.columns["user"], to_str)
    items = _encode_ids(table.columns["item"], to_str)
    weights = _to_float(table, "rating", "rating") if "rating" in want else np.ones(n)
    times = (
        _to_time(table, "timestamp", "timestamp")
        if "timestamp" in want
        else np.arange(n, dtype=np.int64)
    )
    item_file = inter.with_suffix(".item")
    catalog = _read_recbole_items(item_file) if item_file.is_file() else None
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


def _import_pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError("reading Parquet needs pyarrow: pip install fedrec[parquet]") from exc
    return pyarrow


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
        sep = "\t" if ".tsv" in [x.lower() for x in p.suffixes] else ","
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
        return _load_parquet_events(p, mapping, duplicates=duplicates, name=name)
    return _load_csv_events(
        p,
        mapping,
        weight_col=weight_col,
        timestamp_col=timestamp_col,
        sep=sep,
        encoding=encoding,
        duplicates=duplicates,
        name=name,
    )


def _load_csv_events(
    p: Path,
    mapping: dict[str, str],
    *,
    weight_col: str | None,
    timestamp_col: str | None,
    sep: str,
    encoding: str,
    duplicates: str,
    name: str,
) -> Interactions:
    """The CSV half of :func:`load_event_log` (``mapping``: role to column name)."""
    expected = f"a {_sep_adjective(sep)}-separated file with a header naming the columns"
    raw = _read_bytes(p, expected)
    header_bytes, body = _split_header(p, raw, expected)
    header = next(csv.reader([header_bytes.decode(encoding, "replace")], delimiter=sep))
    want = _header_columns(
        p,
        header,
        required={"user": mapping["user"], "item": mapping["item"]},
        optional={"weight": weight_col, "timestamp": timestamp_col},
        sep=sep,
        expected=f"columns {', '.join(map(repr, mapping.values()))}",
    )
    table = _read_fields(
        p,
        body,
        sep=sep,
        n_fields=len(header),
        want=want,
        first_line=2,
        describe=sep.join(header),
        encoding=encoding,
        quoting=True,
    )
    n = len(table)
    to_str = _bytes_str(encoding)
    users = _encode_ids(table.columns["user"], to_str)
    items = _encode_ids(table.columns["item"], to_str)
    weights = _to_float(table, "weight", f"weight ({weight_col})") if weight_col else np.ones(n)
    times = (
        _to_time(table, "timestamp", f"timestamp ({timestamp_col})", iso=True)
        if timestamp_col
        else np.arange(n, dtype=np.int64)
    )
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


def _load_parquet_events(
    path: Path, mapping: dict[str, str], *, duplicates: str, name: str
) -> Interactions:
    pa = _import_pyarrow()
    pc, pq = pa.compute, pa.parquet
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataFormatError(f"not a readable Parquet file ({exc})", path=path) from None
    found = list(schema.names)
    missing = [c for c in mapping.values() if c not in found]
    if missing:
        raise DataFormatError(
            f"missing column(s) {', '.join(map(repr, missing))}; found columns: "
            f"{', '.join(map(repr, found))}",
            path=path,
        )
    table = pq.read_table(path, columns=list(dict.fromkeys(mapping.values())))
    n = table.num_rows
    columns = {}
    for logical, col in mapping.items():
        arr = table.column(col).combine_chunks()
        if arr.null_count:
            first = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataFormatError(
                f"column {col!r} has {arr.null_count} missing values (first in row {first}); "
                "expected a value in every row",
                path=path,
            )
        columns[logical] = arr

    def ids(arr: Any) -> tuple[list[str], np.ndarray]:
        uniq = pc.unique(arr)
        pos = pc.index_in(arr, value_set=uniq).to_numpy(zero_copy_only=False)
        return [str(v) for v in uniq.to_pylist()], pos.astype(np.int64)

    weights = np.ones(n)
    if "weight" in columns:
        arr = columns["weight"]
        try:
            weights = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataFormatError(
                f"weight column {mapping['weight']!r} has type {arr.type}; expected numbers",
                path=path,
            ) from None
    times = np.arange(n, dtype=np.int64)
    if "timestamp" in columns:
        times = _arrow_times(pa, columns["timestamp"], path=path, col=mapping["timestamp"])
    return _assemble(
        name=name,
        path=path,
        table=None,
        user_ids=ids(columns["user"]),
        item_ids=ids(columns["item"]),
        weight=np.asarray(weights, np.float64),
        timestamp=times,
        catalog=None,
        duplicates=duplicates,
    )


def _arrow_times(pa: Any, arr: Any, *, path: Path, col: str) -> np.ndarray:
    """Unix seconds from an Arrow column of timestamps, dates, numbers or ISO strings."""
    pc, t = pa.compute, arr.type
    if pa.types.is_timestamp(t):
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        raw = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
        return np.floor_divide(raw, per_second)
    if pa.types.is_date(t):
        days = pc.cast(pc.cast(arr, pa.date32()), pa.int32()).to_numpy(zero_copy_only=False)
        return days.astype(np.int64) * 86_400
    if pa.types.is_integer(t):
        return arr.to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_floating(t):
        return np.floor(arr.to_numpy(zero_copy_only=False)).astype(np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        uniq = pc.unique(arr)
        pos = pc.index_in(arr, value_set=uniq).to_numpy(zero_copy_only=False)
        values = np.empty(len(uniq), np.int64)
        for k, text in enumerate(uniq.to_pylist()):
            try:
                values[k] = _py_time(text.strip(), iso=True)
            except (ValueError, OverflowError):
                raise DataFormatError(
                    f"timestamp ({col}) {text!r} is not a number or an ISO-8601 date/time",
                    path=path,
                ) from None
        return values[pos]
    raise DataFormatError(
        f"timestamp column {col!r} has type {t}; expected timestamps, dates, numbers or "
        "ISO-8601 strings",
        path=path,
    )


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


def event_log_columns(path: str | Path, *, sep: str | None = None) -> list[str]:
    """The column names of an event log (its CSV header, or its Parquet schema)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file; expected a CSV or Parquet event log")
    if p.suffix.lower() in (".parquet", ".pq"):
        pq = _import_pyarrow().parquet
        try:
            return list(pq.read_schema(p).names)
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise DataFormatError(f"not a readable Parquet file ({exc})", path=p) from None
    raw = _read_bytes(p, "a CSV file with a header line")
    header = raw[: raw.index(b"\n")].decode("utf-8", "replace")
    delimiter = sep or ("\t" if ".tsv" in p.suffixes else ",")
    return next(csv.reader([header], delimiter=delimiter))
