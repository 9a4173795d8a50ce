"""The typed run configuration, parsed once at the edge.

Flower passes a run's configuration as a flat mapping with kebab-case keys (the
``[tool.flwr.app.config]`` table of ``pyproject.toml``, or ``--run-config`` overrides);
``fedrec simulate`` builds the same mapping from its command line. :meth:`RunConfig.from_flat`
turns it into one typed object, validating every field, and :meth:`RunConfig.to_flat` gives
it back (what a run directory's ``config.json`` holds).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from fedrec.common.algorithms.registry import REGISTRY

if TYPE_CHECKING:  # imported lazily: parsing a config must not import torch
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig

__all__ = [
    "RunConfig",
    "PRIVACY_MODES",
    "DEVICE_DP_MODES",
    "SERVER_OPTIMIZERS",
    "ALGORITHMS",
    "DeploymentSettings",
    "DEPLOYMENT_DEFAULTS",
    "split_run_config",
    "load_catalog_file",
    "catalog_fingerprint",
    "CATALOG_FINGERPRINT_KEY",
    "NODE_ID_META",
]

PRIVACY_MODES = ("off", "local", "distributed", "user")
#: Modes in which devices run example-level DP-SGD (and keep an accountant and a ledger).
DEVICE_DP_MODES = ("local", "distributed")
SERVER_OPTIMIZERS = ("fedavg", "fedadam")
#: The registered algorithms (:mod:`fedrec.common.algorithms.registry`; one module each).
ALGORITHMS = tuple(REGISTRY)


def _doc(text: str, **kw: object) -> object:
    return field(metadata={"doc": text}, **kw)


def default_dim(privacy: str, n_items: int | None = None, interactions: int | None = None) -> int:
    """The embedding dimension a run takes when ``dim`` is not set.

    Under DP: 8. Every DP release here (the spectral warm start's eigenvectors, DP-SGD's
    noised item table) adds noise per coordinate, so at a fixed ε a smaller embedding keeps
    more signal per coordinate. Measured with ``warm-sgd`` on ML-100K (``fedrec simulate
    --engine loop``, seed 0, reproducible, NDCG@10, at 9e4bd02): distributed ε 1 0.135 at
    d 8, 0.132 at d 16; ε 8 0.165 at d 8, 0.168 at d 16 (and before 9e4bd02, ε 3 0.154 at
    d 8, 0.149 at d 16; user-level ε 8 0.152 at d 8, 0.146 at d 16).

    Without privacy: a function of the catalog size ``n_items`` (public), the rule of thumb
    of an embedding about twice the fourth root of the vocabulary, ``2·n_items^¼``, rounded
    to a power of two and kept within 8..64 (16 when the catalog is not known yet). A larger
    embedding than the data supports adds directions fitted to sampling noise: the
    non-private warm start on the 400-item synthetic catalog with 10,000 devices reached
    NDCG@10 0.4086 at d 8 and 0.3608 at d 16 (centralized MF 0.4417), on the ML-100K users
    with at most 40 interactions (868 items) 0.1130 at d 8 and 0.1099 at d 16, while
    ML-100K itself (1,682 items) wants 16: 0.167 at d 8, 0.184 at d 16, 0.175 at d 32. The
    rule gives 8 for catalogs under 1,024 items, 16 under 16,384, 32 under 262,144, and 64
    from there. The same for every dataset; an algorithm's own default (``features``:
    64) comes first.

    When the number of training ``interactions`` is known too (a run without privacy sees
    all its data: the simulations pass it), the embedding is also at most ``4·√m``, with ``m``
    the interactions per catalog item, rounded the same way and at least 8: each direction is
    estimated from the items' co-occurrences, and with few observations per item the extra
    directions fit sampling noise. The synthetic 10,000-item catalog with 1,000 devices
    (``m`` 3.2, ``fedrec shapes --shapes items-10k``, warm-sgd, seeds 0 / 1 / 2, centralized
    MF 0.1786 / 0.2020 / 0.1898) reached 0.1916 / 0.2072 / 0.2062 at d 8 against 0.1613 /
    0.1703 / 0.1777 at d 16 and 0.1376 / 0.1463 / 0.1515 at d 32; ML-100K (``m`` 48) keeps 16.
    """
    if privacy != "off":
        return 8
    if n_items is None:
        return 16
    dims = [2.0 * max(int(n_items), 1) ** 0.25]
    if interactions is not None:
        dims.append(4.0 * math.sqrt(max(int(interactions), 1) / max(int(n_items), 1)))
    power = math.floor(math.log2(min(dims)) + 0.5)
    return int(min(max(2**power, 8), 64))


@functools.lru_cache(maxsize=64)
def _reads_recency(privacy: str, power: float, algorithm: str) -> bool:
    """:meth:`RunConfig.reads_recency`, looked up once per setting (simulations ask per device)."""
    from fedrec.common.algorithms.registry import algorithm_class

    return privacy == "user" and power > 0 and algorithm_class(algorithm).uses_recency


@dataclass
class RunConfig:
    """Every setting of a federated run. Field names map to kebab-case keys.

    The defaults are the recipe that worked best for local (example-level) DP in our
    measurements: a small embedding (noise is per coordinate), full-batch local steps over
    several local epochs, few participations per device (each one costs budget), BCE with
    four negatives, a fixed step normalisation and a large server step. An algorithm
    overrides what it needs with its own
    :attr:`~fedrec.common.algorithms.base.Algorithm.defaults` (functions of public
    quantities, the same for every dataset); nothing is keyed by a dataset's name. The sweep
    (:mod:`fedrec.simulations.sweep`) and the development shapes
    (:mod:`fedrec.simulations.shapes`) run the algorithms with exactly these defaults.

    Use :meth:`from_flat` to parse Flower's ``run_config``; unknown keys are an error (a typo
    must not silently fall back to a default).
    """

    #: kebab-case keys that took a privacy-dependent default in :meth:`from_flat` (so that
    #: :meth:`without_privacy` gives them the non-private default)
    _privacy_defaults: ClassVar[frozenset[str]] = frozenset()
    #: the catalog size :meth:`with_catalog` resolved the defaults with (``None``: not yet)
    _catalog: ClassVar[int | None] = None
    #: the training interactions :meth:`with_catalog` was given (``None``: not known)
    _interactions: ClassVar[int | None] = None

    # data
    dataset: str = _doc(
        "dataset name: synthetic, ml-100k, ml-1m, ml-latest(-small), recbole, events",
        default="synthetic",
    )
    data_dir: str = _doc(
        "where the dataset's files are: a folder, or the file of dataset events (unused for "
        "synthetic)",
        default="",
    )
    events_user_col: str = _doc(
        "dataset events: the column of the user ids (fedrec simulate --columns user=COL)",
        default="",
    )
    events_item_col: str = _doc("dataset events: the column of the item ids", default="")
    events_weight_col: str = _doc(
        "dataset events: a numeric column of weights ('' = every event weighs 1)", default=""
    )
    events_timestamp_col: str = _doc(
        "dataset events: a column of times, unix seconds or ISO-8601 ('' = file order)",
        default="",
    )
    events_sep: str = _doc(
        "dataset events, CSV: the field separator ('' = tab for .tsv files, else comma; "
        "'tab' for a tab)",
        default="",
    )
    synthetic_users: int = _doc("users of the synthetic dataset", default=500)
    synthetic_items: int = _doc("items of the synthetic dataset", default=400)
    split: str = _doc("temporal (DESIGN.md protocol) or random", default="temporal")
    population: int = _doc(
        "simulated devices in all: 0 = one per user; more adds synthetic train-only devices "
        "resampled from the real users' training data (evaluation stays on the real users)",
        default=0,
    )
    seed: int = _doc(
        "seed of the data (synthetic generation, splits) and, with reproducible=true, of the "
        "DP noise and sampling too",
        default=0,
    )
    reproducible: bool = _doc(
        "seed the DP noise and sampling of server and devices with `seed`, so that a run "
        "repeats exactly; its summary, ledgers and audit then say it is NOT private against "
        "anyone who knows the seed. Default false: noise and sampling from OS entropy",
        default=False,
    )
    # rounds
    num_rounds: int = _doc("federated rounds", default=8)
    fraction_train: float = _doc("fraction of devices sampled per training round", default=0.5)
    eval_every: int = _doc("federated evaluation every this many rounds (and the last)", default=4)
    fraction_evaluate: float = _doc("fraction of devices asked to evaluate", default=1.0)
    eval_noise_multiplier: float = _doc(
        "private runs (local, distributed): noise multiplier of each device's federated "
        "evaluation release (its metric sums, sensitivity sqrt(#metrics)); the releases are "
        "accounted and the training noise is calibrated so that training and the planned "
        "evaluations spend epsilon together. 0: no federated evaluation in private runs (a "
        "simulation's quality is then measured by the simulator, which releases nothing)",
        default=0.0,
    )
    ks: str = _doc("comma-separated cut-offs K of the ranking metrics", default="10,20")
    # model
    dim: int = _doc(
        "embedding dimension; unset, it is default_dim(privacy, catalog size): 8 under DP "
        "(noise is per coordinate); with privacy off 2 x the catalog's fourth root as a power "
        "of two within 8..64 (8 under 1,024 items, 16 under 16,384), and at most 4 x the "
        "square root of the training interactions per item where the run knows them",
        default=8,
    )
    item_bias: bool = _doc("learn item biases (global)", default=True)
    init_std: float = _doc("initialisation scale of embeddings", default=0.1)
    # algorithm
    algorithm: str = _doc(
        "warm-sgd (a spectral warm start, then rounds of Opacus DP-SGD that fine-tune it; "
        "the main job's) or "
        "sgd (rounds of local (DP-)SGD on the MF model) or spectral (two rounds: a DP item "
        "popularity count, then a DP co-occurrence matrix of the top items, eigendecomposed into "
        "the item embeddings; needs num-rounds 2) or features (one round: a DP item popularity "
        "count; the item embeddings are the catalog's public genres and release years, and "
        "each device weighs them by its own history; needs num-rounds 1 and item metadata)",
        default="sgd",
    )
    spectral_top_items: int = _doc(
        "spectral, warm-sgd: items selected by DP popularity for the co-occurrence round; 0 "
        "(automatic): 2.8 x sqrt(S / sigma) between dim and 500 (500 without privacy), sigma "
        "the co-occurrence round's noise multiplier, S the devices in the popularity round "
        "(user-level) or min(the DP popularity's total, devices x spectral-max-items) / "
        "(2 sqrt(spectral-max-items)) (example-level) (fedrec.common.algorithms.spectral."
        "selection_size)",
        default=0,
    )
    spectral_max_items: int = _doc(
        "spectral, example-level DP: a device contributes at most this many of its items to "
        "the co-occurrence round (drawn at random); bounds its sensitivity",
        default=100,
    )
    spectral_popularity_share: float = _doc(
        "spectral: fraction of the privacy budget (of 1/sigma^2) spent on the popularity count",
        default=0.2,
    )
    popularity_recency: float = _doc(
        "spectral and warm-sgd, user-level DP: a device weighs each item of its popularity "
        "release by the item's recency in its own history (in (0, 1), latest near 1) to this "
        "power, then scales the whole to norm 1; 0 = every item alike. Other modes, and "
        "user-level runs whose popularity noise multiplier exceeds 7 (warm-sgd: eps under "
        "about 1.4 at delta 1e-5), send the 0/1 indicator. A device whose history has no "
        "order (equal timestamps) weighs its items alike",
        default=2.0,
    )
    feature_scale: float = _doc(
        "features: how strongly a device tilts popularity towards its own genres and eras",
        default=2.0,
    )
    feature_smoothing: float = _doc(
        "features: smoothing of the log-ratio of the device's and the catalog's profiles",
        default=0.01,
    )
    feature_year_bins: int = _doc(
        "features: release-year bins (quantiles of the catalog's years); 0 = genres only",
        default=10,
    )
    # local training
    local_epochs: float = _doc(
        "expected passes over a device's interactions per round", default=10.0
    )
    sample_rate: float = _doc("Poisson sampling rate of a device's examples per step", default=1.0)
    local_lr: float = _doc("local learning rate", default=0.5)
    local_optimizer: str = _doc("local optimizer: sgd or adam", default="sgd")
    loss: str = _doc("bpr or bce", default="bce")
    n_negatives: int = _doc("negatives per positive for bce", default=4)
    l2: float = _doc("per-example L2 penalty on gathered rows", default=0.0)
    user_lr_scale: float = _doc(
        "user-embedding learning rate as a multiple of local-lr", default=1.0
    )
    batch_size_norm: float = _doc(
        "divide each step's summed gradient by this constant, the same on every device (a "
        "divisor that depended on the device's data size would reveal it)",
        default=40.0,
    )
    fold_in: str = _doc(
        "how a device sets its user embedding to rank items: trained (the embedding local "
        "training left) or solve (a logistic fit of the device's own items against the final "
        "item table, on the device: nothing leaves it, no privacy cost)",
        default="solve",
    )
    warm_start_share: float = _doc(
        "algorithm warm-sgd: fraction of the privacy budget (of 1/sigma^2) spent on the "
        "spectral warm start; the rest goes to the DP-SGD rounds",
        default=0.8,
    )
    # privacy
    privacy: str = _doc(
        "off; local (example-level: each device adds its full DP-SGD noise, server untrusted); "
        "distributed (example-level: each device adds a share of the noise, SecAgg+ shows the "
        "server only the sum, which carries the full noise; server honest-but-curious); "
        "user (user-level DP-FedAvg: whole updates clipped, noise on the aggregate by a "
        "trusted server, Poisson device sampling)",
        default="local",
    )
    epsilon: float = _doc("each device's example-level epsilon budget", default=8.0)
    delta: float = _doc("delta of the (epsilon, delta) guarantee", default=1e-5)
    noise_multiplier: float = _doc(
        "DP-SGD noise multiplier; 0 = calibrate so that planned participations spend epsilon",
        default=0.0,
    )
    max_grad_norm: float = _doc("per-example clipping norm", default=1.0)
    accountant: str = _doc("device accountant: prv or rdp", default="prv")
    dropout_tolerance: float = _doc(
        "distributed DP: fraction of a round's sampled devices that may drop out while the "
        "secure sum still carries the full noise (each device adds 1/sqrt(survivors) of it)",
        default=0.1,
    )
    dropout_policy: str = _doc(
        "distributed DP, when more devices drop out than provisioned: abort (never unmask a "
        "sum with less than the full noise; the round is skipped) or account (use the sum and "
        "account the smaller noise actually present, which may exceed the budget)",
        default="abort",
    )
    simulated_dropout: float = _doc(
        "simulations: probability that a sampled device goes offline mid-round (after SecAgg+ "
        "key sharing), to study dropouts",
        default=0.0,
    )
    user_clip: float = _doc(
        "user-level DP: L2 clipping norm of a device's whole update", default=1.0
    )
    user_noise_multiplier: float = _doc(
        "user-level DP: noise multiplier on the sum; 0 = calibrate to epsilon over num-rounds",
        default=0.0,
    )
    # server
    server_optimizer: str = _doc("fedavg (server learning-rate step) or fedadam", default="fedavg")
    server_lr: float = _doc("server learning rate applied to the aggregated delta", default=24.0)
    server_beta1: float = _doc("FedAdam beta1", default=0.9)
    server_beta2: float = _doc("FedAdam beta2", default=0.99)
    server_tau: float = _doc("FedAdam adaptivity tau", default=1e-3)
    max_update_norm: float = _doc("replies whose delta norm exceeds this are dropped", default=1e4)
    robust_aggregation: str = _doc(
        "defence against poisoned updates where the server sees each one (privacy off, "
        "local): none (the mean), trimmed-mean (coordinate-wise, robust-trim dropped at each "
        "end) or median (coordinate-wise); see docs/poisoning.md",
        default="none",
    )
    robust_trim: float = _doc(
        "trimmed-mean: fraction of a round's updates dropped at each end of every coordinate",
        default=0.1,
    )
    row_clip: float = _doc(
        "defence: L2 bound on each item's row (embedding and bias) of an update; 0 = none. "
        "privacy off, local: the server clips every reply; user: each device clips its own "
        "and the SecAgg+ range shrinks to it; distributed: each device clamps its DP-SGD "
        "steps' sums so that no coordinate of its update's signal exceeds it, and the range "
        "shrinks with it (fedrec.common.robust.row_norm_bound derives a bound from public "
        "quantities)",
        default=0.0,
    )
    # output
    run_dir: str = _doc("directory of this run's outputs ('' = runs/<timestamp>)", default="")
    keystore: str = _doc(
        "folder of a simulation's private keys (the operator key, the simulated devices' "
        "keys), kept out of the published run directory ('' = the sibling folder "
        "RUN-DIR.keystore)",
        default="",
    )

    def __post_init__(self) -> None:
        from fedrec.common.config_checks import check_defences, check_fields

        check_fields(self)  # every key: type, finite, range (LIMITS)
        check_defences(self)
        _ = self.k_values  # validate
        if self.dataset != "events":
            for key in ("events_user_col", "events_item_col", "events_weight_col"):
                if getattr(self, key):
                    raise ValueError(
                        f"run-config key {key.replace('_', '-')!r} is set but dataset is "
                        f"{self.dataset!r}: a column mapping applies to dataset events only"
                    )
        self.algorithm_class().check(self)
        from fedrec.common.privacy.mechanisms import refusal

        reason = refusal(self.algorithm_class(), self)
        if reason is not None:
            raise ValueError(reason)

    def check_feasible(
        self, *, n_devices: int | None = None, max_examples: int | None = None
    ) -> None:
        """Raise ``ValueError`` if the run cannot work (before a simulation trains).

        :func:`fedrec.common.config_checks.check_feasible`: a budget one calibration can meet
        and that affords a round, noise devices accept, local steps and δ within bounds.
        ``n_devices`` and ``max_examples`` (the most examples one device holds) add the
        checks of δ against the population, where they are known.
        """
        from fedrec.common.config_checks import check_feasible

        check_feasible(self, n_devices=n_devices, max_examples=max_examples)

    @property
    def known_devices(self) -> int | None:
        """The run's device count when it is known without loading data (synthetic data)."""
        if self.dataset != "synthetic":
            return None
        return max(self.population, self.synthetic_users)

    # --- derived ---------------------------------------------------------------------------
    @property
    def k_values(self) -> tuple[int, ...]:
        """The metric cut-offs as integers."""
        expected = "comma-separated whole numbers in [1, 100000], e.g. '10,20'"
        try:
            ks = tuple(int(k) for k in str(self.ks).split(",") if k.strip())
        except ValueError:
            raise ValueError(f"run-config key 'ks' = {self.ks!r}: expected {expected}") from None
        if not ks or min(ks) < 1 or max(ks) > 100_000:
            raise ValueError(f"run-config key 'ks' = {self.ks!r}: expected {expected}")
        return ks

    def noise_source(self):
        """The server's :class:`~fedrec.common.privacy.randomness.NoiseSource` for this run.

        Seeded from ``seed`` when ``reproducible`` is set or privacy is off (nothing to
        protect), else from OS entropy.
        """
        from fedrec.common.privacy.randomness import NoiseSource

        if self.reproducible or self.privacy == "off":
            return NoiseSource.seeded(self.seed)
        return NoiseSource.secure()

    @property
    def device_seed(self) -> int | None:
        """The seed simulated devices draw their noise and sampling from (None: OS entropy)."""
        return self.seed if self.reproducible or self.privacy == "off" else None

    def algorithm_class(self):  # noqa: ANN201 - a type[Algorithm]; imported lazily
        """The registered class of ``algorithm``."""
        from fedrec.common.algorithms.registry import algorithm_class

        return algorithm_class(self.algorithm)

    def noise_multipliers(self) -> tuple[float, ...]:
        """The noise multiplier of each planned release (zeros with privacy off).

        :func:`fedrec.common.privacy.mechanisms.noise_multipliers`: calibrated to
        ``epsilon`` at ``delta`` from public quantities only (or as configured).
        """
        from fedrec.common.privacy.mechanisms import noise_multipliers

        return noise_multipliers(self)

    def reads_recency(self) -> bool:
        """Whether the run's devices may weigh a release by recency (``popularity-recency``).

        User-level DP, a positive ``popularity-recency`` and an algorithm that uses it
        (:attr:`~fedrec.common.algorithms.base.Algorithm.uses_recency`); simulations give
        synthetic devices a history only then.
        """
        return _reads_recency(self.privacy, self.popularity_recency, self.algorithm)

    def device_noise(self) -> float:
        """The largest noise multiplier devices add (``local``/``distributed``; else 0)."""
        if self.privacy not in DEVICE_DP_MODES:
            return 0.0
        return max(self.noise_multipliers())

    def user_noise(self) -> float:
        """The largest noise multiplier the server adds (``user``; else 0)."""
        if self.privacy != "user":
            return 0.0
        return max(self.noise_multipliers())

    @property
    def eval_rounds(self) -> tuple[int, ...]:
        """The rounds that end with an evaluation (every ``eval-every``-th and the last)."""
        return tuple(
            r
            for r in range(1, self.num_rounds + 1)
            if r % self.eval_every == 0 or r == self.num_rounds
        )

    @property
    def federated_evaluation(self) -> bool:
        """Whether devices send (accounted) evaluation releases to the server.

        Always with privacy off (exact sums, nothing promised); in the example-level modes
        only with ``eval-noise-multiplier > 0``; never under user-level DP (devices add no
        noise of their own there).
        """
        if self.privacy == "off":
            return True
        return self.privacy in DEVICE_DP_MODES and self.eval_noise_multiplier > 0

    def evaluation_history(self) -> tuple[tuple[float, float, int], ...]:
        """The evaluation releases each device is planned to make: ``((σ_e, 1, E),)`` or ()."""
        if (
            self.privacy not in DEVICE_DP_MODES
            or not self.federated_evaluation
            or self.fraction_evaluate <= 0
        ):
            return ()
        return ((float(self.eval_noise_multiplier), 1.0, len(self.eval_rounds)),)

    @property
    def planned_participations(self) -> int:
        """How often each device trains: devices are drawn in shuffled passes (see server)."""
        return max(1, math.ceil(self.num_rounds * self.fraction_train - 1e-9))

    def local_config(self) -> LocalConfig:
        """The device's local training recipe."""
        from fedrec.common.privacy.dpsgd import LocalConfig

        return LocalConfig(
            epochs=self.local_epochs,
            sample_rate=self.sample_rate,
            lr=self.local_lr,
            optimizer=self.local_optimizer,
            loss=self.loss,
            n_negatives=self.n_negatives,
            l2=self.l2,
            user_lr_scale=self.user_lr_scale,
            batch_size_norm=self.batch_size_norm,
        )

    def dp_config(self, noise_multiplier: float) -> DPConfig:
        """The device's DP settings with a given (resolved) noise multiplier."""
        from fedrec.common.privacy.dpsgd import DPConfig

        return DPConfig(
            noise_multiplier=noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            target_delta=self.delta,
            budget_epsilon=self.epsilon,
            accountant=self.accountant,
        )

    # --- flat kebab-case mapping --------------------------------------------------------------
    @classmethod
    def from_flat(cls, flat: Mapping[str, object] | None = None, **overrides: object) -> RunConfig:
        """Parse Flower's flat ``run_config`` (kebab-case keys) plus keyword overrides.

        Keys the mapping does not set take the algorithm's own defaults
        (:attr:`~fedrec.common.algorithms.base.Algorithm.defaults`, e.g. the spectral
        algorithm's two rounds), then the dataclass defaults.
        """
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        merged = dict(flat or {})
        merged.update({k.replace("_", "-"): v for k, v in overrides.items()})
        from fedrec.common.algorithms.registry import algorithm_class

        for key, value in algorithm_class(str(merged.get("algorithm", "sgd"))).defaults.items():
            merged.setdefault(key, value)
        defaulted = frozenset({"dim"} - merged.keys())
        if defaulted:
            merged["dim"] = default_dim(str(merged.get("privacy", cls.privacy)))
        for key, raw in merged.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(_unknown_key(key, [k.replace("_", "-") for k in known]))
            values[name] = _coerce(key, raw, _field_type(known[name]))
        cfg = cls(**values)
        cfg._privacy_defaults = defaulted
        return cfg

    def without_privacy(self) -> RunConfig:
        """The non-private twin of this configuration (the reference run's).

        Privacy ``off``, and every key that took a privacy-dependent default
        (:func:`default_dim`) takes the default of a run without privacy instead.
        """
        twin = self.replace(privacy="off")
        if "dim" in self._privacy_defaults:
            twin = dataclasses.replace(
                twin, dim=default_dim("off", self._catalog, self._interactions)
            )
            twin._privacy_defaults, twin._catalog = self._privacy_defaults, self._catalog
            twin._interactions = self._interactions
        return twin

    def with_catalog(self, n_items: int, interactions: int | None = None) -> RunConfig:
        """A copy with the defaults that depend on the catalog size resolved.

        An unset ``dim`` becomes :func:`default_dim` of the privacy mode, ``n_items`` and the
        number of training ``interactions`` (when known; only a run without privacy uses it);
        a set one stays. The engines call it once the data is loaded, before any device or
        the server sees the configuration, so that both train the same shape; both are
        remembered for :meth:`without_privacy`.
        """
        if "dim" not in self._privacy_defaults:
            return self
        copy = dataclasses.replace(self, dim=default_dim(self.privacy, n_items, interactions))
        copy._privacy_defaults = self._privacy_defaults
        copy._catalog = int(n_items)
        copy._interactions = None if interactions is None else int(interactions)
        return copy

    def to_flat(self) -> dict[str, object]:
        """The configuration as Flower's flat kebab-case mapping."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: object) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        copy = dataclasses.replace(self, **changes)
        copy._privacy_defaults = self._privacy_defaults - {k.replace("_", "-") for k in changes}
        copy._catalog, copy._interactions = self._catalog, self._interactions
        return copy

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Each kebab-case key with its documentation, default and allowed values."""
        from fedrec.common.config_checks import LIMITS, Limits

        return {
            f.name.replace("_", "-"): f"{f.metadata.get('doc', '')} (default: {f.default!r}; "
            f"{LIMITS.get(f.name, Limits()).describe(_field_type(f))})"
            for f in fields(cls)
        }


