import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_embed_in_app_example_runs():
    script = Path(__file__).resolve().parents[2] / "examples" / "embed_in_app.py"
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "because you interacted with" in out
    assert "round 1: Contribution" in out
    assert "epsilon spent" in out
