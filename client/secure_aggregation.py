"""The device's side of fedrec's secure aggregation: Flower's SecAgg+ ``secaggplus_mod``.

A ClientApp takes part in :func:`fedrec.server.secure_aggregation.secure_sum` by adding one
mod::

    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(msg, context):
        ...
        return Message(RecordDict({"arrays": ArrayRecord(...)}), reply_to=msg)

:func:`secure_aggregation_mod` runs Flower's own ``secaggplus_mod`` (key agreement, secret
sharing, masking: no cryptography of fedrec's) for ``train`` messages that carry SecAgg+
instructions and passes every other message through untouched. The ``train`` handler is
called once per secure round, at the collect-masked-vectors stage, with the server's content
(plus the protocol's ``secaggplus_configs`` record) and replies as usual; the mod turns the
reply into the legacy ``FitRes`` layout that ``secaggplus_mod`` masks
(:func:`secure_train_reply`):

* the arrays of the ``arrays`` record (or of the only ``ArrayRecord``), as float64 in their
  order, and nothing else: no statistic of the device's values rides along (a sum of such
  statistics would be a release outside the accounting). A vector with any value beyond the
  session's clipping range is not sent at all: the device declines with the code
  ``secure-range`` and the server aborts the round before unmasking, so no clipped share ever
  enters a sum (:mod:`fedrec.common.privacy.secagg` sizes the range so that this needs a
  Gaussian tail event of probability at most 1e-12);
* ``num_examples = 1`` (the server wants the plain sum; see the server module);
* the names and shapes of the arrays in the clear (``fedrec.secagg.layout``).

Nothing else of the reply leaves the device: ``secaggplus_mod`` empties the array records,
and the mod drops the reply's other records (metrics would be per-device values in the
clear; sum such numbers as arrays instead).

Declining: a device that will not train (privacy budget spent) replies with
:func:`decline_reply` (or with fedrec's usual ``refusal`` record, whose ``code`` is all the
server sees); the mod then answers the server with an error reply whose reason is
:data:`DECLINED_PREFIX` and the code, after key sharing, so SecAgg+ treats the device as a
dropout, removes its masks from the others' and the round completes without it. The reply
is an error *message*, not an exception, so the node's context (e.g. the accountant state
the handler saved) is kept. Exceptions of the handler
propagate (Flower turns them into error replies too; the node is dropped the same way).

Flower's bare ``secaggplus_mod`` (re-exported) also works with a handler that returns
:func:`secure_train_reply`, but not with declines: it reads the content of the handler's
error reply and raises, so the server sees a generic error rather than a decline and, in
deployment, the node's context changes of that message are lost. Prefer
:func:`secure_aggregation_mod`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, Context, Error, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
)
from flwr.compat.common import recorddict_compat as compat

from fedrec.common.privacy.policy import PolicyViolation, RefusalCode
from fedrec.common.privacy.secagg import SecureSession, exceeds_range

__all__ = [
    "secure_aggregation_mod",
    "secaggplus_mod",
    "secure_train_reply",
    "decline_reply",
    "is_secure_request",
    "secure_session",
    "SecureSession",
    "LAYOUT_KEY",
    "DECLINED_PREFIX",
]

#: Wire contract with :mod:`fedrec.server.secure_aggregation` (same values there).
LAYOUT_KEY = "fedrec.secagg.layout"
#: Prefix of the error reason of a device that declined to train.
DECLINED_PREFIX = "fedrec.secagg.declined: "
#: The record of a handler's reply that holds the update.
ARRAYS_KEY = "arrays"
_FITRES_PARAMETERS = "fitres.parameters"


def is_secure_request(msg: Message) -> bool:
    """Whether ``msg`` is a ``train`` message of a SecAgg+ round (any stage)."""
    return (
        msg.metadata.message_type == MessageType.TRAIN
        and msg.has_content()
        and RECORD_KEY_CONFIGS in msg.content.config_records
    )


def _clipping_range(context: Context) -> float:
    state = context.state.config_records.get(RECORD_KEY_STATE)
    if state is None or "clipping_range" not in state:
        raise ValueError(
            "no SecAgg+ session on this node: the ClientApp needs "
            "secure_aggregation_mod (or secaggplus_mod)"
        )
    return float(cast(float, state["clipping_range"]))


def secure_session(msg: Message, context: Context) -> SecureSession:
    """The session of a SecAgg+ ``train`` request at the collect-masked-vectors stage.

    Raises:
        PolicyViolation: ``not-secure`` when ``msg`` is not such a request.
    """
    state_record = context.state.config_records.get(RECORD_KEY_STATE)
    if not is_secure_request(msg) or state_record is None:
        raise PolicyViolation(RefusalCode.NOT_SECURE, "not inside a SecAgg+ session")
    state = SecAggPlusState(**dict(state_record))
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    peers = configs.get(Key.CIPHERTEXT_LIST)
    if not isinstance(peers, list):
        raise PolicyViolation(RefusalCode.NOT_SECURE, "not at the collect-masked-vectors stage")
    neighbourhood = min(len(peers) + 1, len(state.public_keys_dict))
    if state.share_num >= state.sample_num:  # complete graph: every member is a neighbour
        return SecureSession(clipping_range=float(state.clipping_range), group_size=neighbourhood)
    # SecAgg+'s sparse graph: a device sees its neighbours only; the round's size is the one
    # the server announced at setup (honest-but-curious: it runs the protocol it announced)
    return SecureSession(
        clipping_range=float(state.clipping_range),
        group_size=int(state.sample_num),
        group_verified=False,
    )


def secure_train_reply(msg: Message, arrays: Mapping[str, np.ndarray], context: Context) -> Message:
    """The reply to a SecAgg+ ``train`` request, in the layout ``secaggplus_mod`` masks.

    Args:
        msg: the ``train`` request (collect-masked-vectors stage of a SecAgg+ round).
        arrays: the update, named arrays of finite numbers (their order is the wire order).
        context: the node's context (holds the SecAgg+ session and its clipping range).

    Returns:
        A reply whose content is a legacy ``FitRes`` (``num_examples = 1``, the layout in its
        metrics); ``secaggplus_mod`` replaces the arrays by the masked vector.

    Raises:
        ValueError: ``msg`` is not a SecAgg+ request, there is no SecAgg+ session, or the
            update is empty or not finite.
        PolicyViolation: ``secure-range`` when a value lies beyond the clipping range (the
            vector must not be sent: clipping would change the noise the sum carries).
    """
    if not is_secure_request(msg):
        raise ValueError("not a SecAgg+ train request; reply with a plain Message instead")
    c = _clipping_range(context)
    if not arrays:
        raise ValueError("the update has no arrays")
    names, values = [], []
    for name, array in arrays.items():
        value = np.asarray(array, dtype=np.float64)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"array {name!r} has non-finite values")
        if exceeds_range({name: value}, c):
            raise PolicyViolation(
                RefusalCode.SECURE_RANGE, f"array {name!r} exceeds the clipping range {c:g}"
            )
        names.append([str(name), list(value.shape)])
        values.append(np.ascontiguousarray(value))
    fitres = FitRes(
        status=Status(code=Code.OK, message="OK"),
        parameters=ndarrays_to_parameters(values),
        num_examples=1,
        metrics={LAYOUT_KEY: json.dumps(names)},
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def decline_reply(msg: Message, code: RefusalCode | str) -> Message:
    """An error reply saying that this device declines to train (counted as a dropout).

    Args:
        msg: the ``train`` request.
        code: why, as a :class:`~fedrec.common.privacy.policy.RefusalCode` (e.g. ``"budget"``); the
            server sees only this fixed word.
    """
    return Message(
        Error(
            code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
            reason=DECLINED_PREFIX + str(RefusalCode(code)),
        ),
        reply_to=msg,
    )


class _Declined(Exception):
    """The handler declined; carries the error to send instead of a masked vector."""

    def __init__(self, error: Error):
        super().__init__(error.reason)
        self.error = error


def _to_secure_reply(call_next: ClientAppCallable) -> ClientAppCallable:
    """Wrap the handler: its Message-API reply becomes the legacy layout to mask."""

    def handler(msg: Message, context: Context) -> Message:
        reply = call_next(msg, context)
        if reply.has_error():
            raise _Declined(reply.error)
        content = reply.content
        if _FITRES_PARAMETERS in content.array_records:
            return reply  # already formatted by secure_train_reply
        if "refusal" in content.config_records:
            code = str(content.config_records["refusal"].get("code", "refused"))
            raise _Declined(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=DECLINED_PREFIX + code)
            )
        records = content.array_records
        if ARRAYS_KEY in records:
            record = records[ARRAYS_KEY]
        elif len(records) == 1:
            record = next(iter(records.values()))
        else:
            raise ValueError(
                f"the train reply must hold its update in the ArrayRecord "
                f"{ARRAYS_KEY!r}; it has {sorted(records)}"
            )
        try:
            return secure_train_reply(msg, _numpy(record), context)
        except PolicyViolation as violation:
            raise _Declined(
                Error(
                    code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    reason=DECLINED_PREFIX + violation.code,
                )
            ) from None

    return handler


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: take part in SecAgg+ rounds; other messages pass through.

    For a SecAgg+ ``train`` message this runs Flower's ``secaggplus_mod``; at the
    collect-masked-vectors stage it calls the handler and converts its reply (see the module
    docstring). A declining handler yields an error reply marked with
    :data:`DECLINED_PREFIX`, and this node's SecAgg+ session is discarded.

    Args:
        msg: the incoming message.
        context: the node's context.
        call_next: the next mod or the handler.
    """
    if not is_secure_request(msg):
        return call_next(msg, context)
    try:
        return secaggplus_mod(msg, context, _to_secure_reply(call_next))
    except _Declined as declined:
        context.state.config_records.pop(RECORD_KEY_STATE, None)
        return Message(declined.error, reply_to=msg)
