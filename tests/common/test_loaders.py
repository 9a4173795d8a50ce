import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common.data.loaders import (
    DATASETS,
    load_dataset,
    load_event_log,
    load_ml1m,
    load_ml100k,
    load_ml_latest,
    load_recbole,
)
from fedrec.common.data.schema import DataFormatError, Interactions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "loaders"
BAD = FIXTURES / "bad"
REAL_ML100K = Path(__file__).resolve().parents[2].parent / "shared/datasets/ml-100k"


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def triples(data: Interactions) -> list[tuple[str, str, float, int]]:
    """(external user, external item, weight, timestamp) per row, in row order."""
    return [
        (data.user_map.external(u), data.item_map.external(i), float(w), int(t))
        for u, i, w, t in zip(data.user, data.item, data.weight, data.timestamp, strict=True)
    ]


# ---------------------------------------------------------------------------- ml-100k


def test_ml100k_counts_ids_and_values():
    data = load_ml100k(FIXTURES / "ml-100k")
    assert data.name == "ml-100k"
    assert (len(data), data.n_users, data.n_items) == (6, 4, 5)
    # numeric-aware sort: "10" after "3"; item 5 is only in u.item but is in the catalog
    assert data.user_map.to_list() == ["1", "2", "3", "10"]
    assert data.item_map.to_list() == ["1", "2", "3", "4", "5"]
    assert data.user_map.index("10") == 3
    assert data.item_counts()[data.item_map.index("5")] == 0
    assert triples(data) == [
        ("2", "1", 4.0, 881250949),
        ("1", "2", 3.0, 881250950),
        ("10", "1", 5.0, 881250951),
        ("1", "1", 2.0, 881250952),
        ("3", "4", 1.0, 881250953),
        ("2", "3", 4.0, 881250960),
    ]
    assert data.user.dtype == np.int64 and data.weight.dtype == np.float32


def test_ml100k_metadata_from_u_item_latin1():
    data = load_ml100k(FIXTURES / "ml-100k")
    items = data.items
    assert items is not None
    idx = data.item_map.index
    assert items.title(idx("1")) == "Harbor Lights (1994)"
    assert items.title(idx("2")) == "Caf\u00e9 \u00e0 Lumi\u00e8re (1996)"  # latin-1 decoded
    assert items.genres[idx("1")] == ("Comedy", "Drama", "Romance")
    assert items.genres[idx("3")] == ("Animation", "Children's")
    assert items.genres[idx("5")] == ("unknown",)
    assert items.extra["year"][idx("2")] == 1996
    assert items.extra["year"][idx("5")] is None
    assert items.extra["imdb_url"][idx("4")] == "http://example.org/train"


def test_ml100k_metadata_from_recbole_items_tsv():
    data = load_ml100k(FIXTURES / "ml100k-recbole")
    assert data.n_items == 5
    items = data.items
    assert items is not None
    idx = data.item_map.index
    assert items.title(idx("2")) == "Caf\u00e9 \u00e0 Lumi\u00e8re"
    assert items.genres[idx("3")] == ("Animation", "Children's")
    assert items.extra["year"][idx("5")] == 1997


def test_ml100k_without_metadata(caplog):
    with caplog.at_level(logging.INFO, logger="fedrec.data"):
        data = load_ml100k(FIXTURES / "ml100k-bare" / "u.data")  # the file works too
    assert data.items is None
    assert data.n_items == 4
    assert "without item metadata" in caplog.text


def test_same_ids_give_same_dense_indices_in_any_file_order(tmp_path):
    lines = (FIXTURES / "ml-100k" / "u.data").read_text().splitlines()
    (tmp_path / "u.data").write_text("\n".join(reversed(lines)) + "\n")
    a = load_ml100k(FIXTURES / "ml100k-bare")
    b = load_ml100k(tmp_path)
    assert a.user_map == b.user_map and a.item_map == b.item_map
    assert sorted(triples(a)) == sorted(triples(b))


def test_crlf_and_missing_final_newline(tmp_path):
    (tmp_path / "u.data").write_bytes(b"1\t5\t3\t100\r\n2\t5\t4\t200")
    data = load_ml100k(tmp_path)
    assert triples(data) == [("1", "5", 3.0, 100), ("2", "5", 4.0, 200)]


