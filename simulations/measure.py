"""The simulator's own measurement of quality: exact, and never a release.

A researcher running a simulation holds every simulated device's data, so the simulator may
rank items for every real user with that device's own code
(:meth:`~fedrec.client.device.Device.evaluate`: its user embedding, its fold-in, its held-out
items) and report exact means. Nothing here crosses the federation: no server sees these
numbers, so they cost no privacy budget. A *federated* evaluation, in which devices send their
metric sums to the server, is a release and is accounted
(:meth:`~fedrec.client.device.Device.evaluation_release`); runs report both, labelled.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrec.client.state_store import DeviceStateStore
from fedrec.common.config import RunConfig
from fedrec.common.evaluation.metrics import combine_metric_sums
from fedrec.simulations.federation import federated_dataset, make_device

__all__ = ["measure_quality", "MEASUREMENT_NOTE"]

#: How run summaries label the simulator's measurement.
MEASUREMENT_NOTE = (
    "measured by the simulator on every real user's own device state (exact; "
    "not sent to the server, so not a release)"
)


def measure_quality(
    cfg: RunConfig, state: Mapping[str, np.ndarray], store: DeviceStateStore
) -> dict[str, float]:
    """Mean full-ranking metrics of the run's real users under the item table ``state``.

    Each device is rebuilt from the dataset and restored from ``store`` (devices that never
    trained keep their initial user embedding, as they would on a phone).
    """
    fed = federated_dataset(cfg)
    sums = []
    for user in range(fed.n_real_users):
        device = make_device(fed, user, cfg, ledger_dir=None)
        stored = store.load(device.device_id)
        if stored is not None:
            device.load_state_dict(stored[1])
        result = device.evaluate(state, cfg.k_values)
        if result:
            sums.append(result)
    return combine_metric_sums(sums) if sums else {}
