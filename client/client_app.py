"""Flower ``ClientApp`` glue around :class:`~fedrec.client.device.Device` (Message API).

The app is stateless between messages, as Flower requires; the device's own state (user
embedding, accountant, round count, RNG) is kept in a
:class:`~fedrec.client.state_store.DeviceStateStore` and restored for every message, so it
persists across rounds on the device and never travels to the server. How a device is built
(its data, its storage) is given by a *device factory*: the simulation's factory serves one
user of a dataset per SuperNode (:mod:`fedrec.simulations.apps`).

Messages (the wire contract with :mod:`fedrec.server.strategy`):

* train request: ``arrays`` (the global item table), ``config`` (``server-round``; with
  distributed DP also ``noise-share``: the device then adds that share of the noise and its
  reply only ever leaves inside Flower's SecAgg+, via
  :func:`~fedrec.client.secure_aggregation.secure_aggregation_mod`, installed on every app);
* train reply: ``arrays`` (the dense item-table delta) and ``metrics``
  (``num-examples`` = 1 under DP, ``epsilon`` spent), or ``refusal`` (``code``, one of the
  fixed :class:`~fedrec.common.privacy.policy.RefusalCode` words: no number, no sentence);
* evaluate request: ``arrays``, ``config`` (``ks``, ``server-round``, and in a private run
  ``eval-noise-multiplier``); reply: ``metrics``, the device's metric sums as a DP release
  (:meth:`~fedrec.client.device.Device.evaluation_release`: noised and accounted under DP,
  exact only with privacy off), or ``refusal``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.device import Device, Refusal
from fedrec.client.secure_aggregation import (
    is_secure_request,
    secure_aggregation_mod,
    secure_session,
)
from fedrec.client.state_store import DeviceStateStore
from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

__all__ = ["make_client_app", "DeviceFactory", "arrays_to_numpy", "numpy_to_arrays"]

#: Builds the device of this SuperNode from its context (run config, node config).
DeviceFactory = Callable[[Context], Device]

log = logging.getLogger("fedrec.client")

#: Gives the store of a node's device states (simulation: one SQLite file in the run folder).
StateStoreProvider = Callable[[Context], DeviceStateStore]


def numpy_to_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap named numpy arrays in a Flower ``ArrayRecord``."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of a Flower ``ArrayRecord``."""
    return {k: v.numpy() for k, v in record.items()}


class _DeviceCache:
    """Devices already built in this process, reused while their stored state is unchanged.

    The state store stays the only source of truth: every save writes a fresh random token
    there, kept beside the cached device; a message for a device whose stored token differs
    (another process served it in between) rebuilds the device and restores it from the
    store. The cache only saves rebuilding the device and parsing its state for consecutive
    messages of one node in one process.
    """

    def __init__(self, max_devices: int = 2048):
        self.max_devices = max_devices
        self._devices: OrderedDict[tuple[int, int], tuple[str, Device]] = OrderedDict()

    def get(self, factory: DeviceFactory, context: Context, store: DeviceStateStore) -> Device:
        key = (int(context.run_id), int(context.node_id))
        hit = self._devices.get(key)
        if hit is not None and store.token(hit[1].device_id) == hit[0]:
            self._devices.move_to_end(key)
            return hit[1]
        device = factory(context)
        stored = store.load(device.device_id)
        if stored is not None:
            device.load_state_dict(stored[1])
        return device

    def put(self, device: Device, context: Context, store: DeviceStateStore) -> None:
        key = (int(context.run_id), int(context.node_id))
        self._devices[key] = (store.save(device.device_id, device.state_dict()), device)
        self._devices.move_to_end(key)
        while len(self._devices) > self.max_devices:
            self._devices.popitem(last=False)


def _refusal(msg: Message, code: RefusalCode | str) -> Message:
    """The reply by which a device declines a request: a fixed code and nothing else."""
    return Message(RecordDict({"refusal": ConfigRecord({"code": str(RefusalCode(code))})}),
                   reply_to=msg)


def _train_request(msg: Message) -> tuple[dict[str, np.ndarray], int, float | None, str | None]:
    """``(arrays, server round, noise share, spectral phase)`` of a train request.

    Raises:
        PolicyViolation: ``bad-request`` when a field is missing or of the wrong type.
    """
    try:
        arrays = arrays_to_numpy(msg.content["arrays"])  # type: ignore[arg-type]
        config = msg.content["config"]
        server_round = int(config["server-round"])  # type: ignore[index,arg-type]
        share = config.get("noise-share")  # type: ignore[union-attr]
        phase = config.get("spectral-phase")  # type: ignore[union-attr]
        return (arrays, server_round, None if share is None else float(share),  # type: ignore[arg-type]
                None if phase is None else str(phase))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PolicyViolation(RefusalCode.BAD_REQUEST, f"malformed train request: {exc!r}"
                              ) from None