def _unknown_key(key: str, valid: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, valid, n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return (
        f"unknown run-config key {key!r}; {hint}(fedrec simulate --list-keys lists the "
        f"{len(valid)} keys)"
    )


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]


def _coerce(key: str, value: object, kind: type) -> object:
    from fedrec.common.config_checks import LIMITS, Limits, config_error

    expected = LIMITS.get(key.replace("-", "_"), Limits()).describe(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise config_error(key, value, expected)
    if kind is str:
        return value if isinstance(value, str) else str(value)
    if isinstance(value, bool):
        raise config_error(key, value, expected)
    try:
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise config_error(key, value, expected) from None


# --------------------------------------------------------------------------------------------
# Deployment keys
# --------------------------------------------------------------------------------------------
#
# What the server and the devices of a real deployment agree on, without Flower.
#
# A deployment's run config (the ``[tool.flwr.app.config]`` of the app that ``flwr run``
# submits, see ``fedrec deploy-app``) holds every :class:`~fedrec.common.config.RunConfig` key
# plus the *deployment keys* below; :func:`split_run_config` separates them. Dataset keys of
# :class:`RunConfig` are ignored: in a deployment the data stays on the devices.
#
# =============== ======================================================================
# key             meaning
# =============== ======================================================================
# catalog         JSON file with the item ids in item-table row order (a list, or an
#                 object with ``item_ids``), read by the ServerApp; ``""``: use n-items
# n-items         catalog size when there is no catalog file (items are rows ``0..N-1``)
# min-nodes       devices the ServerApp waits for before round 1
# wait-timeout    seconds to wait for them (then start with those connected)
# round-timeout   seconds a round waits for replies (a dead device must not stall the run)
# =============== ======================================================================
#
# The catalog is public. The server sends its fingerprint (:func:`catalog_fingerprint`) with
# every training request so that a device whose catalog differs refuses instead of training
# the wrong rows.


#: The train-request config key carrying :func:`catalog_fingerprint` of the server's catalog.
CATALOG_FINGERPRINT_KEY = "catalog-sha256"
#: Device-store meta key: the Flower node id of the device's last SuperLink session. The
#: ClientApp records it; ``fedrec supernode`` reads it after a crash to close that session.
NODE_ID_META = "deployment.flower_node_id"

DEPLOYMENT_DEFAULTS: dict[str, object] = {
    "catalog": "",
    "n-items": 0,
    "min-nodes": 1,
    "wait-timeout": 300.0,
    "round-timeout": 600.0,
}
#: RunConfig keys that describe a simulated dataset: meaningless (and ignored) in deployment.
_DATASET_KEYS = (
    "dataset",
    "data-dir",
    "synthetic-users",
    "synthetic-items",
    "split",
    "events-user-col",
    "events-item-col",
    "events-weight-col",
    "events-timestamp-col",
    "events-sep",
)


@dataclass(frozen=True)
class DeploymentSettings:
    """The deployment keys of a run config, typed."""

    catalog: str = ""
    n_items: int = 0
    min_nodes: int = 1
    wait_timeout: float = 300.0
    round_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.catalog and self.n_items < 1:
            raise ValueError(
                "the deployment's catalog is unknown: set the run-config key "
                "'catalog' (a JSON file of item ids) or 'n-items' (>= 1)"
            )
        if self.min_nodes < 1:
            raise ValueError(f"min-nodes must be >= 1, got {self.min_nodes}")
        if self.wait_timeout < 0 or self.round_timeout <= 0:
            raise ValueError("wait-timeout must be >= 0 and round-timeout > 0")

    def load_catalog(self) -> tuple[int, list[str]]:
        """``(n_items, item ids)``: from the catalog file, else ``n-items`` row numbers."""
        if self.catalog:
            ids = load_catalog_file(self.catalog)
            if self.n_items and self.n_items != len(ids):
                raise ValueError(
                    f"n-items = {self.n_items} but the catalog {self.catalog} has {len(ids)} items"
                )
            return len(ids), ids
        return self.n_items, [str(i) for i in range(self.n_items)]


def split_run_config(flat: Mapping[str, object]) -> tuple[RunConfig, DeploymentSettings]:
    """A deployment's run config as ``(RunConfig, DeploymentSettings)``.

    Raises:
        ValueError: an unknown key, or a value of the wrong type.
    """
    run: dict[str, object] = {}
    dep = dict(DEPLOYMENT_DEFAULTS)
    for key, value in flat.items():
        if key in DEPLOYMENT_DEFAULTS:
            dep[key] = value
        elif key not in _DATASET_KEYS:
            run[key] = value
    try:
        settings = DeploymentSettings(
            catalog=str(dep["catalog"] or ""),
            n_items=int(dep["n-items"]),  # type: ignore[call-overload]
            min_nodes=int(dep["min-nodes"]),  # type: ignore[call-overload]
            wait_timeout=float(dep["wait-timeout"]),  # type: ignore[arg-type]
            round_timeout=float(dep["round-timeout"]),
        )  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad deployment run-config: {exc}") from None
    return RunConfig.from_flat(run), settings


def load_catalog_file(path: str | Path) -> list[str]:
    """Item ids, in item-table row order, from a JSON catalog file.

    The file holds a list of ids, or an object whose ``item_ids`` is that list (the form
    :meth:`fedrec.client.sdk.Catalog.to_json` writes; other fields are ignored here).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"catalog file {p} does not exist")
    value = json.loads(p.read_text(encoding="utf-8"))
    ids = value.get("item_ids") if isinstance(value, Mapping) else value
    if not isinstance(ids, list) or not ids:
        raise ValueError(
            f'{p}: expected a non-empty JSON list of item ids (or {{"item_ids": [...]}})'
        )
    out = [str(i) for i in ids]
    if len(set(out)) != len(out):
        raise ValueError(f"{p}: item ids must be unique")
    return out


def catalog_fingerprint(item_ids: Sequence[str]) -> str:
    """SHA-256 of the item ids in row order (the catalog both sides must share)."""
    h = hashlib.sha256()
    for item_id in item_ids:
        h.update(str(item_id).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
