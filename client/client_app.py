"""Flower ``ClientApp`` glue around :class:`~fedrec.client.device.Device` (Message API).

The app is stateless between messages, as Flower requires; the device's own state (user
embedding, accountant, round count, RNG) is kept in the node's ``context.state`` and restored
for every message, so it persists across rounds on the device and never travels to the
server. How a device is built (its data, its storage) is given by a *device factory*: the
simulation's factory serves one user of a dataset per SuperNode (:mod:`fedrec.simulations.apps`).

Messages (the wire contract with :mod:`fedrec.server.strategy`):

* train request: ``arrays`` (the global item table), ``config`` (``server-round``; with
  distributed DP also ``noise-share``: the device then adds that share of the noise and its
  reply only ever leaves inside Flower's SecAgg+, via
  :func:`~fedrec.client.secure_aggregation.secure_aggregation_mod`, installed on every app);
* train reply: ``arrays`` (the dense item-table delta) and ``metrics``
  (``num-examples`` = 1 under DP, ``epsilon`` spent), or ``refusal`` (``code``, one of the
  fixed :class:`~fedrec.common.policy.RefusalCode` words: no number, no sentence);
* evaluate request: ``arrays``, ``config`` (``ks``); reply: ``metrics`` (metric sums).
"""

from __future__ import annotations

import logging
import secrets
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
from fedrec.common.policy import PolicyViolation, RefusalCode

__all__ = ["make_client_app", "DeviceFactory", "arrays_to_numpy", "numpy_to_arrays"]

#: Builds the device of this SuperNode from its context (run config, node config).
DeviceFactory = Callable[[Context], Device]

log = logging.getLogger("fedrec.client")

STATE_ARRAYS = "fedrec.device.arrays"
STATE_CONFIG = "fedrec.device.config"


def numpy_to_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap named numpy arrays in a Flower ``ArrayRecord``."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of a Flower ``ArrayRecord``."""
    return {k: v.numpy() for k, v in record.items()}


def _restore(device: Device, context: Context) -> None:
    if STATE_CONFIG not in context.state:
        return
    arrays = arrays_to_numpy(context.state[STATE_ARRAYS])  # type: ignore[arg-type]
    config = context.state[STATE_CONFIG]
    device.load_state_dict({
        "user_embedding": arrays["user_embedding"],
        "generator": arrays.get("generator"),
        "accountant": config["accountant"],
        "rounds_trained": config["rounds-trained"],
    })


def _persist(device: Device, context: Context) -> str:
    state = device.state_dict()
    token = secrets.token_hex(8)
    context.state[STATE_ARRAYS] = numpy_to_arrays({
        "user_embedding": np.asarray(state["user_embedding"]),
        "generator": np.asarray(state["generator"]),
    })
    context.state[STATE_CONFIG] = ConfigRecord({
        "accountant": str(state["accountant"]),
        "rounds-trained": int(state["rounds_trained"]),  # type: ignore[arg-type]
        "token": token,
    })
    return token


class _DeviceCache:
    """Devices already built in this process, reused while the node's state is unchanged.

    ``context.state`` stays the only source of truth: every persist writes a fresh random
    token there and beside the cached device; a message whose context carries another token
    (or none: another process served the node in between, or the state was reset) rebuilds
    the device and restores it from the context. The cache only saves rebuilding the device and
    parsing its state for consecutive messages of one node in one process.
    """

    def __init__(self, max_devices: int = 2048):
        self.max_devices = max_devices
        self._devices: OrderedDict[tuple[int, int], tuple[str, Device]] = OrderedDict()

    def get(self, factory: DeviceFactory, context: Context) -> Device:
        key = (int(context.run_id), int(context.node_id))
        config = context.state.config_records.get(STATE_CONFIG)
        token = str(config.get("token", "")) if config is not None else ""
        hit = self._devices.get(key)
        if hit is not None and token and hit[0] == token:
            self._devices.move_to_end(key)
            return hit[1]
        device = factory(context)
        _restore(device, context)
        return device

    def put(self, device: Device, context: Context, token: str) -> None:
        key = (int(context.run_id), int(context.node_id))
        self._devices[key] = (token, device)
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


def make_client_app(device_factory: DeviceFactory, *, mods: list | None = None) -> ClientApp:
    """A ``ClientApp`` whose SuperNodes run the device the factory builds.

    The app carries fedrec's SecAgg+ mod, which leaves ordinary messages untouched and runs
    the secure-aggregation protocol around ``train`` messages of distributed-DP rounds.
    ``mods`` run before it (outermost first), e.g. a simulation's dropout injection.

    Every request is checked before any work (:meth:`Device.check_secure`, the device's table
    shapes, finite values, the noise share against the secure group); a refusal carries only
    its :class:`~fedrec.common.policy.RefusalCode`, the detail goes to the device's log.
    """
    app = ClientApp(mods=[*(mods or []), secure_aggregation_mod])
    cache = _DeviceCache()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        device = cache.get(device_factory, context)
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
        # accountant state saved even if the reply is lost
        cache.put(device, context, _persist(device, context))
        if isinstance(outcome, Refusal):
            log.info("device %s refused: %s", device.device_id, outcome.reason)
            return _refusal(msg, outcome.code)
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
        device = cache.get(device_factory, context)
        global_state = arrays_to_numpy(msg.content["arrays"])  # type: ignore[arg-type]
        ks_text = str(msg.content["config"].get("ks", "10,20"))  # type: ignore[union-attr]
        ks = tuple(int(k) for k in ks_text.split(","))
        sums = device.evaluate(global_state, ks) or {"users": 0}
        return Message(RecordDict({"metrics": MetricRecord(
            {k: float(v) if k != "users" else int(v) for k, v in sums.items()}
        )}), reply_to=msg)

    return app
