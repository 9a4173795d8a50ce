import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrec.server.strategy import reply_from_message


@pytest.fixture(autouse=True)
def task_identity():
    # Messages are created inside a run; outside one, Flower needs an identity set.
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _reply(content):
    msg = Message(content=content, dst_node_id=7, message_type="train")
    msg.metadata.__dict__["_src_node_id"] = 7
    return msg


def test_reply_parsing_never_raises():
    ok = reply_from_message(
        _reply(
            RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(np.ones(2, np.float32))}),
                    "metrics": MetricRecord({"num-examples": 4, "loss": 0.5}),
                }
            )
        )
    )
    assert ok.error is None and ok.num_examples == 4 and ok.metrics == {"loss": 0.5}
    refusal = reply_from_message(_reply(RecordDict({"refusal": ConfigRecord({"code": "budget"})})))
    assert refusal.refusal == "budget"
    empty = reply_from_message(_reply(RecordDict({"metrics": MetricRecord({"x": 1})})))
    assert empty.error is not None
