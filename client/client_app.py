"""The one Flower ``ClientApp`` of fedrec, for simulations and deployments (Message API).

The app parses and checks every message, runs fedrec's SecAgg+ mod, and talks to the device
through a *device provider*: a callable that opens the :class:`DeviceSession` of a node from
its context. Where the device's state lives is the provider's business: a simulation keeps
simulated devices' state in a :class:`~fedrec.client.state_store.DeviceStateStore`
(:mod:`fedrec.simulations.apps`), a deployed SuperNode in the device's SDK store
(:mod:`fedrec.client.deployment`). Either way it persists across rounds on the device and
never travels to the server.

Messages (the wire contract with :mod:`fedrec.server.flower_transport`):

* train request: ``arrays`` (the item table, and the task's arrays, e.g. selected items),
  ``config`` (``server-round``, ``task`` — ``"train"`` or an algorithm's phase —, with
  distributed DP ``noise-share``: the device then adds that share of the noise and its reply
  only ever leaves inside Flower's SecAgg+, via
  :func:`~fedrec.client.secure_aggregation.secure_aggregation_mod`);
* train reply: ``arrays`` (the contribution: one fixed shape whatever the device holds) and
  ``metrics`` (``num-examples`` = 1 under DP, ``epsilon`` spent), or ``refusal`` (``code``,
  one of the fixed :class:`~fedrec.common.privacy.policy.RefusalCode` words);
* evaluate request: ``arrays`` (the table), ``config`` (``ks``, ``server-round``, and in a
  private run ``eval-noise-multiplier``); reply: ``metrics``, the device's metric sums as a
  DP release (noised and accounted under DP, exact only with privacy off), or ``refusal``.

Every request is checked before any work; a refusal carries only its code, the detail goes
to the device's log. A reply that carries a DP release also carries the device's ledger head
(:func:`ledger_head_mod`: the ``seq`` and ``hash`` of the record written before it left), which
the server countersigns (:mod:`fedrec.server.countersign`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.secure_aggregation import (
    is_secure_request,
    secure_aggregation_mod,
    secure_session,
)
from fedrec.common.algorithms.base import TABLE_KEYS, Contribution, Task
from fedrec.common.audit.receipts import HEAD_RECORD
from fedrec.common.privacy.policy import PolicyViolation, RefusalCode
from fedrec.common.privacy.secagg import SecureSession

__all__ = [
    "make_client_app",
    "ledger_head_mod",
    "DeviceSession",
    "DeviceProvider",
    "TrainRequest",
    "EvaluateRequest",
    "arrays_to_numpy",
    "numpy_to_arrays",
]

log = logging.getLogger("fedrec.client")


def numpy_to_arrays(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Wrap named numpy arrays in a Flower ``ArrayRecord``."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of a Flower ``ArrayRecord``."""
    return {k: v.numpy() for k, v in record.items()}


@dataclass(frozen=True)
class TrainRequest:
    """A parsed train request: the table, the task, the round, the noise share, the config."""

    server_round: int
    task: Task
    table: dict[str, np.ndarray]
    noise_share: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateRequest:
    """A parsed evaluate request."""

    server_round: int
    table: dict[str, np.ndarray]
    ks: tuple[int, ...]
    noise_multiplier: float | None = None
    noise_share: float | None = None


class DeviceSession(Protocol):
    """A node's device for the handling of one message."""

    def contribute(
        self, request: TrainRequest, session: SecureSession | None
    ) -> tuple[Contribution | Any, dict[str, float]]:
        """The contribution (or a ``Refusal``) and metrics to send beside it."""

    def evaluate(self, request: EvaluateRequest) -> dict[str, float] | Any:
        """The evaluation release (or a ``Refusal``)."""

    def close(self, changed: bool) -> None:
        """Persist the device's state (``changed``: the message spent or trained)."""

    # Optionally ``ledger_head``: the device's ledger head after this message's release
    # (``{"device_id", "seq", "hash"}``), or None; the reply then carries it.


#: Opens the :class:`DeviceSession` of a node from its context.
DeviceProvider = Callable[[Context], DeviceSession]


