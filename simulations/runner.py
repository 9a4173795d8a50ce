"""``fedrec simulate``: the federated run on Flower's simulation engine.

:func:`simulate` resolves the configuration (noise multiplier calibrated to the budget),
creates the run directory, runs the Flower ``ServerApp`` and ``ClientApp`` of
:mod:`fedrec.simulations.apps` with ``flwr.simulation.run_simulation`` (cohort workers, each
SuperNode hosting a shard of the devices; or one SuperNode per device), then writes the
summary and plots.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.common.config import RunConfig
from fedrec.common.privacy.randomness import SEEDED_WARNING
from fedrec.server.run_directory import RunDirectory, holds_run, new_run_dir, refuse_existing
from fedrec.simulations.federation import federated_dataset, resolve_noise_multiplier
from fedrec.simulations.measure import MEASUREMENT_NOTE

__all__ = [
    "SimulationResult",
    "simulate",
    "simulate_loop",
    "privacy_summary",
    "enroll",
    "resume_config",
    "run_state",
]

log = logging.getLogger("fedrec.simulate")


@dataclass
class SimulationResult:
    """What a simulation produced: its directory, per-round records and final figures."""

    run_dir: Path
    config: RunConfig
    rounds: list[dict[str, object]] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)


def privacy_summary(ledger_dir: Path, cfg: RunConfig, noise_multiplier: float) -> dict[str, object]:
    """ε spent per device from the ledgers' last claimed ε (max/median), with assumptions."""
    summary = _privacy_summary(ledger_dir, cfg, noise_multiplier)
    summary["algorithm"] = cfg.algorithm
    if cfg.privacy != "off":
        summary["randomness"] = (
            SEEDED_WARNING
            if cfg.reproducible
            else "OS entropy: the noise and the sampling of server and "
            "devices cannot be replayed from the config"
        )
    summary["evaluation"] = evaluation_summary(cfg)
    manifest = Path(ledger_dir).parent / "manifest.json"
    if cfg.privacy != "off" and manifest.is_file():
        from fedrec.common.audit.keystore import keystore_path

        keystore = keystore_path(Path(ledger_dir).parent, cfg.keystore)
        summary["keys"] = {
            "manifest": "manifest.json (the signed key registry and policy)",
            "receipts": "receipts.jsonl (the server's countersignatures)",
            "keystore": str(keystore),
            "operator_public_key": str(keystore / "server.pub.pem"),
            "operator_fingerprint": json.loads(manifest.read_text())["operator"]["fingerprint"],
        }
    algorithm = cfg.algorithm_class()
    if (
        cfg.privacy != "off"
        and len(algorithm.planned_releases(cfg)) > 1
        or algorithm.raw_statistics
        and cfg.privacy != "off"
    ):
        from fedrec.common.privacy.mechanisms import MECHANISMS

        if cfg.privacy == "user":
            summary["trust"] = (
                "SecAgg+ shows the server only the sum of a round's "
                "contributions (each of norm at most 1, clipped on the device); "
                "the server adds the noise to the sum and is trusted to"
            )
        else:
            summary["trust"] = MECHANISMS[cfg.privacy].trust
        sigmas = list(cfg.noise_multipliers())
        summary.update(
            {
                "mechanism": algorithm.summary,
                "noise_multiplier": sigmas,
                "sample_rate": cfg.fraction_train if cfg.privacy == "user" else 1.0,
            }
        )
    return summary


def evaluation_summary(cfg: RunConfig) -> dict[str, str]:
    """What the run's quality figures are, and what devices sent the server to evaluate."""
    if cfg.privacy == "off":
        federated = "exact metric sums (privacy off: nothing is promised)"
    elif cfg.federated_evaluation:
        federated = (
            f"a DP release per device and evaluation round: metric sums with "
            f"Gaussian noise (noise multiplier {cfg.eval_noise_multiplier:g} x "
            "sqrt(#metrics)), accounted in each device's ledger (purpose "
            "'evaluation') and in the calibration of the training noise"
        )
    else:
        federated = (
            "none: devices send no metric sums in this private run (set "
            "eval-noise-multiplier to release noised, accounted ones)"
        )
    return {"quality": MEASUREMENT_NOTE, "federated": federated}


