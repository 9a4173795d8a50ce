"""Item metadata files: GroupLens ``u.item``, ``movies.dat``, ``movies.csv``; RecBole ``.item``.

Each reader returns a :class:`Catalog` (ids, titles, genres, extra fields, keyed by external
item id) that :func:`align_catalog` lays out in an item map's order. Metadata is read line by
line (the files are small); text must be valid in the file's encoding, and every malformed line
is a :class:`DataFormatError` naming the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._tables import decode, field_count_error, read_bytes, sep_hint, show
from .schema import DataFormatError, IdMap, ItemMetadata

__all__ = [
    "ML100K_GENRES",
    "Catalog",
    "align_catalog",
    "read_u_item",
    "read_recbole_items",
    "read_movies_dat",
    "read_movies_csv",
    "recbole_header",
    "header_columns",
]

logger = logging.getLogger("fedrec.data")


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
_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")


@dataclass
class Catalog:
    """Item metadata read from a metadata file, keyed by external item id."""

    path: Path
    ids: list[str]
    titles: list[str | None] | None
    genres: list[tuple[str, ...]] | None
    extra: dict[str, list[object]]


def align_catalog(catalog: Catalog, item_map: IdMap) -> ItemMetadata:
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


def _dedupe_catalog(catalog: Catalog) -> Catalog:
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

    return Catalog(
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
        raise DataFormatError(
            f"{what} {show(text)} is not an integer", path=path, line=line
        ) from None


def _text_lines(path: Path, encoding: str, expected: str) -> list[str]:
    return decode(read_bytes(path, expected), encoding, path).split("\n")[:-1]


# --------------------------------------------------------------------------------------------
# Metadata files.


def read_u_item(path: Path) -> Catalog:
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
            raise field_count_error(
                path, line_no, line, sep="|", n_fields=n_fields, describe=describe
            )
        ids.append(_numeric_id(parts[0], path=path, line=line_no, what="movie id"))
        titles.append(parts[1])
        flags = parts[5:]
        for flag in flags:
            if flag not in ("0", "1"):
                raise DataFormatError(
                    f"genre flag {show(flag)} is not 0 or 1", path=path, line=line_no
                )
        genres.append(tuple(g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"))
        release.append(parts[2] or None)
        video.append(parts[3] or None)
        urls.append(parts[4] or None)
        year = parts[2][-4:]
        years.append(int(year) if year.isdigit() else _year_of_title(parts[1]))
    return _dedupe_catalog(
        Catalog(
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


def recbole_header(
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
        hint = sep_hint(header_line, "\t", len(required)) if len(fields) == 1 else ""
        raise DataFormatError(
            f"missing field(s) {', '.join(map(repr, missing))}; expected a RecBole atomic "
            f"header of tab-separated 'name:type' fields with {', '.join(required)}; "
            f"found fields: {', '.join(map(show, names[:30]))}{hint}",
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
                    f"field {field!r} value {show(text)} is not a list of numbers",
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
                f"field {field!r} value {show(text)} is not a number", path=path, line=line
            ) from None
    return text


def read_recbole_items(path: Path, *, numeric_ids: bool = False) -> Catalog:
    """Read a RecBole ``.item`` atomic file: ``item_id:token`` plus any other fields."""
    lines = _text_lines(path, "utf-8", "a RecBole .item file with an item_id:token header")
    fields = recbole_header(path, lines[0], required=("item_id",))
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
            raise field_count_error(
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
        Catalog(
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


def read_movies_dat(path: Path) -> Catalog:
    """ml-1m ``movies.dat``: ``MovieID::Title::Genres`` (latin-1)."""
    describe = "MovieID, Title, Genres"
    ids: list[str] = []
    titles: list[str | None] = []
    genres: list[tuple[str, ...]] = []
    years: list[object] = []
    for k, line in enumerate(_text_lines(path, "latin-1", f"'::'-separated lines: {describe}")):
        parts = line.split("::")
        if len(parts) < 3:
            raise field_count_error(path, k + 1, line, sep="::", n_fields=3, describe=describe)
        ids.append(_numeric_id(parts[0], path=path, line=k + 1, what="movie id"))
        title = "::".join(parts[1:-1])
        titles.append(title)
        genres.append(_split_genres(parts[-1]))
        years.append(_year_of_title(title))
    return _dedupe_catalog(
        Catalog(path=path, ids=ids, titles=titles, genres=genres, extra={"year": years})
    )


def read_movies_csv(path: Path) -> Catalog:
    """ml-latest ``movies.csv``: header ``movieId,title,genres``; quoted titles allowed."""
    expected = "a CSV file with header movieId,title,genres"
    text = decode(read_bytes(path, expected), "utf-8", path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    want = header_columns(
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
            raise field_count_error(
                path, line_no, raw, sep=",", n_fields=len(header), describe=",".join(header)
            )
        ids.append(_numeric_id(row[want["id"]], path=path, line=line_no, what="movieId"))
        title = row[want["title"]]
        titles.append(title)
        genres.append(_split_genres(row[want["genres"]]))
        years.append(_year_of_title(title))
        line_no = reader.line_num + 1
    return _dedupe_catalog(
        Catalog(path=path, ids=ids, titles=titles, genres=genres, extra={"year": years})
    )


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def header_columns(
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
            hint = sep_hint(header[0], sep, len(required))
        elif all(_looks_numeric(h) for h in header):
            hint = "; the first line looks like data: the file needs a header line"
        raise DataFormatError(
            f"missing column(s) {', '.join(map(show, missing))}; expected {expected}; "
            f"found columns: {', '.join(map(show, header[:30]))}{hint}",
            path=path,
            line=1,
        )
    want = {logical: positions[col] for logical, col in required.items()}
    for logical, col in optional.items():
        if col is not None:
            if col not in positions:
                found = ", ".join(map(show, header[:30]))
                raise DataFormatError(
                    f"missing column {show(col)}; found columns: {found}", path=path, line=1
                )
            want[logical] = positions[col]
    for col in {header[j] for j in want.values()}:
        if header.count(col) > 1:
            raise DataFormatError(
                f"column {show(col)} appears {header.count(col)} times in the header; "
                "which one is meant is ambiguous: rename the others",
                path=path,
                line=1,
            )
    return want
