"""Reading and checking the columns of data files (pyarrow's CSV and Parquet readers).

The loaders of :mod:`fedrec.common.data.loaders` keep only the mapping of a format's columns
to users, items, weights and times; this module reads them and checks every value:

* :func:`read_delimited` reads the wanted columns of a delimited text file (with or without a
  header) with pyarrow's CSV reader, as raw bytes, remembering which line each row came from;
  :func:`read_parquet` reads the wanted columns of a Parquet file.
* :func:`ids`, :func:`floats` and :func:`times` turn a column into external ids, finite
  numbers or unix seconds, raising :class:`DataFormatError` at the first value that is not one,
  naming the file, the line (or the Parquet row) and what was expected.

Every message is one line of bounded length: a value is shown by its first characters and its
size, never in full.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .schema import DataFormatError

__all__ = [
    "Table",
    "read_bytes",
    "read_delimited",
    "read_parquet",
    "header_line",
    "require_rows",
    "ids",
    "int_ids",
    "floats",
    "times",
    "show",
    "field_count_error",
    "sep_adjective",
    "sep_hint",
    "import_pyarrow",
    "MAX_ID_CHARS",
    "MAX_LINE_BYTES",
]

#: An id longer than this is refused (ids are keys of the item table, saved with the model).
MAX_ID_CHARS = 4096
#: pyarrow reads a file in blocks of this size (a longer line gets a block of its own size)...
_BLOCK_BYTES = 1 << 24
#: ... up to this: a single line longer than this is refused.
MAX_LINE_BYTES = 1 << 26
#: A weight must be a float32 (the model's precision): beyond it, it would become infinite.
MAX_WEIGHT = float(np.finfo(np.float32).max)
#: Unix seconds (or any clock) must lie within this magnitude (int64 with room to spare).
MAX_TIME = 2**62
#: Cell values that stand for "no value" (compared case-insensitively): never an id.
MISSING = ("nan", "null", "none", "na", "n/a", "<na>", "nat", "-nan")

_SEP_CANDIDATES = ("\t", ",", ";", "|", "::", " ")
_NOT_SPACE = re.compile(rb"\S")
_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_ZONED = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9:.]+(Z|[+-][0-9]{2}:?[0-9]{2})$"


def import_pyarrow(*, parquet: bool = False) -> Any:
    """The pyarrow module with its csv and compute parts (and ``parquet``: a fedrec dependency)."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv

        if parquet:
            import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise ImportError(
            "reading data files needs pyarrow (a dependency of fedrec): pip install pyarrow"
        ) from exc
    return pyarrow


# --------------------------------------------------------------------------------------------
# Messages


def show(value: object, limit: int = 40) -> str:
    """``value`` for a message: its repr, cut to ``limit`` characters with its full length."""
    text = value if isinstance(value, str | bytes) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def sep_adjective(sep: str) -> str:
    """``"tab"``, ``"comma"``, ... for a separator (its repr otherwise)."""
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}.get(sep, repr(sep))


def sep_hint(line: str, sep: str, n_fields: int) -> str:
    """Return a ``; is the separator X?`` hint if another separator splits ``line`` better."""
    line = line[:10_000]
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


def field_count_error(
    path: Path, line_no: int | None, line: str, *, sep: str, n_fields: int, describe: str
) -> DataFormatError:
    """``expected 4 tab-separated fields (user, item, ...), found 1 in '...'`` at a line."""
    expected = f"expected {n_fields} {sep_adjective(sep)}-separated fields ({describe})"
    if not line.strip():
        return DataFormatError(f"empty line; {expected}", path=path, line=line_no)
    found = len(line.split(sep))
    return DataFormatError(
        f"{expected}, found {found} in {show(line, 60)}{sep_hint(line, sep, n_fields)}",
        path=path,
        line=line_no,
    )


# --------------------------------------------------------------------------------------------
# Raw bytes