def _privacy_summary(
    ledger_dir: Path, cfg: RunConfig, noise_multiplier: float
) -> dict[str, object]:
    if cfg.privacy == "off":
        return {"mode": "off", "guarantee": "none: updates are not differentially private"}
    if cfg.privacy == "user":
        server = Path(ledger_dir) / "server.jsonl"
        lines = server.read_text().splitlines() if server.exists() else []
        eps_user = float(json.loads(lines[-1])["claimed_epsilon"]) if lines else 0.0
        return {
            "mode": "user",
            "unit": "user (all of one device's data)",
            "relation": "add/remove",
            "delta": cfg.delta,
            "accountant": "pld (dp-accounting), Poisson-sampled Gaussian over rounds",
            "trust": "the server sees individual (clipped) updates and adds the noise; "
            "everything it publishes is user-level DP",
            "noise_multiplier": cfg.user_noise(),
            "max_grad_norm": cfg.user_clip,
            "sample_rate": cfg.fraction_train,
            "budget_epsilon": cfg.epsilon,
            "devices_with_releases": len(lines),
            "epsilon_max": eps_user,
            "epsilon_median": eps_user,
        }

    def last_claims(folder: Path) -> list[float]:
        eps = []
        for path in sorted(folder.glob("*.jsonl")):
            lines = path.read_text().splitlines()
            if lines:
                eps.append(float(json.loads(lines[-1])["claimed_epsilon"]))
        return eps

    extra: dict[str, object] = {}
    if cfg.privacy == "distributed":
        # what counts is the noise actually present in each secure sum (server-side ledgers);
        # the devices' own ledgers hold the noise they provisioned for
        eps = last_claims(Path(ledger_dir) / "secure-sum")
        provisioned = last_claims(Path(ledger_dir))
        trust = (
            "honest-but-curious server: SecAgg+ shows it only the sum of a round's "
            "updates, which carries the full noise; devices add 1/sqrt(k) of it each "
            f"(provisioned for {cfg.dropout_tolerance:.0%} dropouts)"
        )
        extra = {
            "epsilon_max_provisioned": max(provisioned) if provisioned else 0.0,
            "dropout_tolerance": cfg.dropout_tolerance,
            "ledgers": "ledgers/secure-sum (noise present), ledgers/ (device claims)",
        }
    else:
        eps = last_claims(Path(ledger_dir))
        trust = "none: each device adds its full noise; the server sees every update"
    return {
        "mode": cfg.privacy,
        "unit": "example (one interaction)",
        "relation": "add/remove",
        "delta": cfg.delta,
        "accountant": cfg.accountant,
        "trust": trust,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": cfg.max_grad_norm,
        "sample_rate": cfg.sample_rate,
        "budget_epsilon": cfg.epsilon,
        "devices_with_releases": len(eps),
        "epsilon_max": max(eps) if eps else 0.0,
        "epsilon_median": float(np.median(eps)) if eps else 0.0,
        **extra,
    }


def _finish(
    run_dir: RunDirectory,
    cfg: RunConfig,
    fed,
    rounds: list[dict[str, object]],
    sigma: float,
    *,
    wall: float,
    reference: bool = True,
    **extra: object,
) -> dict[str, object]:
    """Build, write and plot a run's summary.

    The final quality stands beside most-popular and, for a private run, beside the same
    algorithm and split without privacy (``reference``; :func:`non_private_reference`).
    """
    from fedrec.simulations.baselines import most_popular
    from fedrec.simulations.plots import plot_run

    non_private = non_private_reference(cfg) if reference and cfg.privacy != "off" else None
    summary = {
        "most_popular": most_popular(fed.split, ks=cfg.k_values),
        "non_private": non_private,
        "rounds": len(rounds),
        "devices": fed.n_users,
        "items": fed.n_items,
        "quality": next((r["eval"] for r in reversed(rounds) if "eval" in r), {}),
        "privacy": privacy_summary(run_dir.ledger_dir, cfg, sigma),
        "wall_seconds": wall,
        "refusals": int(sum(int(r.get("refused", 0)) for r in rounds)),
        "dropped": int(sum(int(r.get("dropped", 0)) for r in rounds)),
        **extra,
    }
    run_dir.write_json("summary.json", summary)
    references = {"most-popular": summary["most_popular"].get("ndcg@10")}
    if non_private:
        references["non-private"] = non_private.get("ndcg@10")
    plot_run(run_dir.path, references=references)
    return summary


