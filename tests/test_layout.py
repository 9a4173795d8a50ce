"""The package layout of DESIGN.md, enforced."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> dict[str, set[str]]:
    out = {}
    for path in (ROOT / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("common", ("flwr", "ray", "fedrec.client", "fedrec.server", "fedrec.simulations")),
        (
            "client",
            (
                "fedrec.server",
                "fedrec.simulations",
                "ray",
                "flwr.server",
                "flwr.serverapp",
                "flwr.simulation",
            ),
        ),
        ("server", ("fedrec.client", "fedrec.simulations", "ray", "flwr.clientapp")),
    ],
)
def test_folder_imports_stay_in_their_lane(folder, forbidden):
    for path, names in _imports(folder).items():
        bad = sorted(n for n in names for f in forbidden if n == f or n.startswith(f + "."))
        assert not bad, f"{path} imports {bad}"


@pytest.mark.slow
def test_client_sdk_imports_without_server_simulation_or_ray():
    code = (
        "import sys, fedrec.client.device, fedrec.client.client_app, "
        "fedrec.common.privacy.accountant;"
        "bad=[m for m in sys.modules if m.startswith(('ray','fedrec.server',"
        "'fedrec.simulations','flwr.simulation'))]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_generic_top_level_names_are_installed():
    import importlib.util

    for name in ("common", "client", "server", "simulations", "cli"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "site-packages" not in str(spec.origin), name
    import fedrec.common

    assert Path(fedrec.common.__file__).parent.name == "common"


def test_cli_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "fedrec.cli", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for command in ("simulate", "baselines"):
        assert command in out


def test_flwr_run_config_lists_every_run_config_key_with_its_default():
    """``flwr run .`` reads [tool.flwr.app.config]: every key, at the library's defaults."""
    import tomllib

    from fedrec.common.config import RunConfig

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_flat()
    assert set(table) == set(defaults)
    for key, value in table.items():
        if key == "run-dir":  # flwr run writes to a fixed folder instead of a timestamped one
            continue
        assert RunConfig.from_flat({key: value}).to_flat()[key] == defaults[key], key
