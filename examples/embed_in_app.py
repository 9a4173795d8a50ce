"""Embed fedrec in an app: record events, recommend offline, train one private round.

Run: ``python examples/embed_in_app.py`` (writes ``example-device.db`` in a temp folder).
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from fedrec.client.sdk import Event, FedRecClient, PolicySignals

rng = np.random.default_rng(0)
item_ids = [f"movie-{i}" for i in range(200)]
# What the server would send: the current item table (embeddings and biases).
global_state = {
    "item_embedding.weight": rng.normal(0, 0.1, (200, 16)).astype(np.float32),
    "item_bias.weight": np.zeros((200, 1), np.float32),
}

with tempfile.TemporaryDirectory() as tmp:
    client = FedRecClient.open(Path(tmp) / "example-device.db", catalog=item_ids)
    now = time.time()
    client.record(Event("view", "movie-3", now - 300, value=95.0))  # watched 95 s
    client.record(Event("purchase", "movie-7", now - 200))
    client.record(Event("rating", "movie-11", now - 100, value=5.0))
    client.record(Event("impression", "movie-12", now - 50))  # seen, not chosen
    client.receive_model(global_state)  # normally arrives with a federated round

    recs = client.recommend(5, diversity=0.3, explain=True)  # offline, on the device
    for r in recs:
        print(r.item_id, "-", r.explanation)

    reply = client.train_round(
        global_state, server_round=1, policy_signals=PolicySignals(charging=True, on_wifi=True)
    )
    print("round 1:", type(reply).__name__)
    report = client.privacy_report()
    print(f"epsilon spent {report.epsilon_spent:.3f}, left {report.epsilon_left:.3f}")
    client.close()