@pytest.mark.parametrize(
    ("case", "line", "needles"),
    [
        ("comma", 1, ["expected 4 tab-separated fields", "found 1", "is the separator ','?"]),
        ("field-count", 2, ["expected 4 tab-separated fields", "found 5"]),
        ("short-line", 3, ["found 3", "'10\\t1\\t5'"]),
        ("non-numeric-id", 3, ["user id 'abc' is not an integer"]),
        ("non-numeric-rating", 4, ["rating 'good' is not a finite number"]),
        ("non-numeric-timestamp", 2, ["timestamp 'last-week'", "unix seconds"]),
        ("blank-line", 2, ["empty line", "expected 4 tab-separated fields"]),
        ("empty", None, ["file is empty", "tab-separated"]),
    ],
)
def test_ml100k_errors_name_file_line_and_problem(case, line, needles):
    with pytest.raises(DataFormatError) as info:
        load_ml100k(BAD / case)
    err = info.value
    assert err.path == str(BAD / case / "u.data")
    assert err.line == line
    message = str(err)
    assert message.startswith(str(BAD / case / "u.data"))
    for needle in needles:
        assert needle in message


def test_ml100k_bad_u_item_line():
    with pytest.raises(DataFormatError) as info:
        load_ml100k(BAD / "u-item-fields")
    assert info.value.path.endswith("u.item")
    assert info.value.line == 2
    assert "expected 24 '|'-separated fields" in str(info.value)
    assert "found 4" in str(info.value)


def test_missing_files_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"u\.data.*found: README"):
        load_ml100k(BAD / "no-data")
    with pytest.raises(FileNotFoundError, match="ml-100k folder containing u.data"):
        load_ml100k(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"ratings\.dat"):
        load_ml1m(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ratings\.csv"):
        load_ml_latest(tmp_path)


def test_error_line_numbers_across_blocks(tmp_path):
    # 200,000 lines (~3 MB): pyarrow reads them in several blocks, on several threads
    rows = [f"{u}\t{u % 7 + 1}\t{u % 5 + 1}\t{1000 + u}" for u in range(1, 200_001)]
    (tmp_path / "u.data").write_text("\n".join(rows) + "\n")
    data = load_ml100k(tmp_path)
    assert len(data) == 200_000
    assert triples(data)[150] == ("151", str(151 % 7 + 1), float(151 % 5 + 1), 1151)
    rows[180_136] = rows[180_136].replace("\t", ",")
    (tmp_path / "u.data").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataFormatError) as info:
        load_ml100k(tmp_path)
    assert info.value.line == 180_137
    rows[180_136] = "180137\t1\tfive\t1137"
    (tmp_path / "u.data").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match="rating 'five'") as info:
        load_ml100k(tmp_path)
    assert info.value.line == 180_137