def read_bytes(path: Path, expected: str) -> bytes:
    """The file's bytes: gunzipped, without a BOM, Unix line ends, one final newline.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: a truncated or corrupt gzip stream; NUL bytes (a binary file); an
            empty file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}")
    raw = path.read_bytes()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataFormatError(
                f"the gzip stream is truncated or corrupt ({type(exc).__name__}: "
                f"{str(exc)[:80]}); expected {expected}, compressed whole",
                path=path,
            ) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataFormatError(
            "contains NUL bytes: a binary file, not text (is it compressed, or Parquet?); "
            f"expected {expected}",
            path=path,
            line=raw.count(b"\n", 0, nul) + 1,
        )
    if not raw or raw.isspace():
        raise DataFormatError(f"file is empty; expected {expected}", path=path)
    if raw.endswith(b"\n\n"):
        return raw.rstrip(b"\n") + b"\n"
    return raw if raw.endswith(b"\n") else raw + b"\n"  # no copy of a well-formed file


def decode(raw: bytes, encoding: str, path: Path, *, first_line: int = 1) -> str:
    """``raw`` as text; a byte that is not ``encoding`` is an error naming its line."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        bad = raw[exc.start : exc.start + 4]
        raise DataFormatError(
            f"byte(s) {bad!r} are not valid {encoding} text; save the file as UTF-8 (or "
            "pass its encoding)",
            path=path,
            line=line,
        ) from None
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r} (reading {path})") from None


def header_line(path: Path, raw: bytes, expected: str, *, sep: str) -> tuple[list[str], int]:
    """The header's column names (CSV quoting understood) and where the data lines start.

    Call :func:`require_rows` once the names are checked: a header alone is an error.
    """
    nl = raw.index(b"\n")
    text = decode(raw[:nl], "utf-8", path)
    if len(sep) == 1:
        names = next(csv.reader([text], delimiter=sep))
    else:
        names = text.split(sep)
    return [n.strip() for n in names], nl + 1


def require_rows(path: Path, raw: bytes, start: int, expected: str) -> None:
    """A header and nothing after it is an error (checked after the header's columns)."""
    if not _NOT_SPACE.search(raw, start):  # (no copy of the file)
        raise DataFormatError(
            f"has a header but no data rows; expected {expected}", path=path, line=2
        )


# --------------------------------------------------------------------------------------------
# Tables: the wanted columns of a file, and where each row came from


@dataclass
class Table:
    """Wanted columns of a data file (pyarrow arrays), and where each row came from.

    ``first_line`` is the 1-based line of row 0 of a text file (``None``: a Parquet file, whose
    rows are named by number); ``raw[start:]`` the text it was read from, to find the line of
    a row when quoted values span lines.
    """

    path: Path
    columns: dict[str, Any]
    n_rows: int
    first_line: int | None = 1
    raw: bytes = b""
    start: int = 0
    quoting: bool = False
    sep: str = ","
    _lines: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.n_rows

    def line(self, row: int) -> int | None:
        """The 1-based line of data row ``row`` (``None`` for Parquet)."""
        if self.first_line is None:
            return None
        if self._lines is None:
            if self.raw.count(b"\n", self.start) == self.n_rows:
                return self.first_line + int(row)
            body = self.raw[self.start :]
            self._lines = _row_lines(body, self.sep, self.quoting, self.first_line)
        return int(self._lines[row])

    def error(self, row: int | None, message: str) -> DataFormatError:
        """A :class:`DataFormatError` at data row ``row`` (line of a text file, row of Parquet)."""
        if row is None:
            return DataFormatError(message, path=self.path)
        if self.first_line is None:
            return DataFormatError(f"row {int(row) + 1}: {message}", path=self.path)
        return DataFormatError(message, path=self.path, line=self.line(row))


#: A quoted value spanning more lines than this is taken for a missing closing quote.
MAX_VALUE_LINES = 1000


