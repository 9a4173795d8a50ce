"""Simulations on one machine: the runner, the in-process transport, the sweep, baselines."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DEFAULT_MF": "baselines",
        "FederatedDataset": "federation",
        "InProcessTransport": "in_process",
        "MEASUREMENT_NOTE": "measure",
        "PlainResult": "loop",
        "SEARCH_GRID": "baselines",
        "SimulationResult": "runner",
        "add_arguments": "sweep",
        "central_evaluation": "loop",
        "centralized_mf": "baselines",
        "federated_dataset": "federation",
        "federated_features": "federation",
        "main": "sweep",
        "make_device": "federation",
        "measure_quality": "measure",
        "most_popular": "baselines",
        "plot_run": "plots",
        "privacy_summary": "runner",
        "resolve_noise_multiplier": "federation",
        "run": "sweep",
        "run_baselines": "baselines",
        "run_plain": "loop",
        "run_sweep": "sweep",
        "user_delta": "sweep",
        "simulate": "runner",
        "simulate_loop": "runner",
    },
)