def _split_table(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    table = {k: v for k, v in arrays.items() if k in TABLE_KEYS}
    return table, {k: v for k, v in arrays.items() if k not in TABLE_KEYS}


def parse_train(msg: Message) -> TrainRequest:
    """A train message as a :class:`TrainRequest` (``bad-request`` if malformed)."""
    try:
        table, task_arrays = _split_table(arrays_to_numpy(msg.content["arrays"]))  # type: ignore[arg-type]
        config = dict(msg.content["config"])  # type: ignore[arg-type]
        share = config.get("noise-share")
        task_config = {
            k: v
            for k, v in config.items()
            if k not in ("server-round", "task", "noise-share", "min-included")
        }
        return TrainRequest(
            int(config["server-round"]),  # type: ignore[arg-type]
            Task(str(config.get("task", "train")), task_arrays, task_config),
            table,
            None if share is None else float(share),
            config,
        )  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PolicyViolation(
            RefusalCode.BAD_REQUEST, f"malformed train request: {exc!r}"
        ) from None


def parse_evaluate(msg: Message) -> EvaluateRequest:
    """An evaluate message as an :class:`EvaluateRequest` (``bad-request`` if malformed)."""
    try:
        table, _ = _split_table(arrays_to_numpy(msg.content["arrays"]))  # type: ignore[arg-type]
        config = msg.content["config"]
        ks = tuple(int(k) for k in str(config.get("ks", "10,20")).split(","))  # type: ignore[union-attr]
        if not ks or min(ks) < 1 or max(ks) > 1000:
            raise ValueError(f"ks {ks}")
        sigma = config.get("eval-noise-multiplier")  # type: ignore[union-attr]
        share = config.get("noise-share")  # type: ignore[union-attr]
        return EvaluateRequest(
            int(config.get("server-round", 0)),
            table,
            ks,  # type: ignore[union-attr,arg-type]
            None if sigma is None else float(sigma),  # type: ignore[arg-type]
            None if share is None else float(share),
        )  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PolicyViolation(
            RefusalCode.BAD_REQUEST, f"malformed evaluate request: {exc!r}"
        ) from None


def refusal_message(msg: Message, code: RefusalCode | str) -> Message:
    """The reply by which a device declines a request: a fixed code and nothing else."""
    return Message(
        RecordDict({"refusal": ConfigRecord({"code": str(RefusalCode(code))})}), reply_to=msg
    )


def _is_refusal(outcome: object) -> bool:
    return hasattr(outcome, "code") and hasattr(outcome, "detail")


_HEAD_STATE = "fedrec.pending-ledger-head"


def _keep_head(session: object, context: Context) -> None:
    """Keep the session's ledger head in the node's state for :func:`ledger_head_mod`."""
    head = getattr(session, "ledger_head", None)
    if isinstance(head, Mapping):
        context.state.config_records[_HEAD_STATE] = ConfigRecord(
            {
                "device_id": str(head["device_id"]),
                "seq": int(head["seq"]),
                "hash": str(head["hash"]),
            }
        )


def ledger_head_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """ClientApp mod: a reply that carries a release also carries the device's ledger head.

    Outside fedrec's SecAgg+ mod, so that the head rides beside a masked vector too: the
    server countersigns what it received (:data:`~fedrec.common.audit.receipts.HEAD_RECORD`).
    """
    context.state.config_records.pop(_HEAD_STATE, None)
    reply = call_next(msg, context)
    head = context.state.config_records.pop(_HEAD_STATE, None)
    if head is not None and not reply.has_error() and reply.has_content():
        reply.content.config_records[HEAD_RECORD] = head
    return reply


def make_client_app(provider: DeviceProvider, *, mods: list | None = None) -> ClientApp:
    """A ``ClientApp`` whose SuperNodes run the device the provider opens.

    The app carries fedrec's SecAgg+ mod, which leaves ordinary messages untouched and runs
    the secure-aggregation protocol around ``train`` messages of secure rounds. ``mods`` run
    before it (outermost first), e.g. a simulation's dropout injection.
    """
    app = ClientApp(mods=[*(mods or []), ledger_head_mod, secure_aggregation_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            session = provider(context)
        except PolicyViolation as violation:
            log.info("refused before opening the device: %s", violation)
            return refusal_message(msg, violation.code)
        outcome: Any = None
        metrics: dict[str, float] = {}
        try:
            request = parse_train(msg)
            secure = secure_session(msg, context) if is_secure_request(msg) else None
            outcome, metrics = session.contribute(request, secure)
            _keep_head(session, context)
        except PolicyViolation as violation:
            outcome = violation
        finally:
            session.close(
                outcome is not None
                and not _is_refusal(outcome)
                and not isinstance(outcome, PolicyViolation)
            )
        if isinstance(outcome, PolicyViolation) or _is_refusal(outcome):
            log.info("refused: %s", outcome)
            return refusal_message(msg, outcome.code)
        reply: dict[str, float | int] = {"num-examples": int(outcome.num_examples)}
        reply.update({k: float(v) for k, v in outcome.metrics.items()})
        reply.update(metrics)
        return Message(
            RecordDict({"arrays": numpy_to_arrays(outcome.arrays), "metrics": MetricRecord(reply)}),
            reply_to=msg,
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        try:
            session = provider(context)
        except PolicyViolation as violation:
            return refusal_message(msg, violation.code)
        outcome: Any = None
        try:
            outcome = session.evaluate(parse_evaluate(msg))
            _keep_head(session, context)
        except PolicyViolation as violation:
            outcome = violation
        finally:
            session.close(isinstance(outcome, dict))  # an evaluation under DP spends budget
        if not isinstance(outcome, dict):
            log.info("refused to evaluate: %s", outcome)
            return refusal_message(msg, outcome.code)
        return Message(
            RecordDict({"metrics": MetricRecord({k: float(v) for k, v in outcome.items()})}),
            reply_to=msg,
        )

    return app