@contextmanager
def _field_limit(size: int) -> Iterator[None]:
    """Python's csv refuses fields above 128 KiB by default: allow the whole text here."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, size + 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _row_lines(body: bytes, sep: str, quoting: bool, first_line: int) -> np.ndarray:
    """The first line of every row when quoted values contain line breaks (Python's csv)."""
    text = body.decode("utf-8", "replace")
    reader = csv.reader(
        io.StringIO(text), delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
    )
    starts, line = [], first_line
    with _field_limit(len(text)):
        for _ in reader:
            starts.append(line)
            line = first_line + reader.line_num
    return np.asarray(starts, dtype=np.int64)


def _check_quotes(path: Path, body: bytes, sep: str, first_line: int) -> np.ndarray:
    """Row start lines of a file whose quoted values span lines; an unclosed quote is an error.

    A quote left open swallows the lines after it into one value: silently, when it is in the
    last column. Python's csv (strict) says so at the end of the file; a value spanning more
    than :data:`MAX_VALUE_LINES` lines is taken for the same mistake.
    """
    text = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", errors="replace", newline="")
    reader = csv.reader(text, delimiter=sep, strict=True)
    starts, line = [], first_line
    try:
        with _field_limit(len(body)):
            for _ in reader:
                starts.append(line)
                line = first_line + reader.line_num
    except csv.Error as exc:
        if "end of data" in str(exc):
            raise DataFormatError(
                "a quoted value opened on this line is never closed (it runs to the end of "
                "the file); add the closing quote",
                path=path,
                line=line,
            ) from None
        return _row_lines(body, sep, True, first_line)  # pyarrow accepted what strict did not
    lines = np.asarray(starts + [first_line + body.count(b"\n")], dtype=np.int64)
    longest = int(np.argmax(np.diff(lines))) if len(starts) else 0
    span = int(lines[longest + 1] - lines[longest]) if len(starts) else 0
    if span > MAX_VALUE_LINES:
        raise DataFormatError(
            f"a quoted value opened on this line runs over {span:,} lines: is a closing "
            "quote missing?",
            path=path,
            line=int(lines[longest]),
        )
    return lines[:-1]


@dataclass
class _BadRow:
    """The first row pyarrow found with the wrong number of fields."""

    expected: int = 0
    actual: int = 0
    number: int | None = None
    text: str = ""

    def handle(self, row: Any) -> str:
        """The ``invalid_row_handler`` of pyarrow: remember the first bad row, stop reading."""
        if not self.expected:
            self.expected, self.actual = row.expected_columns, row.actual_columns
            self.number, self.text = row.number, row.text[:10_000]
        return "error"


def read_delimited(
    path: Path,
    raw: bytes,
    start: int = 0,
    *,
    sep: str,
    n_fields: int,
    want: Mapping[str, int],
    first_line: int,
    describe: str,
    quoting: bool,
) -> Table:
    """Read the ``want`` columns (logical name -> field position) of ``raw[start:]`` as bytes.

    Args:
        path: the file, for messages.
        raw: the file as :func:`read_bytes` gives it (UTF-8 or ASCII-compatible bytes).
        start: where the data lines start (after any header).
        sep: the field separator (one character, or a longer one such as ``::``).
        n_fields: how many fields every line must have.
        want: the columns to keep.
        first_line: the 1-based line of the line at ``start``.
        describe: the field names, for messages.
        quoting: whether ``"..."`` quotes a field (CSV), or is a plain character.

    Raises:
        DataFormatError: an empty line, a line with the wrong number of fields, an unclosed
            quote, a line longer than :data:`MAX_LINE_BYTES`.
    """
    if len(sep) > 1:
        if raw.find(b"\x1f", start) >= 0:
            row = raw.count(b"\n", start, raw.index(b"\x1f", start))
            raise DataFormatError(
                "unexpected control character \\x1f", path=path, line=first_line + row
            )
        raw, start, split = raw[start:].replace(sep.encode(), b"\x1f"), 0, "\x1f"
    else:
        split = sep
    blank = raw.find(b"\n\n", start)
    if raw.startswith(b"\n", start) or blank >= 0:
        at = 0 if raw.startswith(b"\n", start) else raw.count(b"\n", start, blank + 1)
        raise field_count_error(
            path, first_line + at, "", sep=sep, n_fields=n_fields, describe=describe
        )
    columns, n_rows = _arrow_read(
        path, raw, start, split=split, n_fields=n_fields, want=want, quoting=quoting,
        first_line=first_line, sep=sep, describe=describe,
    )  # fmt: skip
    table = Table(path, columns, n_rows, first_line, raw, start, quoting, split)
    if quoting and (n_rows != raw.count(b"\n", start) or raw.count(b'"', start) % 2):
        # values span lines, or a quote is unbalanced (a quote left open at the end)
        table._lines = _check_quotes(path, raw[start:], split, first_line)
    return table


def _arrow_read(
    path: Path,
    raw: bytes,
    start: int,
    *,
    split: str,
    n_fields: int,
    want: Mapping[str, int],
    quoting: bool,
    first_line: int,
    sep: str,
    describe: str,
) -> tuple[dict[str, Any], int]:
    pa = import_pyarrow()
    names = [f"f{i}" for i in range(n_fields)]
    wanted = sorted(set(want.values()))
    data = pa.py_buffer(raw).slice(start)  # no copy of the file
    size = len(raw) - start
    threads, block = True, min(size + 1, _BLOCK_BYTES)
    while True:
        bad = _BadRow()
        try:
            table = pa.csv.read_csv(
                pa.BufferReader(data),
                read_options=pa.csv.ReadOptions(
                    column_names=names, use_threads=threads, block_size=int(block)
                ),
                parse_options=pa.csv.ParseOptions(
                    delimiter=split,
                    quote_char='"' if quoting else False,
                    newlines_in_values=quoting,
                    ignore_empty_lines=False,
                    invalid_row_handler=bad.handle,
                ),
                convert_options=pa.csv.ConvertOptions(
                    column_types={names[j]: pa.binary() for j in wanted},
                    include_columns=[names[j] for j in wanted],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            if bad.expected and bad.number is None and threads:
                threads = False  # without threads, pyarrow says which line is bad
                continue
            if "straddl" in str(exc) and block < min(size + 1, MAX_LINE_BYTES):
                block = min(size + 1, MAX_LINE_BYTES)  # a line longer than a block
                continue
            raise _read_error(path, exc, bad, first_line, sep, describe) from None
        return {k: table.column(names[j]).combine_chunks() for k, j in want.items()}, len(table)


def _read_error(
    path: Path, exc: Exception, bad: _BadRow, first_line: int, sep: str, describe: str
) -> DataFormatError:
    if bad.expected:
        line = None if bad.number is None else first_line + bad.number - 1
        text = bad.text.replace("\x1f", sep)
        return field_count_error(
            path, line, text, sep=sep, n_fields=bad.expected, describe=describe
        )
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "straddling" in message or "block" in message:
        message = f"a line is longer than {MAX_LINE_BYTES >> 20} MB"
    return DataFormatError(f"cannot be read as {describe}: {message[:160]}", path=path)


def read_parquet(path: Path, columns: Mapping[str, str]) -> Table:
    """The ``columns`` (logical name -> column name) of a Parquet file.

    Raises:
        DataFormatError: not a readable Parquet file, a missing column, no rows.
    """
    pa = import_pyarrow(parquet=True)
    try:
        schema = pa.parquet.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataFormatError(
            f"not a readable Parquet file ({show(str(exc), 120)})", path=path
        ) from None
    found = list(schema.names)
    missing = [c for c in columns.values() if c not in found]
    if missing:
        raise DataFormatError(
            f"missing column(s) {', '.join(map(repr, missing))}; found columns: "
            f"{', '.join(map(repr, found))}",
            path=path,
        )
    try:
        table = pa.parquet.read_table(path, columns=list(dict.fromkeys(columns.values())))
    except Exception as exc:  # noqa: BLE001 - a damaged data page, an unsupported encoding
        raise DataFormatError(f"cannot read its data ({show(str(exc), 120)})", path=path) from None
    if table.num_rows == 0:
        raise DataFormatError("has no rows; expected at least one event", path=path)
    cols = {k: table.column(c).combine_chunks() for k, c in columns.items()}
    return Table(path, cols, table.num_rows, first_line=None)


# --------------------------------------------------------------------------------------------
# Columns -> values


def _first_failing(arr: Any, works: Callable[[Any], object]) -> int:
    """The first row of ``arr`` on which ``works`` (a vectorised conversion) raises."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            works(arr.slice(lo, mid - lo))
        except Exception:  # noqa: BLE001 - any failure of the conversion
            hi = mid
        else:
            lo = mid
    return lo


def _first(mask: Any) -> int | None:
    """The first row where a boolean Arrow array is true (``None``: nowhere)."""
    pc = import_pyarrow().compute
    if not pc.any(mask).as_py():
        return None
    return int(pc.index(mask, True).as_py())


def _cell(arr: Any, row: int) -> str:
    value = arr[int(row)].as_py()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _not_a(table: Table, row: int, what: str, cell: str, expected: str) -> DataFormatError:
    if not cell:
        return table.error(row, f"{what} is empty; expected {expected}")
    return table.error(row, f"{what} {show(cell)} is not {expected}")


def _is_binary(pa: Any, kind: Any) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _is_text(pa: Any, kind: Any) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_binary(pa, kind)


def _text(table: Table, arr: Any, what: str) -> Any:
    """A text column as trimmed UTF-8 strings (raw bytes of a text file, or Arrow strings)."""
    pa = import_pyarrow()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if _is_binary(pa, arr.type):
        try:
            arr = arr.cast(pa.string())
        except pa.ArrowInvalid:
            row = _first_failing(arr, lambda a: a.cast(pa.string()))
            raise table.error(
                row,
                f"{what} {show(arr[row].as_py())} is not valid UTF-8 text; save the file as "
                "UTF-8 (or pass its encoding)",
            ) from None
    return pa.compute.utf8_trim_whitespace(arr)


def _no_nulls(table: Table, arr: Any, what: str) -> None:
    if arr.null_count:
        row = _first(arr.is_null())
        raise table.error(
            row, f"{what} is missing ({arr.null_count:,} rows have none); every row needs one"
        )


def ids(table: Table, column: str, what: str) -> tuple[list[str], np.ndarray]:
    """The column's distinct ids (as strings, stripped) and each row's position among them.

    Integers and integral floats become decimal strings; text is kept as written (without
    surrounding spaces). An empty id, a missing value (a null, NaN or a word such as ``NULL``),
    an id with control characters or longer than :data:`MAX_ID_CHARS`, text that is not
    UTF-8 and any other type (lists, structs, booleans, dates) are errors.
    """
    pa = import_pyarrow()
    pc = pa.compute
    arr = table.columns[column]
    _no_nulls(table, arr, what)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = arr.type
    if pa.types.is_unsigned_integer(kind) and len(arr) and pc.max(arr).as_py() >= 2**63:
        arr, kind = pc.cast(arr, pa.string()), pa.string()
    if pa.types.is_integer(kind):
        return _encode_ints(arr.to_numpy(zero_copy_only=False).astype(np.int64))
    if pa.types.is_floating(kind):
        return _encode_ints(_integral(table, arr.to_numpy(zero_copy_only=False), what))
    if not _is_text(pa, kind):
        raise table.error(None, f"{what} column has type {kind}; expected integers or strings")
    text = _text(table, arr, what)
    _check_id_text(table, text, what)
    uniq = pc.unique(text)
    pos = pc.index_in(text, value_set=uniq).to_numpy(zero_copy_only=False)
    return uniq.to_pylist(), pos.astype(np.int64)


def _check_id_text(table: Table, text: Any, what: str) -> None:
    pa = import_pyarrow()
    pc = pa.compute
    row = _first(pc.equal(pc.utf8_length(text), 0))
    if row is not None:
        raise table.error(row, f"{what} is empty; every row needs one")
    row = _first(pc.is_in(pc.utf8_lower(text), value_set=pa.array(MISSING)))
    if row is not None:
        raise table.error(
            row, f"{what} {_cell(text, row)!r} stands for a missing value; every row needs one"
        )
    row = _first(pc.greater(pc.utf8_length(text), MAX_ID_CHARS))
    if row is not None:
        raise table.error(
            row, f"{what} {show(_cell(text, row))} is longer than {MAX_ID_CHARS:,} characters"
        )
    row = _first(pc.match_substring_regex(text, r"[\x00-\x1f\x7f]"))
    if row is not None:
        raise table.error(row, f"{what} {show(_cell(text, row))} contains a control character")


def _integral(table: Table, values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(values)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise table.error(
            row, f"{what} is {float(values[row])!r}, a missing value; every row needs one"
        )
    bad = (values != np.round(values)) | (np.abs(values) >= 2**63)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise table.error(row, f"{what} {float(values[row])!r} is not an id (a whole number)")
    return values.astype(np.int64)


def int_ids(table: Table, column: str, what: str) -> tuple[list[str], np.ndarray]:
    """Ids that must be decimal integers (MovieLens); written back as plain decimals."""
    text = _text(table, table.columns[column], what)
    return _encode_ints(_parse(table, text, what, pattern=_INT, expected="an integer"))


def _encode_ints(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct integer ids (as decimal strings) and each row's position among them."""
    if len(values):
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= max(8 * len(values), 1 << 20):
            present = np.zeros(hi + 1, bool)
            present[values] = True
            uniq = np.flatnonzero(present)
            lookup = np.cumsum(present) - 1
            return [str(int(v)) for v in uniq], lookup[values]
    uniq, inverse = np.unique(values, return_inverse=True)
    return [str(int(v)) for v in uniq], inverse.reshape(-1).astype(np.int64)


def _parse(
    table: Table,
    text: Any,
    what: str,
    *,
    pattern: str,
    expected: str,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Text cells that must all match ``pattern`` (``_INT``: int64, else float64).

    ``rows`` maps positions in ``text`` to rows of the table (when ``text`` is a subset).
    """
    pa = import_pyarrow()
    pc = pa.compute
    at = (lambda i: i) if rows is None else (lambda i: int(rows[i]))
    bad = _first(pc.invert(pc.match_substring_regex(text, pattern)))
    if bad is not None:
        raise _not_a(table, at(bad), what, _cell(text, bad), expected)
    target = pa.int64() if pattern == _INT else pa.float64()
    try:
        return pc.cast(text, target).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = _first_failing(text, lambda a: pc.cast(a, target))
        raise table.error(
            at(bad), f"{what} {show(_cell(text, bad))} is out of range; expected {expected}"
        ) from None


def floats(table: Table, column: str, what: str) -> np.ndarray:
    """Finite numbers (float64) that fit a float32, from text or any numeric Parquet type."""
    pa = import_pyarrow()
    arr = table.columns[column]
    _no_nulls(table, arr, what)
    kind = arr.type
    if _is_text(pa, kind):
        text = _text(table, arr, what)
        values = _parse(table, text, what, pattern=_FLOAT, expected="a finite number")
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        raise table.error(None, f"{what} column has type {kind}; expected numbers")
    bad = ~np.isfinite(values) | (np.abs(values) > MAX_WEIGHT)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise table.error(
            row, f"{what} {values[row]:g} is not a finite number of magnitude at most 3.4e38"
        )
    return values


def times(table: Table, column: str, what: str, *, iso: bool) -> np.ndarray:
    """Whole unix seconds (int64, floored) from numbers, ISO-8601 text or Arrow times.

    Numbers are seconds (any clock will do: only the order matters); ISO-8601 text is read
    when ``iso`` (naive times as UTC); Parquet timestamps and dates are converted.
    """
    pa = import_pyarrow()
    arr = table.columns[column]
    _no_nulls(table, arr, what)
    kind = arr.type
    if _is_text(pa, kind):
        return _text_times(table, _text(table, arr, what), what, iso=iso)
    if pa.types.is_timestamp(kind):
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[kind.unit]
        return np.floor_divide(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), per_second)
    if pa.types.is_date(kind):
        days = arr.cast(pa.date32()).cast(pa.int32()).to_numpy(zero_copy_only=False)
        return days.astype(np.int64) * 86_400
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _seconds(table, arr.to_numpy(zero_copy_only=False), what)
    raise table.error(
        None,
        f"{what} column has type {kind}; expected timestamps, dates, numbers or ISO-8601 text",
    )


def _seconds(
    table: Table, values: np.ndarray, what: str, rows: np.ndarray | None = None
) -> np.ndarray:
    """Numbers as floored int64 seconds; NaN, infinities and magnitudes of 2^62 are errors."""
    if values.dtype.kind in "iu":
        bad = np.abs(values.astype(np.float64)) >= MAX_TIME
    else:
        bad = ~np.isfinite(values) | (np.abs(values) >= MAX_TIME)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        row = k if rows is None else int(rows[k])
        raise table.error(
            row, f"{what} {values[k].item()!r} is not a finite time of magnitude below 2^62"
        )
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    return np.floor(values).astype(np.int64)


def _text_times(table: Table, text: Any, what: str, *, iso: bool) -> np.ndarray:
    pa = import_pyarrow()
    pc = pa.compute
    expected = "a number or an ISO-8601 date/time" if iso else "a number (unix seconds)"
    if pc.all(pc.match_substring_regex(text, _INT)).as_py():  # the common case: whole seconds
        try:
            values = pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # beyond int64: the general path says so
            pass
        else:
            return _seconds(table, values, what)
    out = np.zeros(len(text), np.int64)
    numeric = pc.match_substring_regex(text, _FLOAT).to_numpy(zero_copy_only=False)
    if numeric.any():
        rows = np.flatnonzero(numeric)
        part = pc.filter(text, pa.array(numeric))
        whole = pc.all(pc.match_substring_regex(part, _INT)).as_py()
        pattern = _INT if whole else _FLOAT
        try:
            values = _parse(table, part, what, pattern=pattern, expected=expected, rows=rows)
        except DataFormatError:
            if not whole:
                raise
            values = _parse(table, part, what, pattern=_FLOAT, expected=expected, rows=rows)
        out[rows] = _seconds(table, values, what, rows)
    rest = np.flatnonzero(~numeric)
    if len(rest):
        if not iso:
            raise _not_a(table, int(rest[0]), what, _cell(text, int(rest[0])), expected)
        out[rest] = _iso_seconds(table, text.take(pa.array(rest)), rest, what, expected)
    return out


def _iso_seconds(table: Table, text: Any, rows: np.ndarray, what: str, expected: str) -> np.ndarray:
    """ISO-8601 text (``Z``/``±HH:MM`` offsets, or naive as UTC) as floored unix seconds."""
    pa = import_pyarrow()
    pc = pa.compute
    zoned = pc.match_substring_regex(text, _ZONED).to_numpy(zero_copy_only=False)
    out = np.zeros(len(text), np.int64)
    for mask, kind in ((zoned, pa.timestamp("us", tz="UTC")), (~zoned, pa.timestamp("us"))):
        if not mask.any():
            continue
        part = pc.filter(text, pa.array(mask))
        try:
            micros = pc.cast(pc.cast(part, kind), pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = _first_failing(part, lambda a, kind=kind: pc.cast(a, kind))
            row = int(rows[np.flatnonzero(mask)[bad]])
            raise _not_a(table, row, what, _cell(part, bad), expected) from None
        out[mask] = np.floor_divide(micros, 1_000_000)
    return out