def non_private_reference(cfg: RunConfig) -> dict[str, float]:
    """The final quality of ``cfg``'s algorithm on the same split without privacy.

    Run in-process (the plain loop), seeded from ``cfg.seed``, writing nothing; it is the
    reference every private figure is reported beside.
    """
    from fedrec.simulations.loop import run_plain

    ref = cfg.without_privacy().replace(run_dir="", eval_every=cfg.num_rounds)
    return dict(run_plain(ref).final)


def _loaded(cfg: RunConfig) -> tuple[RunConfig, Any]:
    """The run's data and ``cfg`` with its catalog-dependent defaults resolved.

    :meth:`~fedrec.common.config.RunConfig.with_catalog` runs before the server, the devices
    or the run directory see ``cfg``, so that all of them train the same dim.
    """
    fed = federated_dataset(cfg)
    return cfg.with_catalog(fed.n_items, fed.n_train_interactions), fed


def simulate(
    cfg: RunConfig,
    *,
    on_round: Callable[[dict[str, object]], None] | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    reference: bool = True,
    resume: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
) -> SimulationResult:
    """Run ``cfg`` on Flower's simulation engine; returns the result (also on disk).

    Args:
        cfg: the run configuration (``run_dir`` empty: a fresh ``runs/<timestamp>``; a
            directory that already holds a run is refused unless ``resume``).
        on_round: called with each round's record (for progress displays).
        num_cpus: CPUs Flower's Ray backend may use (default: all).
        verbose: show Flower's DEBUG log and the engine's known-harmless warnings (by
            default :func:`~fedrec.simulations.quiet.quiet_engine` silences them).
        reference: also train the non-private reference of a private run
            (:func:`non_private_reference`, in-process) for the summary, table and plot.
        resume: continue the stopped run in ``cfg.run_dir`` (``cfg`` from
            :func:`resume_config`): the server from its checkpoint, every device from its
            stored state and its ledger (:mod:`fedrec.server.resume`).
        workers: SuperNodes that each host a shard of the devices (cohort workers,
            :mod:`fedrec.simulations.workers`; default: the CPU count); 0: one SuperNode per
            device, secure sums over Flower's SecAgg+ (as deployed).
        ray_address: run on the existing Ray cluster whose head is at this ``host:port``
            (docs/cluster.md; a ValueError if none answers there), one CPU a worker, with
            ``num_cpus`` ``None``; the run's paths, made absolute, must name the same
            folders on every node.
    """
    from flwr.simulation import run_simulation

    from fedrec.simulations.apps import make_apps, state_store
    from fedrec.simulations.workers import release_memory

    t0 = time.perf_counter()
    backend_config = _backend_config(num_cpus, ray_address)  # an unreachable cluster: now
    cfg = _absolute_paths(cfg) if ray_address else cfg
    cfg, run_dir = _open_run(cfg, resume)
    cfg, fed = _loaded(cfg)  # fail early on bad data, before Ray starts
    sigma = resolve_noise_multiplier(cfg)
    workers = _workers(run_dir, workers, fed.n_users, resume)
    _write_config(run_dir, cfg, fed, sigma, "flower", resume=resume, workers=workers)
    state_store(cfg).device_ids()  # created (or checked) before any device opens it
    result = SimulationResult(run_dir=run_dir.path, config=cfg)
    if resume:
        result.rounds = _earlier_records(run_dir)

    def record(r: dict[str, object]) -> None:
        result.rounds.append(r)
        if on_round is not None:
            on_round(r)
        release_memory()  # the round's freed heap (accounting, sums) back, as the workers do

    nodes: dict[int, int] = {}
    server_app, client_app = make_apps(
        cfg, on_round=record, resume=resume, nodes=lambda: dict(nodes), workers=workers
    )
    with _engine(cfg, fed, verbose=verbose, nodes=nodes, workers=workers, backend=backend_config):
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=workers or fed.n_users,
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    if len(result.rounds) < cfg.num_rounds:
        raise RuntimeError(
            f"the simulation ended after {len(result.rounds)} of {cfg.num_rounds} rounds; see "
            f"the log above for the error Flower reported (continue it with `fedrec simulate "
            f"--resume {run_dir.path}`)"
        )
    wall = time.perf_counter() - t0
    result.summary = _finish(
        run_dir, cfg, fed, result.rounds, sigma, wall=wall, reference=reference, workers=workers
    )
    return result