def _evaluate_request(msg: Message) -> tuple[dict[str, np.ndarray], tuple[int, ...], int,
                                             float | None, float | None]:
    """``(arrays, ks, server round, noise multiplier, noise share)`` of an evaluate request."""
    try:
        arrays = arrays_to_numpy(msg.content["arrays"])  # type: ignore[arg-type]
        config = msg.content["config"]
        ks = tuple(int(k) for k in str(config.get("ks", "10,20")).split(","))  # type: ignore[union-attr]
        if not ks or min(ks) < 1 or max(ks) > 1000:
            raise ValueError(f"ks {ks}")
        server_round = int(config.get("server-round", 0))  # type: ignore[union-attr,arg-type]
        sigma = config.get("eval-noise-multiplier")  # type: ignore[union-attr]
        share = config.get("noise-share")  # type: ignore[union-attr]
        return (arrays, ks, server_round, None if sigma is None else float(sigma),  # type: ignore[arg-type]
                None if share is None else float(share))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PolicyViolation(RefusalCode.BAD_REQUEST,
                              f"malformed evaluate request: {exc!r}") from None


def make_client_app(device_factory: DeviceFactory, *, states: StateStoreProvider,
                    mods: list | None = None) -> ClientApp:
    """A ``ClientApp`` whose SuperNodes run the device the factory builds.

    Each device's own state lives in the store ``states`` gives for a node's context, saved
    after every message that changed it (the accountant even when the reply is lost).

    The app carries fedrec's SecAgg+ mod, which leaves ordinary messages untouched and runs
    the secure-aggregation protocol around ``train`` messages of distributed-DP rounds.
    ``mods`` run before it (outermost first), e.g. a simulation's dropout injection.

    Every request is checked before any work (:meth:`Device.check_secure`, the device's table
    shapes, finite values, the noise share against the secure group); a refusal carries only
    its :class:`~fedrec.common.privacy.policy.RefusalCode`, the detail goes to the device's log.
    """
    app = ClientApp(mods=[*(mods or []), secure_aggregation_mod])
    cache = _DeviceCache()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        store = states(context)
        device = cache.get(device_factory, context, store)
        try:
            global_state, server_round, share, phase = _train_request(msg)
            if phase is not None and device.spectral is None:
                raise PolicyViolation(RefusalCode.UNSUPPORTED, "spectral round sent to a "
                                      "device not configured for it")
            session = secure_session(msg, context) if is_secure_request(msg) else None
            device.check_secure(session, noise_share=share, phase=phase)
        except PolicyViolation as violation:
            log.info("device %s refused: %s", device.device_id, violation)
            return _refusal(msg, violation.code)
        if phase is not None:
            outcome = device.spectral_round(
                phase, server_round, selected=global_state.get("selected-items"),
                noise_share=share)
        else:
            outcome = device.train(global_state, server_round, noise_share=share)
        if isinstance(outcome, Refusal):  # nothing was done, nothing changed
            log.info("device %s refused: %s", device.device_id, outcome.reason)
            return _refusal(msg, outcome.code)
        cache.put(device, context, store)  # the accountant is saved even if the reply is lost
        metrics: dict[str, float | int] = {"num-examples": int(outcome.num_examples)}
        metrics.update({k: float(v) for k, v in outcome.metrics.items()})
        if device.dp is not None:
            metrics["epsilon"] = device.epsilon_spent()
        content = RecordDict({
            "arrays": numpy_to_arrays(outcome.delta),
            "metrics": MetricRecord(metrics),
        })
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        store = states(context)
        device = cache.get(device_factory, context, store)
        try:
            global_state, ks, server_round, sigma, share = _evaluate_request(msg)
            session = secure_session(msg, context) if is_secure_request(msg) else None
            if share is not None and session is None:
                raise PolicyViolation(RefusalCode.NOT_SECURE,
                                      "a noise share outside a secure sum")
        except PolicyViolation as violation:
            log.info("device %s refused to evaluate: %s", device.device_id, violation)
            return _refusal(msg, violation.code)
        outcome = device.evaluation_release(global_state, ks, server_round,
                                            noise_multiplier=sigma, noise_share=share)
        if isinstance(outcome, Refusal):
            log.info("device %s refused to evaluate: %s", device.device_id, outcome.reason)
            return _refusal(msg, outcome.code)
        cache.put(device, context, store)  # an evaluation under DP spends budget
        return Message(RecordDict({"metrics": MetricRecord(
            {k: float(v) for k, v in outcome.items()})}), reply_to=msg)

    return app