def test_unusual_but_valid_numbers(tmp_path):
    (tmp_path / "u.data").write_text("1\t 2\t4.5 \t8.8e8\n007\t2\t-1\t100.9\n")
    assert triples(load_ml100k(tmp_path)) == [
        ("1", "2", 4.5, 880000000),
        ("7", "2", -1.0, 100),
    ]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.integers(0, 10**12),
            st.decimals(0, 100, places=2, allow_nan=False),
            st.integers(0, 2**40),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_fast_parser_matches_python(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("ml")
    text = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    (folder / "u.data").write_text(text)
    data = load_ml100k(folder, duplicates="keep-all")
    assert triples(data) == [
        (str(u), str(i), float(np.float32(float(r))), t) for u, i, r, t in rows
    ]


# ---------------------------------------------------------------------------- duplicates


def test_duplicates_keep_last_by_timestamp_then_file_order(caplog):
    with caplog.at_level(logging.WARNING, logger="fedrec.data"):
        data = load_ml100k(FIXTURES / "duplicates")
    assert triples(data) == [
        ("2", "1", 4.0, 881250949),
        ("1", "2", 3.0, 881250999),  # latest of three ratings of (1, 2)
        ("3", "1", 4.0, 881251000),  # same second: the later line wins
        ("2", "2", 1.0, 881250940),
    ]
    records = [r for r in caplog.records if r.name == "fedrec.data"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "dropped 3 duplicate" in records[0].getMessage()
    assert "2 pairs" in records[0].getMessage()


def test_duplicates_keep_all_and_error(caplog):
    with caplog.at_level(logging.INFO, logger="fedrec.data"):
        data = load_ml100k(FIXTURES / "duplicates", duplicates="keep-all")
    assert len(data) == 7
    assert "3 duplicate" in caplog.text
    with pytest.raises(DataFormatError) as info:
        load_ml100k(FIXTURES / "duplicates", duplicates="error")
    assert "lines 1 and 3" in str(info.value)
    assert "user '1' and item '2'" in str(info.value)
    with pytest.raises(ValueError, match="keep-last"):
        load_ml100k(FIXTURES / "duplicates", duplicates="first")


def test_no_duplicate_no_log(caplog):
    with caplog.at_level(logging.INFO, logger="fedrec.data"):
        load_ml100k(FIXTURES / "ml-100k")
    assert "duplicate" not in caplog.text


# ---------------------------------------------------------------------------- ml-1m


def test_ml1m():
    data = load_ml1m(FIXTURES / "ml-1m")
    assert data.name == "ml-1m"
    assert (len(data), data.n_users, data.n_items) == (5, 3, 4)
    assert data.item_map.to_list() == ["10", "20", "30", "40"]  # 40: catalog only
    assert triples(data)[0] == ("1", "10", 5.0, 978300760)
    items = data.items
    assert items is not None
    assert items.title(data.item_map.index("20")) == "Caf\u00e9 \u00e0 Lumi\u00e8re (1996)"
    assert items.genres[data.item_map.index("10")] == ("Comedy", "Drama", "Romance")
    assert items.extra["year"][data.item_map.index("40")] == 1997


def test_ml1m_wrong_separator():
    with pytest.raises(DataFormatError) as info:
        load_ml1m(BAD / "ml1m-tabs")
    assert info.value.line == 2
    assert "expected 4 '::'-separated fields" in str(info.value)
    assert "is the separator '\\t'?" in str(info.value)


# ---------------------------------------------------------------------------- ml-latest


def test_ml_latest_small():
    data = load_ml_latest(FIXTURES / "ml-latest-small")
    assert data.name == "ml-latest-small"
    assert (len(data), data.n_users, data.n_items) == (5, 3, 4)
    assert data.item_map.to_list() == ["1", "3", "6", "8"]
    np.testing.assert_allclose(data.weight, [4.0, 4.5, 0.5, 3.0, 2.5])
    items = data.items
    assert items is not None
    idx = data.item_map.index
    assert items.title(idx("3")) == "Kite, Paper, and String (1995)"
    assert items.title(idx("6")) == 'The "Quiet" Orchard (1997)'
    assert items.genres[idx("6")] == ()
    assert items.genres[idx("8")] == ("Thriller", "Crime")


def test_ml_latest_quoted_ratings(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        'userId,movieId,rating,timestamp\n"1","2","3.5","100"\n2,2,4,200\n'
    )
    data = load_ml_latest(tmp_path, name="quoted")
    assert data.name == "quoted"
    assert triples(data) == [("1", "2", 3.5, 100), ("2", "2", 4.0, 200)]


def test_ml_latest_header_errors():
    with pytest.raises(DataFormatError) as info:
        load_ml_latest(BAD / "latest-missing-column")
    message = str(info.value)
    assert info.value.line == 1
    assert "missing column(s) 'movieId'" in message
    assert "found columns: 'userId', 'itemId', 'rating', 'timestamp'" in message
    with pytest.raises(DataFormatError, match="needs a header line"):
        load_ml_latest(BAD / "latest-no-header")
    with pytest.raises(DataFormatError, match="no data rows"):
        load_ml_latest(BAD / "latest-header-only")


# ---------------------------------------------------------------------------- RecBole


def test_recbole_inter_and_item():
    data = load_recbole(FIXTURES / "recbole")
    assert data.name == "toy"
    assert data.user_map.to_list() == ["u10", "u2", "u7"]
    assert data.item_map.to_list() == ["book-1", "book-10", "book-3", "book-99"]
    assert triples(data) == [
        ("u7", "book-3", 2.5, 1600000300),
        ("u10", "book-1", 4.0, 1600000100),
        ("u2", "book-3", 5.0, 1600000200),
        ("u7", "book-10", 1.0, 1600000400),
    ]
    items = data.items
    assert items is not None
    idx = data.item_map.index
    assert items.title(idx("book-1")) == "A River Map"
    assert items.genres[idx("book-1")] == ("Travel", "Maps")
    assert items.extra["price"][idx("book-10")] is None
    assert items.extra["price"][idx("book-99")] == 30.0


def test_recbole_paths_and_defaults():
    by_file = load_recbole(FIXTURES / "recbole" / "toy.inter")
    by_prefix = load_recbole(FIXTURES / "recbole" / "toy")
    assert triples(by_file) == triples(by_prefix)
    data = load_recbole(FIXTURES / "recbole-minimal")
    assert data.items is None
    assert triples(data) == [("alice", "x", 1.0, 0), ("bob", "y", 1.0, 1), ("alice", "z", 1.0, 2)]


def test_recbole_errors():
    with pytest.raises(DataFormatError) as info:
        load_recbole(BAD / "recbole-missing-field")
    assert info.value.line == 1
    assert "missing field(s) 'item_id'" in str(info.value)
    assert "found fields: 'user_id', 'movie_id', 'rating'" in str(info.value)
    with pytest.raises(DataFormatError, match="is the separator ','"):
        load_recbole(BAD / "recbole-comma")
    with pytest.raises(DataFormatError, match=r"a\.inter, b\.inter"):
        load_recbole(BAD / "recbole-two")


# ---------------------------------------------------------------------------- event logs


def test_event_log_csv_with_iso_timestamps():
    data = load_event_log(
        FIXTURES / "events" / "events.csv",
        user_col="account",
        item_col="sku",
        weight_col="qty",
        timestamp_col="when",
    )
    assert data.name == "events"
    assert data.user_map.to_list() == ["acct-1", "acct-2", "acct-3"]
    assert triples(data) == [
        ("acct-2", "sku-9", 1.0, utc(2024, 1, 5, 10)),
        ("acct-1", "sku-9", 2.0, utc(2024, 1, 5, 11, 30)),  # naive: UTC
        ("acct-1", "sku-10", 3.0, utc(2024, 1, 6)),
        ("acct-2", "sku-1", 1.5, 1704500000),
        ("acct-3", "sku-1", 1.0, utc(2024, 1, 5, 11)),  # +01:00
    ]


def test_event_log_defaults_and_tsv():
    data = load_event_log(FIXTURES / "events" / "events.csv", user_col="account", item_col="sku")
    np.testing.assert_array_equal(data.weight, 1.0)
    np.testing.assert_array_equal(data.timestamp, np.arange(5))
    plays = load_event_log(
        FIXTURES / "events" / "plays.tsv",
        user_col="user",
        item_col="track",
        timestamp_col="ts",
        sep="\t",
    )
    assert triples(plays) == [
        ("ana", "t1", 1.0, 100),
        ("ben", "t2", 1.0, 50),
        ("ana", "t2", 1.0, 200),
    ]


def test_event_log_errors():
    with pytest.raises(DataFormatError) as info:
        load_event_log(FIXTURES / "events" / "events.csv", user_col="user", item_col="sku")
    assert "missing column(s) 'user'" in str(info.value)
    assert "'account'" in str(info.value)
    with pytest.raises(DataFormatError) as info:
        load_event_log(
            BAD / "events-bad-time" / "events.csv",
            user_col="account",
            item_col="sku",
            timestamp_col="when",
        )
    assert info.value.line == 3
    assert "'yesterday' is not a number or an ISO-8601 date/time" in str(info.value)
    with pytest.raises(ValueError, match="format"):
        load_event_log(
            FIXTURES / "events" / "events.csv", user_col="a", item_col="b", format="xlsx"
        )


def test_event_log_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "uid": pa.array([30, 4, 30], pa.int64()),
            "item": ["b", "a", "c"],
            "score": pa.array([0.5, 2.0, 1.0], pa.float32()),
            "at": pa.array(
                [
                    datetime(2024, 1, 5, 10, tzinfo=UTC),
                    datetime(2024, 1, 6, tzinfo=UTC),
                    datetime(2024, 1, 7, tzinfo=UTC),
                ],
                pa.timestamp("ms", tz="UTC"),
            ),
            "iso": ["2024-01-05T10:00:00Z", "2024-01-06", "2024-01-07T00:00:00+00:00"],
        }
    )
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    expected = [
        ("30", "b", 0.5, utc(2024, 1, 5, 10)),
        ("4", "a", 2.0, utc(2024, 1, 6)),
        ("30", "c", 1.0, utc(2024, 1, 7)),
    ]
    for time_col in ("at", "iso"):
        data = load_event_log(
            path, user_col="uid", item_col="item", weight_col="score", timestamp_col=time_col
        )
        assert data.name == "log"
        assert data.user_map.to_list() == ["4", "30"]
        assert triples(data) == expected
    other = tmp_path / "log.bin"
    other.write_bytes(path.read_bytes())
    assert (
        triples(
            load_event_log(
                other,
                user_col="uid",
                item_col="item",
                weight_col="score",
                timestamp_col="at",
                format="parquet",
            )
        )
        == expected
    )
    with pytest.raises(DataFormatError) as info:
        load_event_log(path, user_col="user", item_col="item")
    assert "missing column(s) 'user'" in str(info.value)
    assert "'uid', 'item', 'score', 'at', 'iso'" in str(info.value)


