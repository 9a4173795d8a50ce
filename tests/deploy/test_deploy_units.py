"""The pieces of a real deployment, without starting Flower processes (fast)."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedrec.cli.deploy import (
    INSECURE_WARNING,
    close_stale_session,
    generate_certificates,
    generate_node_keys,
    main,
    superlink_command,
    supernode_command,
    write_connection,
    write_deploy_app,
)
from fedrec.common.config import (
    NODE_ID_META,
    DeploymentSettings,
    catalog_fingerprint,
    split_run_config,
)


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


# --------------------------------------------------------------------------- certificates, keys


def test_certificates_chain_to_the_ca_and_name_loopback(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    paths = generate_certificates(tmp_path / "certs", hosts=["link.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert server.public_key().curve.name == "secp256r1"
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }
    assert {"localhost", "127.0.0.1", "::1", "link.example.org", "10.0.0.5"} <= names
    for key in ("ca_key", "server_key"):
        assert stat.S_IMODE(paths[key].stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="--force"):
        generate_certificates(tmp_path / "certs")
    generate_certificates(tmp_path / "certs", force=True)


def test_certificates_work_for_a_tls_handshake_on_loopback(tmp_path):
    import socket
    import ssl
    import threading

    paths = generate_certificates(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths["server_cert"], paths["server_key"])
    client_ctx = ssl.create_default_context(cafile=str(paths["ca_cert"]))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
        t.join(10)


def test_node_keys_are_what_flower_reads(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    pairs = generate_node_keys(tmp_path, 3)
    assert [p.name for p, _ in pairs] == ["node-1", "node-2", "node-3"]
    publics = set()
    for private, public in pairs:
        key = load_ssh_private_key(private.read_bytes(), None)  # what flower-supernode does
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
        registered = try_load_public_key(public)  # what `flwr supernode register` does
        assert registered == public_key_to_bytes(key.public_key())
        publics.add(registered)
    assert len(publics) == 3
    with pytest.raises(ValueError, match="--force"):
        generate_node_keys(tmp_path, 1)
    with pytest.raises(ValueError, match="curve"):
        generate_node_keys(tmp_path / "x", 1, curve="p999")


# --------------------------------------------------------------------------- flwr config, app


def test_connection_is_read_by_flwr_and_keeps_others(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    paths = generate_certificates(tmp_path / "certs")
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    write_connection("first", "127.0.0.1:9093", root_certificates=paths["ca_cert"])
    write_connection("second", "127.0.0.1:9999", root_certificates=paths["ca_cert"])
    conn = read_superlink_connection("first")
    assert conn.address == "127.0.0.1:9093"
    assert conn.root_certificates == str(paths["ca_cert"].resolve())
    assert not conn.insecure
    assert read_superlink_connection(None).name == "first"  # the first one became default
    assert read_superlink_connection("second").address == "127.0.0.1:9999"
    with pytest.raises(ValueError, match="not both"):
        write_connection("x", "a:1", root_certificates=None)


def test_deploy_app_is_a_valid_flower_app_and_its_config_parses(tmp_path):
    import tomllib

    from flwr.cli.config_utils import load_and_validate

    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"item_ids": ["a", "b", "c"]}))
    path = write_deploy_app(
        tmp_path / "app", catalog=catalog, min_nodes=3, settings={"num-rounds": 4, "epsilon": 2.0}
    )
    config, _warnings = load_and_validate(path)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "fedrec.server.deployment:server_app",
        "clientapp": "fedrec.client.deployment:client_app",
    }
    flat = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"]
    cfg, settings = split_run_config(flat)
    assert cfg.num_rounds == 4 and cfg.epsilon == 2.0 and cfg.privacy == "local"
    assert settings.min_nodes == 3 and settings.load_catalog() == (3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unknown run-config key"):
        write_deploy_app(tmp_path / "bad", n_items=5, settings={"epsilonn": 1})
    with pytest.raises(ValueError, match="one of them"):
        write_deploy_app(tmp_path / "bad", n_items=5, catalog=catalog)
    with pytest.raises(ValueError, match="--force"):
        write_deploy_app(tmp_path / "app", n_items=5)


def test_deployment_settings_need_a_catalog_and_check_it(tmp_path):
    with pytest.raises(ValueError, match="catalog is unknown"):
        DeploymentSettings()
    assert DeploymentSettings(n_items=3).load_catalog() == (3, ["0", "1", "2"])
    catalog = tmp_path / "c.json"
    catalog.write_text(json.dumps(["x", "y"]))
    with pytest.raises(ValueError, match="n-items = 3"):
        DeploymentSettings(catalog=str(catalog), n_items=3).load_catalog()
    catalog.write_text(json.dumps(["x", "x"]))
    with pytest.raises(ValueError, match="unique"):
        DeploymentSettings(catalog=str(catalog)).load_catalog()
    with pytest.raises(ValueError, match="unknown run-config key"):
        split_run_config({"n-items": 3, "bogus": 1})
    assert catalog_fingerprint(["a", "b"]) != catalog_fingerprint(["b", "a"])
    assert catalog_fingerprint(["ab"]) != catalog_fingerprint(["a", "b"])


# --------------------------------------------------------------------------- commands


def test_flower_commands_have_tls_and_node_auth_on_by_default(tmp_path, capsys):
    generate_certificates(tmp_path / "certs")
    generate_node_keys(tmp_path / "keys", 1)
    link = superlink_command(certs=tmp_path / "certs", port=9100)
    for flag in (
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
    ):
        assert flag in link
    assert "--insecure" not in link
    with pytest.raises(ValueError, match="--certs"):
        superlink_command(certs=None)
    with pytest.raises(FileNotFoundError, match="fedrec certs"):
        superlink_command(certs=tmp_path / "nowhere")

    node = supernode_command(
        superlink="127.0.0.1:9100",
        store=tmp_path / "d.db",
        root_certificates=tmp_path / "certs" / "ca.crt",
        auth_key=tmp_path / "keys" / "node-1",
        port=9200,
        node_config={"seed": 3, "charging": False},
    )
    assert "--root-certificates" in node and "--auth-supernode-private-key" in node
    assert "--insecure" not in node
    config = node[node.index("--node-config") + 1]
    assert f'store="{(tmp_path / "d.db").resolve()}"' in config
    assert "seed=3" in config and "charging=false" in config
    with pytest.raises(ValueError, match="--root-certificates"):
        supernode_command(superlink="x:1", store="d.db", root_certificates=None, auth_key=None)
    local = supernode_command(
        superlink="127.0.0.1:9100",
        store=tmp_path / "d.db",
        root_certificates=tmp_path / "certs" / "ca.crt",
        auth_key=tmp_path / "keys" / "node-1",
        runtime_certs=tmp_path / "certs",
    )
    assert local[local.index("--ssl-certfile") + 1] == str(tmp_path / "certs" / "server.pem")

    # the `fedrec` commands, dry run: insecure only behind the flag, with a loud warning
    assert main(["superlink", "--certs", str(tmp_path / "certs"), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "--enable-supernode-auth" in out and "WARNING" not in err
    assert main(["superlink", "--insecure", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "--insecure" in out and INSECURE_WARNING in err
    assert "--enable-supernode-auth" not in out
    assert main(["supernode", "--store", str(tmp_path / "d.db"), "--dry-run"]) == 2
    assert "--root-certificates" in capsys.readouterr().err


def test_the_fedrec_cli_lists_and_runs_the_deployment_commands(tmp_path, capsys):
    from fedrec.cli import main as fedrec_main

    with pytest.raises(SystemExit):
        fedrec_main(["--help"])
    out = capsys.readouterr().out
    for name in ("certs", "node-keys", "connection", "deploy-app", "superlink", "supernode"):
        assert name in out
    assert fedrec_main(["certs", str(tmp_path / "c")]) == 0
    assert fedrec_main(["node-keys", str(tmp_path / "k"), "--count", "2"]) == 0
    assert (tmp_path / "c" / "server.pem").exists() and (tmp_path / "k" / "node-2.pub").exists()
    assert (
        fedrec_main(
            ["deploy-app", str(tmp_path / "app"), "--n-items", "50", "--set", "num-rounds=3"]
        )
        == 0
    )
    assert "num-rounds = 3" in (tmp_path / "app" / "pyproject.toml").read_text()


def test_close_stale_session_is_a_no_op_without_a_recorded_session(tmp_path):
    from fedrec.client.storage import DeviceStore

    kwargs = dict(
        superlink="127.0.0.1:1", auth_key=tmp_path / "k", root_certificates=None, insecure=True
    )
    assert close_stale_session(store=tmp_path / "none.db", **kwargs) is None
    with DeviceStore(tmp_path / "d.db") as s:
        s.set_meta(NODE_ID_META, 42)
    # a recorded session but no reachable SuperLink (and no key): nothing closed, no error
    assert close_stale_session(store=tmp_path / "d.db", **kwargs) is None


# --------------------------------------------------------------------------- the apps


def _run_config(tmp_path, **overrides):
    from fedrec.common.config import RunConfig

    ids = [f"item-{i}" for i in range(30)]
    (tmp_path / "catalog.json").write_text(json.dumps(ids))
    flat = {
        k: v
        for k, v in RunConfig().to_flat().items()
        if k not in ("dataset", "data-dir", "synthetic-users", "synthetic-items", "split")
    }
    flat.update(
        {
            "noise-multiplier": 1.0,
            "accountant": "rdp",
            "dim": 8,
            "num-rounds": 2,
            "epsilon": 50.0,
            "catalog": str(tmp_path / "catalog.json"),
            "local-epochs": 1.0,
            "sample-rate": 0.5,
            "loss": "bpr",
            "n-negatives": 1,
            "local-lr": 0.5,
            "batch-size-norm": 4.0,
        }
    )
    flat.update(overrides)
    return flat, ids


def _train_message(flat, ids, rnd, fingerprint=None):
    from fedrec.client.client_app import numpy_to_arrays
    from fedrec.server.coordinator import initial_global_state

    cfg, settings = split_run_config(flat)
    state = initial_global_state(cfg, settings.load_catalog()[0])
    config = {
        "server-round": rnd,
        "catalog-sha256": fingerprint if fingerprint is not None else catalog_fingerprint(ids),
    }
    return Message(
        RecordDict({"arrays": numpy_to_arrays(state), "config": ConfigRecord(config)}),
        dst_node_id=5,
        message_type="train",
    )


def _context(flat, node_config, node_id=5):
    return Context(
        run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config=flat
    )


def test_client_app_state_lives_in_sqlite_across_restarts(tmp_path):
    from fedrec.client.client_app import arrays_to_numpy
    from fedrec.client.deployment import make_deployment_client_app
    from fedrec.client.sdk import FedRecClient
    from fedrec.common.model.mf import GLOBAL_KEYS

    flat, ids = _run_config(tmp_path)
    events = [
        {"kind": "purchase", "item_id": f"item-{i}", "timestamp": 1000 + i} for i in range(0, 30, 3)
    ]
    (tmp_path / "ev.json").write_text(json.dumps(events))
    node = {
        "store": str(tmp_path / "u.db"),
        "events": str(tmp_path / "ev.json"),
        "catalog": str(tmp_path / "catalog.json"),
        "seed": 1,
        "device-id": "phone-1",
        "epsilon-budget": 50.0,
    }
    app = make_deployment_client_app()
    reply = app(_train_message(flat, ids, 1), _context(flat, node))
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    assert set(arrays_to_numpy(reply.content["arrays"])) == set(GLOBAL_KEYS)
    metrics = dict(reply.content["metrics"])
    assert set(metrics) == {"num-examples", "epsilon"} and metrics["num-examples"] == 1
    eps1 = metrics["epsilon"]
    # a "restarted SuperNode": a fresh Flower context (empty state), another node id
    context = _context(flat, node, node_id=77)
    reply = app(_train_message(flat, ids, 2), context)
    assert reply.content["metrics"]["epsilon"] > eps1  # the accountant went on from disk
    assert len(context.state.keys()) == 0  # nothing in Flower's in-memory node state
    with FedRecClient.open(tmp_path / "u.db") as client:
        report = client.privacy_report()
        assert report.rounds_released == 2 and report.epsilon_spent == pytest.approx(
            reply.content["metrics"]["epsilon"]
        )
        assert client.status()["events"] == 10  # the events file was imported once
        assert client.store.get_meta(NODE_ID_META) == 77
        assert client.device_id == "phone-1"
    # the evaluation keeps the table for offline recommendation and reveals nothing
    ev = Message(
        RecordDict(
            {
                "arrays": _train_message(flat, ids, 3).content["arrays"],
                "config": ConfigRecord({"server-round": 3, "ks": "10"}),
            }
        ),
        dst_node_id=5,
        message_type="evaluate",
    )
    out = app(ev, context)  # no held-out split on a deployed device: nothing to send
    assert dict(out.content["refusal"]) == {"code": "unsupported"}
    with FedRecClient.open(tmp_path / "u.db") as client:
        assert client.status()["item_table_round"] == 3
        assert len(client.recommend(5)) == 5


def test_client_app_refuses_a_foreign_catalog_no_dp_and_a_raised_budget(tmp_path):
    from fedrec.client.deployment import device_dp, make_deployment_client_app

    flat, ids = _run_config(tmp_path)
    (tmp_path / "ev.json").write_text(
        json.dumps([{"kind": "purchase", "item_id": f"item-{i}", "timestamp": i} for i in range(8)])
    )
    node = {
        "store": str(tmp_path / "u.db"),
        "events": str(tmp_path / "ev.json"),
        "catalog": str(tmp_path / "catalog.json"),
        "seed": 1,
        "epsilon-budget": 50.0,
    }
    app = make_deployment_client_app()

    def code(reply):
        assert set(reply.content["refusal"].keys()) == {"code"}  # a fixed word, nothing else
        return reply.content["refusal"]["code"]

    assert (
        code(app(_train_message(flat, ids, 1, fingerprint="0" * 64), _context(flat, node)))
        == "bad-request"
    )
    off, _ = _run_config(tmp_path, privacy="off")
    assert code(app(_train_message(off, ids, 1), _context(off, node))) == "privacy-policy"
    user, _ = _run_config(tmp_path, privacy="user")
    assert code(app(_train_message(user, ids, 1), _context(user, node))) == "privacy-policy"
    # the device's budget, delta and accountant are its own: node config, else store, else 8
    assert device_dp({"epsilon-budget": 3.0}, None)["budget_epsilon"] == 3.0
    assert device_dp({}, {"budget_epsilon": 3.0})["budget_epsilon"] == 3.0
    assert device_dp({}, None)["budget_epsilon"] == 8.0
    # a run whose epsilon exceeds the device's budget: refused before any work
    assert (
        code(
            app(_train_message(flat, ids, 1), _context(flat, dict(node, **{"epsilon-budget": 0.5})))
        )
        == "privacy-policy"
    )
    # a round the device cannot afford: the budget guard refuses
    thin, _ = _run_config(tmp_path, **{"noise-multiplier": 0.4, "epsilon": 0.5})
    assert (
        code(
            app(_train_message(thin, ids, 1), _context(thin, dict(node, **{"epsilon-budget": 0.5})))
        )
        == "budget"
    )
    # the training policy and its signals from the node config
    from fedrec.client.deployment import _policy

    policy, signals = _policy(
        {"max-rounds-per-day": "none", "battery-level": 0.4, "on-wifi": "false"}
    )
    assert policy.max_rounds_per_day is None and signals.battery_level == 0.4
    assert signals.charging and not signals.on_wifi
    with pytest.raises(ValueError, match="true or false"):
        _policy({"charging": "maybe"})
    unplugged = dict(node, charging=False)
    assert code(app(_train_message(flat, ids, 1), _context(flat, unplugged))) == "device-state"


def test_client_app_without_a_store_says_how_to_configure_it(tmp_path):
    from fedrec.client.deployment import make_deployment_client_app

    flat, ids = _run_config(tmp_path)
    with pytest.raises(Exception, match="--node-config"):
        make_deployment_client_app()(_train_message(flat, ids, 1), _context(flat, {}))


def test_server_strategy_waits_for_the_quorum_before_every_round(tmp_path):
    from fedrec.common.config import RunConfig
    from fedrec.server.coordinator import make_coordinator
    from fedrec.server.deployment import DeploymentStrategy

    cfg = RunConfig(dim=4, num_rounds=2, fraction_train=1.0)
    coordinator = make_coordinator(cfg, 6)
    strategy = DeploymentStrategy(cfg, coordinator, min_nodes=3, wait_timeout=5)

    class Grid:
        calls = 0

        def get_node_ids(self):
            Grid.calls += 1
            return [1, 2] if Grid.calls < 3 else [1, 2, 3]

    from fedrec.server.flower_transport import to_arrays as _to_arrays

    msgs = list(
        strategy.configure_train(2, _to_arrays(coordinator.state), ConfigRecord({}), Grid())
    )
    assert sorted(m.metadata.dst_node_id for m in msgs) == [1, 2, 3]
    assert np.isfinite(strategy.coordinator.state["item_embedding.weight"]).all()


def test_events_files_in_json_and_csv(tmp_path):
    from fedrec.client.deployment import read_events_file

    (tmp_path / "e.csv").write_text("kind,item_id,timestamp,value\nview,a,10,45\npurchase,b,11,\n")
    events = read_events_file(tmp_path / "e.csv")
    assert [(e.kind_value, e.item_id, e.value) for e in events] == [
        ("view", "a", 45.0),
        ("purchase", "b", None),
    ]
    (tmp_path / "e.json").write_text(
        json.dumps({"events": [{"kind": "rating", "item_id": "c", "timestamp": 5, "value": 4}]})
    )
    assert read_events_file(tmp_path / "e.json")[0].value == 4.0
    (tmp_path / "bad.json").write_text(
        json.dumps([{"kind": "view", "item_id": "c", "timestamp": 5}])
    )
    with pytest.raises(ValueError, match="event 0"):
        read_events_file(tmp_path / "bad.json")  # a view needs its dwell time
