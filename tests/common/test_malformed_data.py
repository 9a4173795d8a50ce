"""Every malformed data input tried: a clear error, or correct data; never a traceback.

One table of cases through the loaders (ml-100k, ml-1m, ml-latest, RecBole, CSV and Parquet
event logs) and the command line. A case expects either an error (a
:class:`DataFormatError`, or :class:`FileNotFoundError`, whose message names the file and, where
one is to blame, the line or the Parquet row, says what was expected, and is one line of
bounded length) or exactly the data the file holds. Any other exception fails the case, and
so does data that differs from what the file holds (silent corruption).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedrec.common.data.loaders import (
    load_event_log,
    load_ml1m,
    load_ml100k,
    load_ml_latest,
    load_recbole,
)
from fedrec.common.data.schema import DataFormatError

U_ITEM = "1|One (1994)|01-Jan-1994||http://x|" + "|".join("0" * 18 + "1") + "\n"
BIG = "x" * 1_000_000  # a 1 MB field


@dataclass
class Case:
    """One input: files to write, a loader, and what must come out."""

    id: str
    files: dict[str, bytes | str | Callable[[Path], None]]
    load: str  # ml-100k | ml-1m | ml-latest | recbole | events | cli
    error: str | None = None  # a needle of the one-line message (None: the data loads)
    line: int | None | str = "any"  # the line the error names ("any": not checked)
    data: list[tuple[str, str, float, int]] | None = None  # the exact rows, when it loads
    kwargs: dict[str, object] = field(default_factory=dict)
    exc: type[Exception] = DataFormatError


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def udata(*lines: str, **files) -> dict:
    return {"u.data": "".join(line + "\n" for line in lines), **files}


def latest(*lines: str, **files) -> dict:
    return {"ratings.csv": "userId,movieId,rating,timestamp\n" + "".join(x + "\n" for x in lines)}


def events(text: str | bytes, name: str = "log.csv") -> dict:
    return {name: text}


def parquet(**columns) -> dict:
    def write(path: Path) -> None:
        pq.write_table(pa.table(columns), path)

    return {"log.parquet": write}


EV = {"user_col": "u", "item_col": "i"}
EVW = {**EV, "weight_col": "w"}
EVT = {**EV, "timestamp_col": "t"}
OK1 = [("1", "2", 3.0, 100)]

CASES = [
    # ------------------------------------------------------------------ ml-100k (u.data)
    Case("100k comma separated", udata("1,2,3,100"), "ml-100k", "is the separator ','?", 1),
    Case("100k five fields", udata("1\t2\t3\t100", "1\t2\t3\t100\t9"), "ml-100k", "found 5", 2),
    Case("100k three fields", udata("1\t2\t3\t100", "2\t2\t3"), "ml-100k", "found 3", 2),
    Case(
        "100k user id abc", udata("abc\t2\t3\t100"), "ml-100k", "user id 'abc' is not an integer", 1
    ),
    Case(
        "100k rating good", udata("1\t2\tgood\t100"), "ml-100k", "rating 'good' is not a finite", 1
    ),
    Case("100k timestamp word", udata("1\t2\t3\tlast-week"), "ml-100k", "unix seconds", 1),
    Case("100k blank line", udata("1\t2\t3\t100", "", "2\t2\t3\t100"), "ml-100k", "empty line", 2),
    Case("100k blank first line", {"u.data": "\n1\t2\t3\t100\n"}, "ml-100k", "empty line", 1),
    Case("100k empty file", {"u.data": ""}, "ml-100k", "file is empty", None),
    Case("100k whitespace only", {"u.data": " \n\t\n"}, "ml-100k", "file is empty", None),
    Case("100k trailing blank lines", {"u.data": "1\t2\t3\t100\n\n\n"}, "ml-100k", data=OK1),
    Case("100k CRLF", {"u.data": "1\t2\t3\t100\r\n"}, "ml-100k", data=OK1),
    Case("100k no final newline", {"u.data": "1\t2\t3\t100"}, "ml-100k", data=OK1),
    Case("100k BOM", {"u.data": b"\xef\xbb\xbf1\t2\t3\t100\n"}, "ml-100k", data=OK1),
    Case("100k rating nan", udata("1\t2\tnan\t100"), "ml-100k", "'nan' is not a finite number", 1),
    Case("100k rating inf", udata("1\t2\tinf\t100"), "ml-100k", "'inf' is not a finite number", 1),
    Case("100k rating 1e300", udata("1\t2\t3\t1", "1\t3\t1e300\t1"), "ml-100k", "3.4e38", 2),
    Case("100k rating 1e400", udata("1\t2\t1e400\t100"), "ml-100k", "inf is not a finite", 1),
    Case("100k timestamp 1e300", udata("1\t2\t3\t1e300"), "ml-100k", "below 2^62", 1),
    Case("100k timestamp inf", udata("1\t2\t3\tinf"), "ml-100k", "'inf' is not a number", 1),
    Case("100k negative timestamp", udata("1\t2\t3\t-5"), "ml-100k", data=[("1", "2", 3.0, -5)]),
    Case("100k id overflow", udata("99999999999999999999\t2\t3\t1"), "ml-100k", "out of range", 1),
    Case("100k hex id", udata("0x10\t2\t3\t100"), "ml-100k", "'0x10' is not an integer", 1),
    Case("100k decimal id", udata("1.5\t2\t3\t100"), "ml-100k", "'1.5' is not an integer", 1),
    Case("100k empty id", udata("\t2\t3\t100"), "ml-100k", "user id is empty", 1),
    Case("100k spaced id", udata(" 1 \t2\t3\t100"), "ml-100k", data=OK1),
    Case(
        "100k zero-padded ids are one id",
        udata("007\t2\t3\t100", "7\t3\t4\t101"),
        "ml-100k",
        data=[("7", "2", 3.0, 100), ("7", "3", 4.0, 101)],
    ),
    Case("100k 1 MB rating", udata(f"1\t2\t{BIG}\t100"), "ml-100k", "(1,000,000 characters)", 1),
    Case("100k 1 MB line", udata("1\t2\t3\t100", BIG), "ml-100k", "found 1 in 'xxx", 2),
    Case("100k NUL byte", udata("1\t2\t3\t100", "2\t2\x00\t3\t1"), "ml-100k", "NUL bytes", 2),
    Case("100k latin-1 byte", {"u.data": b"1\t2\t4\xe9\t100\n"}, "ml-100k", "not valid UTF-8", 1),
    Case("100k quoted id", udata('"1"\t2\t3\t100'), "ml-100k", "'\"1\"' is not an integer", 1),
    Case("100k negative rating", udata("1\t2\t-1\t100"), "ml-100k", data=[("1", "2", -1.0, 100)]),
    Case(
        "100k duplicates policy error",
        udata("1\t2\t3\t100", "2\t2\t3\t100", "1\t2\t4\t101"),
        "ml-100k",
        "lines 1 and 3",
        kwargs={"duplicates": "error"},
    ),
    Case("100k no u.data", {"README": "x"}, "ml-100k", "u.data", exc=FileNotFoundError),
    Case(
        "100k u.item field count",
        udata("1\t1\t3\t100", **{"u.item": U_ITEM + "2|Two\n"}),
        "ml-100k",
        "expected 24 '|'-separated fields",
        2,
    ),
    Case(
        "100k u.item genre flag 2",
        udata("1\t1\t3\t100", **{"u.item": U_ITEM.replace("|1\n", "|2\n")}),
        "ml-100k",
        "genre flag '2' is not 0 or 1",
        1,
    ),
    Case(
        "100k u.item movie id",
        udata("1\t1\t3\t100", **{"u.item": "x" + U_ITEM[1:]}),
        "ml-100k",
        "movie id 'x' is not an integer",
        1,
    ),
    Case(
        "100k u.item repeated id keeps the first",
        udata("1\t1\t3\t100", **{"u.item": U_ITEM + U_ITEM}),
        "ml-100k",
        data=[("1", "1", 3.0, 100)],
    ),
    # ------------------------------------------------------------------ ml-1m (ratings.dat)
    Case("1m tabs", {"ratings.dat": "1\t2\t3\t100\n"}, "ml-1m", "is the separator '\\t'?", 1),
    Case("1m single colons", {"ratings.dat": "1:2:3:100\n"}, "ml-1m", "found 1", 1),
    Case("1m five fields", {"ratings.dat": "1::2::3::100::5\n"}, "ml-1m", "found 5", 1),
    Case("1m unit separator", {"ratings.dat": "1::2::3::1\n1\x1f::2::3::1\n"}, "ml-1m", "\\x1f", 2),
    Case("1m ok", {"ratings.dat": "1::2::3::100\n"}, "ml-1m", data=OK1),
    Case(
        "1m movies.dat short line",
        {"ratings.dat": "1::2::3::100\n", "movies.dat": "2::Two\n"},
        "ml-1m",
        "expected 3 '::'-separated fields",
        1,
    ),
    Case(
        "1m movies.dat id",
        {"ratings.dat": "1::2::3::100\n", "movies.dat": "two::Two (1990)::Drama\n"},
        "ml-1m",
        "movie id 'two' is not an integer",
        1,
    ),
    Case(
        "1m latin-1 titles",
        {"ratings.dat": "1::2::3::100\n", "movies.dat": b"2::Caf\xe9 (1990)::Drama\n"},
        "ml-1m",
        data=OK1,
    ),
    # ------------------------------------------------------------------ ml-latest (ratings.csv)
    Case(
        "latest missing column",
        {"ratings.csv": "userId,itemId,rating,timestamp\n1,2,3,100\n"},
        "ml-latest",
        "missing column(s) 'movieId'",
        1,
    ),
    Case("latest header only", latest(), "ml-latest", "no data rows", 2),
    Case("latest no header", {"ratings.csv": "1,2,3,100\n"}, "ml-latest", "needs a header", 1),
    Case("latest quoted", latest('"1","2","3.5","100"'), "ml-latest", data=[("1", "2", 3.5, 100)]),
    Case(
        "latest unclosed quote", latest("1,2,3,100", '2,2,3,"100'), "ml-latest", "never closed", 3
    ),
    Case(
        "latest repeated column",
        {"ratings.csv": "userId,movieId,rating,rating,timestamp\n1,2,3,4,100\n"},
        "ml-latest",
        "'rating' appears 2 times",
        1,
    ),
    Case(
        "latest extra column",
        {"ratings.csv": "userId,movieId,rating,timestamp,tag\n1,2,3,100,fun\n"},
        "ml-latest",
        data=OK1,
    ),
    Case("latest short row", latest("1,2,3,100", "2,2,3"), "ml-latest", "found 3", 3),
    Case(
        "latest movies.csv not UTF-8",
        {**latest("1,2,3,100"), "movies.csv": b"movieId,title,genres\n2,Caf\xe9,Drama\n"},
        "ml-latest",
        "not valid utf-8",
        2,
    ),
    Case(
        "latest semicolons",
        {"ratings.csv": "userId;movieId;rating;timestamp\n1;2;3;100\n"},
        "ml-latest",
        "is the separator ';'?",
        1,
    ),
    Case(
        "latest BOM header",
        {"ratings.csv": b"\xef\xbb\xbfuserId,movieId,rating,timestamp\n1,2,3,100\n"},
        "ml-latest",
        data=OK1,
    ),
    Case(
        "latest multi-line quoted field, error after it",
        {"ratings.csv": 'userId,movieId,rating,timestamp,c\n1,2,3,100,"a\nb"\n2,2,x,100,c\n'},
        "ml-latest",
        "rating 'x' is not a finite number",
        4,
    ),
    # ------------------------------------------------------------------ RecBole
    Case(
        "recbole missing field",
        {"d.inter": "user_id:token\tmovie_id:token\nu\ti\n"},
        "recbole",
        "missing field(s) 'item_id'",
        1,
    ),
    Case(
        "recbole commas",
        {"d.inter": "user_id:token,item_id:token\nu,i\n"},
        "recbole",
        "is the separator ','",
        1,
    ),
    Case(
        "recbole two inter files",
        {"a.inter": "user_id:token\titem_id:token\nu\ti\n", "b.inter": "x"},
        "recbole",
        "a.inter, b.inter",
        None,
    ),
    Case(
        "recbole empty user",
        {"d.inter": "user_id:token\titem_id:token\nu\ti\n\tj\n"},
        "recbole",
        "user id is empty",
        3,
    ),
    Case(
        "recbole NULL user",
        {"d.inter": "user_id:token\titem_id:token\nNULL\ti\n"},
        "recbole",
        "'NULL' stands for a missing value",
        2,
    ),
    Case(
        "recbole rating word",
        {"d.inter": "user_id:token\titem_id:token\trating:float\nu\ti\tabc\n"},
        "recbole",
        "rating 'abc' is not a finite number",
        2,
    ),
    Case(
        "recbole item float field",
        {
            "d.inter": "user_id:token\titem_id:token\nu\ti\n",
            "d.item": "item_id:token\tprice:float\ni\tcheap\n",
        },
        "recbole",
        "field 'price' value 'cheap' is not a number",
        2,
    ),
    Case(
        "recbole header only",
        {"d.inter": "user_id:token\titem_id:token\n"},
        "recbole",
        "no data rows",
        2,
    ),
    Case(
        "recbole id not UTF-8",
        {"d.inter": b"user_id:token\titem_id:token\nu\xff\ti\n"},
        "recbole",
        "not valid UTF-8",
        2,
    ),
    Case(
        "recbole ok",
        {"d.inter": "user_id:token\titem_id:token\ttimestamp:float\nu1\ti9\t5\n"},
        "recbole",
        data=[("u1", "i9", 1.0, 5)],
    ),
    # ------------------------------------------------------------------ CSV event logs
    Case(
        "events distinct non-UTF-8 ids",
        events(b"u,i\n\xff,a\n\xfe,a\n"),
        "events",
        "is not valid UTF-8 text",
        2,
        kwargs=EV,
    ),
    Case(
        "events non-UTF-8 ids with their encoding",
        events(b"u,i\n\xff,a\n\xfe,a\n"),
        "events",
        data=[("\xff", "a", 1.0, 0), ("\xfe", "a", 1.0, 1)],
        kwargs={**EV, "encoding": "latin-1"},
    ),
    Case(
        "events unknown encoding",
        events("u,i\na,b\n"),
        "events",
        "unknown text encoding",
        kwargs={**EV, "encoding": "klingon"},
        exc=ValueError,
    ),
    Case("events weight 1e300", events("u,i,w\na,b,1e300\n"), "events", "3.4e38", 2, kwargs=EVW),
    Case(
        "events weight NaN",
        events("u,i,w\na,b,NaN\n"),
        "events",
        "'NaN' is not a finite",
        2,
        kwargs=EVW,
    ),
    Case(
        "events weight inf", events("u,i,w\na,b,-inf\n"), "events", "is not a finite", 2, kwargs=EVW
    ),
    Case(
        "events weight empty",
        events("u,i,w\na,b,\n"),
        "events",
        "weight (w) is empty",
        2,
        kwargs=EVW,
    ),
    Case(
        "events weight word", events("u,i,w\na,b,lots\n"), "events", "'lots' is not", 2, kwargs=EVW
    ),
    Case(
        "events empty user",
        events("u,i\na,b\n,c\n"),
        "events",
        "user id (u) is empty",
        3,
        kwargs=EV,
    ),
    Case(
        "events blank user", events("u,i\n  ,c\n"), "events", "user id (u) is empty", 2, kwargs=EV
    ),
    Case("events user nan", events("u,i\nnan,c\n"), "events", "missing value", 2, kwargs=EV),
    Case("events item NULL", events("u,i\na,NULL\n"), "events", "item id (i) 'NULL'", 2, kwargs=EV),
    Case("events user None", events("u,i\nNone,c\n"), "events", "missing value", 2, kwargs=EV),
    Case(
        "events control char",
        events("u,i\na\x07b,c\n"),
        "events",
        "control character",
        2,
        kwargs=EV,
    ),
    Case(
        "events quoted tab in id",
        events('u,i\n"a\tb",c\n'),
        "events",
        "control character",
        2,
        kwargs=EV,
    ),
    Case(
        "events 5000-char id",
        events(f"u,i\n{'y' * 5000},c\n"),
        "events",
        "longer than 4,096",
        2,
        kwargs=EV,
    ),
    Case(
        "events 1 MB id",
        events(f"u,i\na,b\n{BIG},c\n"),
        "events",
        "(1,000,000 characters)",
        3,
        kwargs=EV,
    ),
    Case(
        "events 1 MB unmapped field loads",
        events(f"u,i,note\na,b,{BIG}\nc,d,short\n"),
        "events",
        data=[("a", "b", 1.0, 0), ("c", "d", 1.0, 1)],
        kwargs=EV,
    ),
    Case(
        "events spaces around ids are not part of them",
        events("u,i\n a , b \na,b2\n"),
        "events",
        data=[("a", "b", 1.0, 0), ("a", "b2", 1.0, 1)],
        kwargs=EV,
    ),
    Case(
        "events time word",
        events("u,i,t\na,b,yesterday\n"),
        "events",
        "'yesterday' is not a number or an ISO",
        2,
        kwargs=EVT,
    ),
    Case(
        "events time Feb 30",
        events("u,i,t\na,b,2024-02-30\n"),
        "events",
        "'2024-02-30' is not",
        2,
        kwargs=EVT,
    ),
    Case(
        "events time hour 25",
        events("u,i,t\na,b,2024-01-05T25:00:00\n"),
        "events",
        "is not a number or an ISO",
        2,
        kwargs=EVT,
    ),
    Case(
        "events time inf",
        events("u,i,t\na,b,1\nc,d,inf\n"),
        "events",
        "'inf' is not a number",
        3,
        kwargs=EVT,
    ),
    Case("events time 1e300", events("u,i,t\na,b,1e300\n"), "events", "below 2^62", 2, kwargs=EVT),
    Case(
        "events time 1e19",
        events("u,i,t\na,b,10000000000000000000\n"),
        "events",
        "below 2^62",
        2,
        kwargs=EVT,
    ),
    Case(
        "events time empty",
        events("u,i,t\na,b,\n"),
        "events",
        "timestamp (t) is empty",
        2,
        kwargs=EVT,
    ),
    Case(
        "events ISO fractional seconds and offsets",
        events(
            "u,i,t\na,b,2024-01-05T10:00:00.5Z\nc,d,2024-01-05 12:00:00+0100\ne,f,1704448800.9\n"
        ),
        "events",
        data=[
            ("a", "b", 1.0, utc(2024, 1, 5, 10)),
            ("c", "d", 1.0, utc(2024, 1, 5, 11)),
            ("e", "f", 1.0, utc(2024, 1, 5, 10)),
        ],
        kwargs=EVT,
    ),
    Case(
        "events missing column",
        events("a,i\nx,y\n"),
        "events",
        "missing column(s) 'u'",
        1,
        kwargs=EV,
    ),
    Case(
        "events repeated column",
        events("u,i,u\nx,y,z\n"),
        "events",
        "'u' appears 2 times",
        1,
        kwargs=EV,
    ),
    Case("events header only", events("u,i\n"), "events", "no data rows", 2, kwargs=EV),
    Case("events empty file", events(""), "events", "file is empty", None, kwargs=EV),
    Case(
        "events truncated gzip",
        {"log.csv.gz": gzip.compress(b"u,i\n" + b"a,b\n" * 5000)[:-12]},
        "events",
        "gzip stream is truncated or corrupt",
        None,
        kwargs=EV,
    ),
    Case(
        "events gzip",
        {"log.csv.gz": gzip.compress(b"u,i\na,b\n")},
        "events",
        data=[("a", "b", 1.0, 0)],
        kwargs=EV,
    ),
    Case(
        "events .gz not gzip",
        {"log.csv.gz": b"\x1f\x8bnot gzip"},
        "events",
        "gzip",
        None,
        kwargs=EV,
    ),
    Case(
        "events unclosed quote",
        events('u,i,n\na,b,"open\nc,d,x\n'),
        "events",
        "never closed",
        2,
        kwargs=EV,
    ),
    Case(
        "events quote open for 2,000 lines",
        events('u,i,n\na,b,"open\n' + "c,d,x\n" * 2000 + 'e,f,close"\n'),
        "events",
        "runs over 2,002 lines",
        2,
        kwargs=EV,
    ),
    Case(
        "events legit multi-line note",
        events('u,i,n\na,b,"line 1\nline 2"\nc,d,x\n'),
        "events",
        data=[("a", "b", 1.0, 0), ("c", "d", 1.0, 1)],
        kwargs=EV,
    ),
    Case("events extra field", events("u,i\na,b\nc,d,e\n"), "events", "found 3", 3, kwargs=EV),
    Case(
        "events tsv by suffix",
        events("u\ti\na\tb\n", "log.tsv"),
        "events",
        data=[("a", "b", 1.0, 0)],
        kwargs=EV,
    ),
    Case(
        "events semicolons",
        events("u;i\na;b\n"),
        "events",
        data=[("a", "b", 1.0, 0)],
        kwargs={**EV, "sep": ";"},
    ),
    Case(
        "events PNG",
        events(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        "events",
        "NUL bytes",
        kwargs=EV,
    ),
    Case(
        "events Parquet named .csv",
        {"log.csv": lambda p: pq.write_table(pa.table({"u": ["a"], "i": ["b"]}), p)},
        "events",
        "NUL bytes",
        kwargs=EV,
    ),
    Case(
        "events CRLF and quotes",
        events('u,i,w\r\n"a","b","2"\r\n'),
        "events",
        data=[("a", "b", 2.0, 0)],
        kwargs=EVW,
    ),
    Case(
        "events numeric ids stay as written",
        events("u,i\n007,1\n7,1\n"),
        "events",
        data=[("007", "1", 1.0, 0), ("7", "1", 1.0, 1)],
        kwargs=EV,
    ),
    Case("events no such file", {}, "events", "no such file", kwargs=EV, exc=FileNotFoundError),
    # ------------------------------------------------------------------ Parquet event logs
    Case(
        "parquet NaN weights",
        parquet(u=["a", "b"], i=["x", "y"], w=[1.0, math.nan]),
        "events",
        "row 2: weight (w) nan",
        kwargs=EVW,
    ),
    Case(
        "parquet inf timestamp",
        parquet(u=["a", "b"], i=["x", "y"], t=[1.0, math.inf]),
        "events",
        "row 2: timestamp (t) inf",
        kwargs=EVT,
    ),
    Case(
        "parquet NaN user ids",
        parquet(u=[1.0, math.nan], i=["x", "y"]),
        "events",
        "row 2: user id (u) is nan, a missing value",
        kwargs=EV,
    ),
    Case(
        "parquet zero rows",
        parquet(u=pa.array([], pa.string()), i=pa.array([], pa.string())),
        "events",
        "has no rows",
        kwargs=EV,
    ),
    Case(
        "parquet list column",
        parquet(u=[[1, 2], [3]], i=["x", "y"]),
        "events",
        "user id (u) column has type list<element: int64>; expected integers or strings",
        kwargs=EV,
    ),
    Case(
        "parquet struct column",
        parquet(u=["a"], i=[{"k": 1}]),
        "events",
        "has type struct",
        kwargs=EV,
    ),
    Case("parquet bool ids", parquet(u=[True], i=["x"]), "events", "has type bool", kwargs=EV),
    Case(
        "parquet null user",
        parquet(u=["a", None], i=["x", "y"]),
        "events",
        "row 2: user id (u) is missing",
        kwargs=EV,
    ),
    Case(
        "parquet null weight",
        parquet(u=["a"], i=["x"], w=pa.array([None], pa.float64())),
        "events",
        "row 1: weight (w) is missing",
        kwargs=EVW,
    ),
    Case(
        "parquet empty-string id",
        parquet(u=["a", ""], i=["x", "y"]),
        "events",
        "row 2: user id (u) is empty",
        kwargs=EV,
    ),
    Case(
        "parquet 'NaN' string id", parquet(u=["NaN"], i=["x"]), "events", "missing value", kwargs=EV
    ),
    Case(
        "parquet numeric strings as weights",
        parquet(u=["a"], i=["x"], w=["4.5"]),
        "events",
        data=[("a", "x", 4.5, 0)],
        kwargs=EVW,
    ),
    Case(
        "parquet word weights",
        parquet(u=["a"], i=["x"], w=["much"]),
        "events",
        "row 1: weight (w) 'much' is not",
        kwargs=EVW,
    ),
    Case(
        "parquet weights 1e300",
        parquet(u=["a"], i=["x"], w=[1e300]),
        "events",
        "3.4e38",
        kwargs=EVW,
    ),
    Case(
        "parquet string weight 1e300",
        parquet(u=["a"], i=["x"], w=["1e300"]),
        "events",
        "3.4e38",
        kwargs=EVW,
    ),
    Case(
        "parquet ISO string times",
        parquet(u=["a"], i=["x"], t=["2024-01-05T10:00:00Z"]),
        "events",
        data=[("a", "x", 1.0, utc(2024, 1, 5, 10))],
        kwargs=EVT,
    ),
    Case(
        "parquet bogus string times",
        parquet(u=["a"], i=["x"], t=["soon"]),
        "events",
        "row 1: timestamp (t) 'soon'",
        kwargs=EVT,
    ),
    Case(
        "parquet date times",
        parquet(u=["a"], i=["x"], t=pa.array([datetime(2024, 1, 5).date()], pa.date32())),
        "events",
        data=[("a", "x", 1.0, utc(2024, 1, 5))],
        kwargs=EVT,
    ),
    Case(
        "parquet ns times",
        parquet(u=["a"], i=["x"], t=pa.array([10**18 + 5], pa.timestamp("ns"))),
        "events",
        data=[("a", "x", 1.0, 10**9)],
        kwargs=EVT,
    ),
    Case(
        "parquet huge int times",
        parquet(u=["a"], i=["x"], t=[2**63 - 1]),
        "events",
        "below 2^62",
        kwargs=EVT,
    ),
    Case(
        "parquet binary non-UTF-8 ids",
        parquet(u=pa.array([b"\xff", b"\xfe"], pa.binary()), i=["x", "y"]),
        "events",
        "row 1: user id (u) b'\\xff' is not valid UTF-8",
        kwargs=EV,
    ),
    Case(
        "parquet dictionary ids",
        parquet(u=pa.array(["b", "a", "b"]).dictionary_encode(), i=["x", "y", "z"]),
        "events",
        data=[("b", "x", 1.0, 0), ("a", "y", 1.0, 1), ("b", "z", 1.0, 2)],
        kwargs=EV,
    ),
    Case(
        "parquet uint64 ids beyond int64",
        parquet(u=pa.array([2**64 - 1, 5], pa.uint64()), i=["x", "y"]),
        "events",
        data=[(str(2**64 - 1), "x", 1.0, 0), ("5", "y", 1.0, 1)],
        kwargs=EV,
    ),
    Case(
        "parquet integral float ids",
        parquet(u=[30.0, 4.0], i=["x", "y"]),
        "events",
        data=[("30", "x", 1.0, 0), ("4", "y", 1.0, 1)],
        kwargs=EV,
    ),
    Case(
        "parquet fractional float ids",
        parquet(u=[1.5], i=["x"]),
        "events",
        "1.5 is not an id",
        kwargs=EV,
    ),
    Case(
        "parquet large_string ids",
        parquet(u=pa.array(["a"], pa.large_string()), i=["x"]),
        "events",
        data=[("a", "x", 1.0, 0)],
        kwargs=EV,
    ),
    Case(
        "parquet file of CSV text",
        {"log.parquet": "u,i\na,b\n"},
        "events",
        "not a readable Parquet file",
        kwargs=EV,
    ),
    Case(
        "parquet truncated",
        {"log.parquet": lambda p: p.write_bytes(_parquet_bytes()[:300])},
        "events",
        "not a readable Parquet file",
        kwargs=EV,
    ),
    Case(
        "parquet missing column",
        parquet(u=["a"], x=["b"]),
        "events",
        "missing column(s) 'i'",
        kwargs=EV,
    ),
    # ------------------------------------------------------------------ the command line
    Case(
        "cli events without a mapping",
        events("u,i\na,b\n"),
        "cli",
        "needs a column mapping",
        exc=SystemExit,
    ),
    Case(
        "cli events unknown column",
        events("u,i\na,b\n"),
        "cli",
        "missing column(s) 'user'",
        kwargs={"columns": "user=user,item=i"},
        exc=SystemExit,
    ),
    Case(
        "cli events bad role",
        events("u,i\na,b\n"),
        "cli",
        "ROLE one of user, item",
        kwargs={"columns": "people=u"},
        exc=SystemExit,
    ),
    Case(
        "cli ml-100k bad line",
        udata("1,2,3,100"),
        "cli",
        "is the separator ','?",
        kwargs={"dataset": "ml-100k"},
        exc=SystemExit,
    ),
]


def _parquet_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"u": ["a"] * 100, "i": ["b"] * 100}), sink)
    return sink.getvalue().to_pybytes()


def _write(case: Case, folder: Path) -> Path:
    for name, content in case.files.items():
        path = folder / name
        if callable(content):
            content(path)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    names = sorted(case.files)
    if case.load == "events" or (case.load == "cli" and "dataset" not in case.kwargs):
        return folder / (names[0] if names else "missing.csv")
    return folder


def _load(case: Case, target: Path):
    loaders = {
        "ml-100k": load_ml100k,
        "ml-1m": load_ml1m,
        "ml-latest": load_ml_latest,
        "recbole": load_recbole,
        "events": load_event_log,
    }
    if case.load != "cli":
        return loaders[case.load](target, **case.kwargs)
    return _cli(case, target)


def _cli(case: Case, target: Path):
    import contextlib
    import io

    from fedrec.cli import main

    args = ["baselines", "--dataset", str(case.kwargs.get("dataset", "events"))]
    args += ["--data-dir", str(target), "--no-search", "--out", str(target.parent / "b.json")]
    if "columns" in case.kwargs:
        args += ["--columns", str(case.kwargs["columns"])]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(args)
    raise SystemExit(f"rc={rc}: {err.getvalue()}")


def _triples(data) -> list[tuple[str, str, float, int]]:
    return [
        (data.user_map.external(u), data.item_map.external(i), float(w), int(t))
        for u, i, w, t in zip(data.user, data.item, data.weight, data.timestamp, strict=True)
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_a_clear_error_or_correct_data(case, tmp_path):
    target = _write(case, tmp_path)
    if case.error is None:
        data = _load(case, target)
        assert _triples(data) == case.data
        assert np.isfinite(data.weight).all()
        return
    with pytest.raises(case.exc) as info:
        _load(case, target)
    message = str(info.value)
    assert case.error in message, message
    lines = message.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 800, message[:2000]
    assert "Traceback" not in message
    if case.exc is SystemExit:
        assert message.startswith("rc=2: fedrec baselines: error: "), message
        return
    assert str(tmp_path) in message  # the file (or folder) is named
    if case.exc is DataFormatError and case.line != "any":
        assert info.value.line == case.line, message


def test_the_table_has_at_least_a_hundred_cases():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    loaded = sum(c.error is None for c in CASES)
    assert 20 <= loaded < len(CASES) - 60  # both kinds of outcome are exercised
