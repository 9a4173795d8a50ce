import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ml-100k"


@pytest.fixture
def ml100k_dir() -> Path:
    if not (ML100K / "u.data").exists():
        pytest.skip(f"{ML100K} not present")
    return ML100K


@pytest.fixture
def task_identity():
    """Flower's Message API needs a task identity to build messages outside a SuperNode."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