@contextmanager
def _engine(
    cfg: RunConfig,
    fed: Any,
    *,
    verbose: bool,
    nodes: dict[int, int],
    workers: int,
    backend: dict[str, Any],
) -> Iterator[None]:
    """What the engine runs within: quiet, its nodes recorded, Ray's head started lean.

    With cohort workers, also their messages picked up, and replies pulled, as soon as they are
    stored (:func:`~.engine_wakeups.prompt_engine`), and the
    devices' data written for them to map (:func:`~.workers.share_population`; removed after,
    a resumed run writes it again).
    """
    from fedrec.simulations.engine_wakeups import PICKUP_INTERVAL, prompt_engine
    from fedrec.simulations.quiet import quiet_engine
    from fedrec.simulations.workers import share_population

    shared = share_population(cfg, fed) if workers else None
    if workers and "num_cpus" in backend["init_args"]:
        _cap_cpus(backend, workers)
    pickup = PICKUP_INTERVAL if workers else None  # one node per device: Flower's own loops
    try:
        with quiet_engine(verbose), _recording_nodes(nodes), prompt_engine(pickup):
            with _lean_ray_head(backend):
                yield
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


@contextmanager
def _lean_ray_head(backend_config: dict[str, Any]) -> Iterator[None]:
    """Start ``backend_config``'s Ray instance (``address="local"``) without unused services.

    The engine joins it, and it stops after.

    ``ray.init`` starts an autoscaler monitor and a log monitor (about 50 MB each) that no
    option of its turns off; Ray's own ``Node`` (as ``ray.cluster_utils.Cluster`` starts
    one) is started here with ``no_monitor`` and ``include_log_monitor=False``. Where that
    fails (another Ray), the engine starts Ray itself, as before. A cluster
    (``--ray-address``) is left as it is.
    """
    init_args = dict(backend_config["init_args"])
    if init_args.get("address") != "local":
        yield
        return
    try:
        from ray._private.node import Node
        from ray._private.parameter import RayParams

        params = RayParams(
            num_cpus=init_args["num_cpus"],
            num_gpus=0,
            include_dashboard=False,
            include_log_monitor=False,
            no_monitor=True,
            _system_config=init_args.get("_system_config"),
        )
        node = Node(params, head=True, shutdown_at_exit=False, spawn_reaper=True)
    except Exception as exc:  # noqa: BLE001 - Ray's private API moved: Ray's own start
        log.debug("a lean Ray head did not start (%r); ray.init starts Ray", exc)
        yield
        return
    joined = {k: v for k, v in init_args.items() if k not in _HEAD_ONLY}
    backend_config["init_args"] = {**joined, "address": node.address}
    try:
        yield
    finally:
        backend_config["init_args"] = init_args
        import ray

        ray.shutdown()  # the engine's own shutdown, if it has not run (an error)
        node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)


def _cap_cpus(backend_config: dict[str, Any], workers: int) -> None:
    """At most ``workers`` CPUs for the Ray instance fedrec starts.

    Flower's backend starts one ClientApp process per CPU; one beyond the cohort workers
    would idle (about 115 MB resident).
    """
    init_args = backend_config["init_args"]
    init_args["num_cpus"] = min(int(init_args["num_cpus"]), workers)


#: The largest message (and reply) Ray passes inline with its call rather than through its
#: shared-memory object store (Ray's default: 100 KB). A cohort worker's message holds the
#: item table (215 KB at ML-100K's 1,682 items and d = 32) and a secure round's reply the
#: float64 partial sum (430 KB); an actor call with those two took 9.3-9.7 ms through the
#: store and 2.6-3.0 ms inline (medians of 200 calls, 2 shared cores). Larger ones still go
#: through it.
INLINE_BYTES = 4 << 20

