"""The research and benchmark tools run as ``fedrec`` commands, with their modules' options."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from fedrec.cli import build_parser, main

TOOL_COMMANDS = [
    ["sweep"],
    ["bench", "engine"],
    ["bench", "local"],
    ["bench", "data"],
    ["bench", "sdk"],
    ["canary"],
    ["limits"],
]


def _fedrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedrec.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_top_level_help_lists_every_command_with_its_one_line_help():
    from fedrec.cli import _COMMANDS

    done = _fedrec("--help")
    assert done.returncode == 0, done.stderr
    listed = " ".join(done.stdout.split())
    assert {"sweep", "bench", "canary", "limits"} <= set(_COMMANDS)
    for name, (_module, help_text) in _COMMANDS.items():
        assert f"{name} {help_text}" in listed, name


def test_bench_help_lists_its_benchmarks(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for tool in ("engine", "local", "data", "sdk"):
        assert f"    {tool} " in out, tool
    assert main(["bench"]) == 0  # no benchmark named: its help, not an error
    assert "engine" in capsys.readouterr().out


@pytest.mark.parametrize("command", TOOL_COMMANDS, ids=" ".join)
def test_each_tool_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: fedrec {' '.join(command)}" in capsys.readouterr().out


def test_help_loads_neither_torch_nor_flower():
    probe = (
        "import json, sys\n"
        "from fedrec.cli import main\n"
        f"for command in {TOOL_COMMANDS!r}:\n"
        "    try:\n"
        "        main([*command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'flwr', 'opacus', 'ray')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_commands_take_exactly_their_modules_options():
    from fedrec.simulations import bench_data, bench_sdk, benchmark, canary_audit, limits, sweep

    top = build_parser()
    for path, module in (
        (["sweep"], sweep),
        (["bench", "data"], bench_data),
        (["bench", "sdk"], bench_sdk),
        (["canary"], canary_audit),
        (["limits"], limits),
    ):
        own = argparse.ArgumentParser()
        module.add_arguments(own)
        assert _options(_subparser(top, *path)) == _options(own), path
    whole = argparse.ArgumentParser()
    benchmark.add_arguments(whole)  # python -m fedrec.simulations.benchmark: both parts
    local, engine = _subparser(top, "bench", "local"), _subparser(top, "bench", "engine")
    assert _options(local) == _options(whole)
    assert _options(engine) == {"-h", "--help", "--quick"}


@pytest.mark.slow
def test_bench_data_runs_end_to_end_through_the_fedrec_command():
    done = _fedrec("bench", "data", "--repeats", "1", "--csv-mb", "1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "median of 1 runs after a warm-up" in out
    assert "synthetic 1,000 x 500" in out and "synthetic 20,000 x 500" in out
    assert "load ml-100k" not in out  # only with --data-dir
    assert "1 MB CSV, a 0.1 MB field" in out and "1 MB CSV, peak memory" in out
    bad = _fedrec("bench", "data", "--repeats", "0")
    assert bad.returncode == 2 and "--repeats" in bad.stderr and "Traceback" not in bad.stderr
