"""Print the malformed-input tables (data and config) as Markdown, running every case.

The cases are those of tests/common/test_malformed_data.py and
tests/simulations/test_config_errors.py: ``python tests/print_malformed_table.py``. Each
row is what the input produced on this run (the error line, or the rows loaded), and the
summary on stderr counts the cases whose outcome differs from what the tests expect.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _module(folder: str, name: str):
    sys.path.insert(0, str(HERE / folder))
    return importlib.import_module(name)


def _short(msg: str, tmp: Path | str) -> str:
    msg = msg.replace(f"{tmp}/", "").replace(str(tmp), "DIR").strip().replace("|", "\\|")
    return msg if len(msg) <= 150 else msg[:147] + "..."


def _data_outcome(md, case, tmp: Path) -> tuple[str, bool]:
    target = md._write(case, tmp)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            rows = md._triples(md._load(case, target))
    except BaseException as e:  # noqa: BLE001 - every outcome is reported, none raised
        ok = case.error is not None and case.error in str(e) and isinstance(e, case.exc)
        kind = "error" if ok else f"UNEXPECTED {type(e).__name__}"
        return f"{kind}: {_short(str(e), tmp)}", ok
    ok = case.error is None and rows == case.data
    return f"loads, {len(rows)} rows, {'exactly the file' if ok else 'NOT THE FILE'}", ok


def data_table() -> int:
    """Print the data table; return the number of cases not as the tests expect."""
    md = _module("common", "test_malformed_data")
    print("| # | data case | loader | outcome | s |")
    print("| ---: | --- | --- | --- | ---: |")
    bad = 0
    for n, case in enumerate(md.CASES, 1):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            out, ok = _data_outcome(md, case, Path(d))
            dt = time.perf_counter() - t0
        bad += not ok
        print(f"| {n} | `{case.id}` | {case.load} | {out} | {dt:.2f} |")
    print(f"{len(md.CASES)} data cases, {bad} not as expected", file=sys.stderr)
    return bad


def config_table() -> int:
    """Print the config table (through ``fedrec simulate``; training is a tripwire)."""
    import fedrec.simulations.loop as loop
    from fedrec.cli import main

    def trained(cfg, **kwargs):
        raise AssertionError("training started")

    loop.run_plain = trained
    ce = _module("simulations", "test_config_errors")
    print("\n| # | config arguments | outcome (the one stderr line, exit status) |")
    print("| ---: | --- | --- |")
    bad = 0
    for n, (args, needle) in enumerate(ce.CASES, 1):
        with tempfile.TemporaryDirectory() as d:
            err = io.StringIO()
            argv = ["simulate", "--engine", "loop", "--run-dir", f"{d}/run", *args]
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc: object = main(argv)
                except BaseException as e:  # noqa: BLE001 - reported, not raised
                    rc = f"UNEXPECTED {type(e).__name__}"
            line = err.getvalue().strip()
        ok = rc == 2 and len(line.splitlines()) == 1 and needle in line
        bad += not ok
        flag = "" if ok else " NOT AS EXPECTED"
        print(f"| {n} | `{' '.join(args)}` | {_short(line, d)} (rc {rc}){flag} |")
    print(f"{len(ce.CASES)} config cases, {bad} not as expected", file=sys.stderr)
    return bad


if __name__ == "__main__":
    sys.exit(1 if data_table() + config_table() else 0)