#: ``ray.init`` arguments that size a new instance: refused when joining one.
_HEAD_ONLY = ("num_cpus", "num_gpus", "_system_config")


def _workers(run_dir: RunDirectory, workers: int | None, n_devices: int, resume: bool) -> int:
    """The run's cohort workers (0: one SuperNode per device); a resume keeps the run's mode.

    Per-device state is keyed by device index with workers and by node id without them (the
    secure-sum ledgers' names), so a resume may change the number of workers, not the mode.
    """
    from fedrec.simulations.workers import default_workers

    stored = None
    if resume and (run_dir.path / "config.json").is_file():
        stored = json.loads((run_dir.path / "config.json").read_text()).get("workers")
    if workers is None:
        workers = default_workers() if stored is None else int(stored)
    if workers < 0:
        raise ValueError(f"workers must be 0 (one SuperNode per device) or more, got {workers}")
    if stored is not None and (int(stored) == 0) != (workers == 0):
        raise ValueError(
            f"--resume continues the run in its own mode: {run_dir.path} ran with --workers "
            f"{stored}, --workers {workers} given; drop --workers"
        )
    return min(workers, n_devices)


def _backend_config(num_cpus: int | None, ray_address: str | None = None) -> dict[str, object]:
    """Flower's Ray backend: one CPU per ClientApp, ``num_cpus`` (default: all) in all.

    Without ``ray_address`` the engine starts its own Ray instance (``address="local"``: never
    one that ``RAY_ADDRESS`` or an earlier ``ray start`` names); with it, the engine joins that
    cluster, whose nodes set the CPUs (:func:`ray_cluster_address` checks it first).
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    quiet = {"include_dashboard": False, "logging_level": "error", "log_to_driver": False}
    if ray_address:
        if num_cpus is not None:
            raise ValueError(
                "--cpus sizes the Ray instance fedrec starts on this machine; on a cluster "
                "(--ray-address) each node sets its own (`ray start --num-cpus N`): drop --cpus"
            )
        init_args: dict[str, object] = {"address": ray_cluster_address(ray_address), **quiet}
    else:
        cpus = num_cpus or os.cpu_count() or 1
        # Ray starts its workers at nice 15, so on a busy machine every other process
        # (the driver included) comes first and a round waits on its workers; the workers
        # are the simulation's training, at the driver's priority here
        init_args = {"address": "local", "num_cpus": cpus, "num_gpus": 0, **quiet}
        init_args["_system_config"] = {
            "worker_niceness": 0,
            "max_direct_call_object_size": INLINE_BYTES,
        }
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its paths absolute: a worker on another node resolves them from elsewhere.

    The workers read the data and the keystore and write the device store and ledgers (in
    the run directory), so each path must name the same folder on every node.
    """
    paths = {"run_dir": cfg.run_dir or str(new_run_dir())}
    paths.update({"data_dir": cfg.data_dir} if cfg.data_dir else {})
    paths.update({"keystore": cfg.keystore} if cfg.keystore else {})
    return cfg.replace(**{k: str(Path(v).absolute()) for k, v in paths.items()})


def ray_cluster_address(address: str, *, timeout: float = 5.0) -> str:
    """The ``host:port`` of the Ray cluster ``address`` names, checked to answer.

    Checked here, because Ray itself retries an unreachable address for minutes. Ray's
    ``auto`` is refused: it may join any Ray instance running on the machine (another
    user's simulation, on a shared one).

    Raises:
        ValueError: one line: the address is malformed, or no cluster answers there.
    """
    import socket

    from ray._private.services import canonicalize_bootstrap_address

    hint = (
        "start one with `ray start --head` and pass the address it prints "
        "(host:6379; docs/cluster.md)"
    )
    if address in ("auto", "local", ""):
        raise ValueError(f"--ray-address {address!r}: give the head's host:port; {hint}")
    if address.startswith("ray://"):
        raise ValueError(
            f"--ray-address {address}: Ray Client (ray://) addresses are not supported; run "
            "fedrec on a node of the cluster and pass the head's address (host:6379)"
        )
    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"--ray-address {address}: {reason}; {hint}") from None
    if resolved is None:
        raise ValueError(f"--ray-address {address}: names no cluster; {hint}")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(
            f"--ray-address {address}: no Ray cluster answers at {resolved} "
            f"({exc.strerror or exc}); {hint}"
        ) from None
    return resolved


