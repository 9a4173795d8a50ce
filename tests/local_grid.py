"""Test helper: a Flower Grid that delivers messages to a ClientApp in-process.

Fedrec's real ClientApp, Flower's real SecAgg+ (its mod on the devices, its workflow on the
server): only Ray and the network are left out, so contract tests can run every algorithm
and mode on the Flower transport in seconds. Every train reply is recorded, so a test can
check that no individual contribution reached the server when the mode promises only sums.
"""

import copy

from flwr.app import Context, Error, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key


class LocalGrid:
    """Delivers each message to the ClientApp in-process (a copy, as a transport would)."""

    def __init__(self, app, n, *, run_config=None):
        self.app = app
        self.contexts = {
            100 + p: Context(
                run_id=1,
                node_id=100 + p,
                node_config={"partition-id": p, "num-partitions": n},
                state=RecordDict(),
                run_config=run_config or {},
            )
            for p in range(n)
        }
        self.replies: list[Message] = []
        self.masked_shapes = []  # the shapes of every masked vector a device sent

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            msg = copy.deepcopy(msg)
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - what Flower does with a raising app
                reply = Message(Error(code=2, reason=repr(exc)), reply_to=msg)
            self.replies.append(reply)
            if not reply.has_error():
                configs = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
                if Key.MASKED_PARAMETERS in configs:
                    self.masked_shapes.append(
                        [bytes_to_ndarray(b).shape for b in configs[Key.MASKED_PARAMETERS]]
                    )
            out.append(reply)
        return out

    def individual_contributions(self):
        """Replies that carried a contribution in the clear (an ``arrays`` record)."""
        return [r for r in self.replies if not r.has_error() and "arrays" in r.content]