# ---------------------------------------------------------------------------- load_dataset


def test_load_dataset_dispatch():
    assert set(DATASETS) == {
        "ml-100k",
        "ml-1m",
        "ml-latest",
        "ml-latest-small",
        "recbole",
        "events",
        "synthetic",
    }
    # data_dir may be the folder holding the data set under its name, or the data set itself
    a = load_dataset("ml-100k", FIXTURES)
    b = load_dataset("ml-100k", FIXTURES / "ml-100k")
    assert triples(a) == triples(b) and a.n_items == 5
    assert load_dataset("ml-1m", FIXTURES).name == "ml-1m"
    assert load_dataset("ml-latest-small", FIXTURES).name == "ml-latest-small"
    assert load_dataset("ml-latest", FIXTURES / "ml-latest-small").name == "ml-latest"
    assert load_dataset("recbole", FIXTURES / "recbole").name == "toy"
    events = load_dataset(
        "events", FIXTURES / "events" / "events.csv", user_col="account", item_col="sku"
    )
    assert len(events) == 5
    synth = load_dataset("synthetic", "ignored", n_users=30, n_items=20, seed=1)
    assert synth.name == "synthetic" and synth.n_users == 30


def test_load_dataset_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        load_dataset("ml-10k", FIXTURES)
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("ml-100k")