@contextmanager
def _recording_nodes(into: dict[int, int]) -> Iterator[None]:
    """Record the node id -> partition map Flower's simulation engine registers.

    The engine gives its SuperNodes random node ids each time it starts; the server keys
    what it keeps per device by partition (device index) through this map, so that a
    resumed run finds its devices again (:mod:`fedrec.server.resume`).
    """
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api._register_nodes

    def register(*args: Any, **kwargs: Any) -> Any:
        mapping = original(*args, **kwargs)
        into.update({int(k): int(v) for k, v in mapping.items()})
        return mapping

    vce_api._register_nodes = register
    try:
        yield
    finally:
        vce_api._register_nodes = original


def _open_run(cfg: RunConfig, resume: bool) -> tuple[RunConfig, RunDirectory]:
    """The run's configuration and directory: a new one, or (resuming) the stopped run's.

    Raises:
        RunExistsError: a new run into a directory that already holds one.
        ValueError: resuming a run that is finished.
    """
    if resume:
        path = Path(cfg.run_dir)
        if (path / "summary.json").is_file():
            raise ValueError(
                f"{path} is finished (summary.json written): nothing to resume; start a new run "
                "with a new --run-dir"
            )
        return cfg, RunDirectory(path)
    cfg = cfg.replace(run_dir=str(cfg.run_dir or new_run_dir()))
    refuse_existing(cfg.run_dir)
    return cfg, RunDirectory(cfg.run_dir)


def _earlier_records(run_dir: RunDirectory) -> list[dict[str, object]]:
    """The round records of a stopped run's checkpoint (none if it finished no round)."""
    if not run_dir.checkpoint_path.is_file():
        return []
    return list(run_dir.read_checkpoint()[3].get("records", []))  # type: ignore[arg-type]


def run_state(run_dir: str | Path) -> str:
    """``"finished"``, ``"stopped"`` (a run that can be resumed) or ``"empty"``."""
    path = Path(run_dir)
    if (path / "summary.json").is_file():
        return "finished"
    return "stopped" if holds_run(path) else "empty"


def resume_config(
    run_dir: str | Path, given: Mapping[str, object] | None = None, engine: str | None = None
) -> tuple[RunConfig, str]:
    """The configuration and engine of the stopped run in ``run_dir`` (for ``--resume``).

    ``given`` (kebab-case keys) and ``engine`` are what the command line also named: a
    resume takes the run's own configuration, so any that differs from it is refused.

    Raises:
        FileNotFoundError: ``run_dir`` holds no run configuration.
        ValueError: ``given`` or ``engine`` differ from the run's.
    """
    path = Path(run_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path} holds no config.json: not a run directory, or a run stopped before it "
            "started (nothing to resume: start a new run with a new --run-dir)"
        )
    saved = json.loads(config_file.read_text())
    flat = {**saved["run_config"], "run-dir": str(path)}
    cfg = RunConfig.from_flat(flat)
    theirs = cfg.to_flat()
    if given:
        ours = RunConfig.from_flat({**flat, **given}).to_flat()
        changed = [k for k in ours if ours[k] != theirs[k] and k != "run-dir"]
        if changed:
            k = changed[0]
            raise ValueError(
                f"--resume continues the run with its own configuration ({config_file}): "
                f"{k} is {theirs[k]!r} there, {ours[k]!r} given; drop the option, or start a "
                "new run with a new --run-dir"
            )
    stored = str(saved.get("engine") or _manifest_engine(path) or "flower")
    if engine is not None and engine != stored:
        raise ValueError(
            f"--resume continues the run on its own engine: {path} ran on {stored!r}, "
            f"--engine {engine} given; drop --engine"
        )
    return cfg, stored


def _manifest_engine(path: Path) -> str | None:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("run", {}).get("engine")


def _write_config(
    run_dir: RunDirectory,
    cfg: RunConfig,
    fed,
    sigma: float,
    engine: str,
    *,
    resume: bool = False,
    workers: int | None = None,
) -> None:
    """The run directory's ``config.json`` (resolved configuration, noise, sizes, versions).

    A private run also enrolls its devices: :func:`enroll` writes the signed manifest. A
    resumed run keeps both (it enrolls only if the run stopped before its manifest).
    """
    from fedrec.common.audit.ledger import library_versions

    if resume:
        if cfg.privacy != "off" and not (run_dir.path / "manifest.json").is_file():
            enroll(run_dir.path, cfg, fed.n_users, engine=engine)
        return
    run_dir.write_json(
        "config.json",
        {
            "run_config": cfg.to_flat(),
            "noise_multiplier": sigma,
            "devices": fed.n_users,
            "items": fed.n_items,
            "interactions": len(fed.data),
            "engine": engine,
            **({} if workers is None else {"workers": workers}),
            "versions": library_versions(),
        },
    )
    if cfg.privacy != "off":
        enroll(run_dir.path, cfg, fed.n_users, engine=engine)


def enroll(run_dir: Path, cfg: RunConfig, n_devices: int, *, engine: str) -> dict[str, str]:
    """Enroll a simulation's devices before any trains: the signed manifest and key registry.

    Device keys and the operator key come from the run's keystore, outside the run directory
    (:mod:`fedrec.common.audit.keystore`); ``RUN/manifest.json`` pins their public halves and
    the run's policy (:mod:`fedrec.common.audit.manifest`). Returns the keystore's path and the
    operator key's fingerprint (what an auditor should be given out of band).
    """
    from fedrec.common.audit.keystore import Keystore, fingerprint
    from fedrec.common.audit.manifest import policy_of, write_manifest
    from fedrec.common.privacy.mechanisms import MECHANISMS
    from fedrec.simulations.federation import device_id

    keystore = Keystore.for_run(run_dir, cfg.keystore)
    run, store = Path(run_dir).absolute(), keystore.path.absolute()
    if store == run or run in store.parents:
        raise ValueError(
            f"keystore {keystore.path} is inside the run directory {run_dir}: the run directory "
            "is what gets published, so private keys must live elsewhere (set keystore to a "
            "folder outside it, or leave it empty for RUN-DIR.keystore)"
        )
    operator = keystore.server_key()
    devices = {device_id(u): keystore.device_key(device_id(u)) for u in range(n_devices)}
    write_manifest(
        run_dir,
        policy=policy_of(cfg),
        run={
            "engine": engine,
            "algorithm": cfg.algorithm,
            "rounds": cfg.num_rounds,
            "fraction_train": cfg.fraction_train,
            "reproducible": cfg.reproducible,
        },
        trust=MECHANISMS[cfg.privacy].trust,
        device_keys=devices,
        operator_key=operator,
    )
    return {"keystore": str(keystore.path), "operator_fingerprint": fingerprint(operator)}


def simulate_loop(
    cfg: RunConfig,
    *,
    on_round: Callable[[dict[str, object]], None] | None = None,
    reference: bool = True,
    resume: bool = False,
) -> tuple[dict[str, object], Path]:
    """The same run with the plain loop of :mod:`fedrec.simulations.loop` (in-process).

    ``reference`` and ``resume`` as in :func:`simulate`.
    """
    from fedrec.simulations.loop import run_plain

    t0 = time.perf_counter()
    cfg, run_dir = _open_run(cfg, resume)
    cfg, fed = _loaded(cfg)
    sigma = resolve_noise_multiplier(cfg)
    _write_config(run_dir, cfg, fed, sigma, "loop", resume=resume)
    res = run_plain(cfg, on_round=on_round, run_dir=run_dir, resume=resume)
    run_dir.save_final(res.state, fed.data.item_map.to_list())
    summary = _finish(
        run_dir,
        cfg,
        fed,
        res.rounds,
        sigma,
        wall=time.perf_counter() - t0 if resume else res.seconds,
        reference=reference,
        central_evaluation=res.final,
        engine="loop",
    )
    return summary, run_dir.path