# ---------------------------------------------------------------------------- real data


@pytest.mark.data
@pytest.mark.skipif(not REAL_ML100K.is_dir(), reason=f"{REAL_ML100K} not present")
def test_real_ml100k():
    # its speed (< 1 s) is measured by python -m fedrec.simulations.bench_data, not here
    data = load_ml100k(REAL_ML100K)
    assert (data.n_users, data.n_items, len(data)) == (943, 1682, 100_000)
    assert data.items is not None
    assert data.items.title(data.item_map.index("1")).startswith("Toy Story")
    assert data.weight.min() == 1.0 and data.weight.max() == 5.0


def test_empty_cell_and_first_bad_row_in_file_order(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t\t100\n2\t2\tbad\t100\n")
    with pytest.raises(DataFormatError, match="rating is empty; expected a finite number") as info:
        load_ml100k(tmp_path)
    assert info.value.line == 1
    (tmp_path / "u.data").write_text("1\t2\tzzz\t100\n2\t2\taaa\t100\n")
    with pytest.raises(DataFormatError, match="rating 'zzz'") as info:
        load_ml100k(tmp_path)
    assert info.value.line == 1


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
            st.sampled_from(["date", "minutes", "T", "space", "Z", "offset"]),
            st.integers(-23 * 60 - 59, 23 * 60 + 59),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_iso_times_match_python(tmp_path_factory, cases):
    texts, expected = [], []
    for moment, form, offset_minutes in cases:
        moment = moment.replace(microsecond=0)
        sign = "-" if offset_minutes < 0 else "+"
        offset = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
        base = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        clock = f"{moment.hour:02d}:{moment.minute:02d}"
        text = {
            "date": base,
            "minutes": f"{base}T{clock}",
            "T": f"{base}T{clock}:{moment.second:02d}",
            "space": f"{base} {clock}:{moment.second:02d}",
            "Z": f"{base}T{clock}:{moment.second:02d}Z",
            "offset": f"{base}T{clock}:{moment.second:02d}{offset}",
        }[form]
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        texts.append(text)
        expected.append(int(parsed.timestamp()))
    path = tmp_path_factory.mktemp("iso") / "log.csv"
    path.write_text("u,i,t\n" + "".join(f"u{k},i{k},{t}\n" for k, t in enumerate(texts)))
    data = load_event_log(path, user_col="u", item_col="i", timestamp_col="t")
    by_user = {
        data.user_map.external(u): int(t) for u, t in zip(data.user, data.timestamp, strict=True)
    }
    assert [by_user[f"u{k}"] for k in range(len(texts))] == expected


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "log.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install pyarrow"):
        load_event_log(path, user_col="u", item_col="i")
