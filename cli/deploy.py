"""Real deployment: certificates, SuperNode keys, and the Flower processes, over the network.

A deployment is a Flower **SuperLink** (the server side: it runs fedrec's ServerApp) and one
**SuperNode** per device (each runs fedrec's ClientApp against the device's own SQLite
store), as separate processes talking HTTPS. TLS and SuperNode authentication are on by
default; plain HTTP needs ``--insecure``, which prints a loud warning (and turns SuperNode
authentication off too: Flower only authenticates SuperNodes over TLS).

Step by step (one machine shown; put the SuperLink's public name in ``--host`` of
``fedrec certs`` when devices connect from elsewhere)::

    # 0. every Flower process below: no dependency installation at run time, no update
    #    check, no telemetry (`fedrec superlink|supernode` set these unless already set)
    export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
    export FLWR_TELEMETRY_ENABLED=0

    # 1. a CA, and the SuperLink's certificate for localhost/127.0.0.1 (ECDSA P-256)
    fedrec certs deploy/certs                      # ca.crt ca.key server.pem server.key

    # 2. one authentication key pair per SuperNode (OpenSSH ECDSA, as Flower expects)
    fedrec node-keys deploy/keys --count 3         # node-1 node-1.pub ... node-3.pub

    # 3. the SuperLink, with TLS and SuperNode authentication (runs in the foreground)
    fedrec superlink --certs deploy/certs --port 9093 --database deploy/superlink.db
    #   = flower-superlink --ssl-ca-certfile deploy/certs/ca.crt
    #       --ssl-certfile deploy/certs/server.pem --ssl-keyfile deploy/certs/server.key
    #       --enable-supernode-auth --host 127.0.0.1 --port 9093
    #       --database deploy/superlink.db --disable-runtime-dependency-installation

    # 4. a `flwr` connection to it (written to $FLWR_HOME/config.toml, default ~/.flwr)
    fedrec connection fedrec-tls --address 127.0.0.1:9093 --root-certificates deploy/certs/ca.crt

    # 5. register each SuperNode's public key (only registered keys may connect)
    flwr supernode register deploy/keys/node-1.pub fedrec-tls     # ... node-2, node-3

    # 6. the SuperNodes: each one device, its state in its own SQLite store
    #    (one line; --events: demo data, imported once; --port: one per SuperNode on a
    #    machine; --runtime-certs: TLS also on the local runtime API, with the device's own
    #    `fedrec certs` folder)
    fedrec supernode --superlink 127.0.0.1:9093 --root-certificates deploy/certs/ca.crt
        --auth-key deploy/keys/node-1 --store deploy/devices/1.db --port 9101
        [--events interactions-1.json] [--runtime-certs deploy/device-1-certs]
    #   = flower-supernode --superlink 127.0.0.1:9093
    #       --root-certificates deploy/certs/ca.crt
    #       --auth-supernode-private-key deploy/keys/node-1
    #       --node-config 'store="deploy/devices/1.db" events="interactions-1.json"'
    #       --host 127.0.0.1 --port 9101 --isolation subprocess
    #    (the device's training policy defaults to at most 4 trainings a day: add
    #    --node-config max-rounds-per-day=none for a long demo run)
    #    run under a small supervisor: after a crash it first closes the session the dead
    #    SuperNode left open on the SuperLink (Flower 1.42 would refuse the key for up to
    #    60 s), and it retries while the SuperLink still refuses (--rejoin-timeout)

    # 7. the Flower App of the deployment, then submit the run
    fedrec deploy-app deploy/app --n-items 1682 --min-nodes 3 --set num-rounds=10
    flwr run deploy/app fedrec-tls --stream

The device state (user embedding, accountant, spend, signed ledger, last item table) lives in
the SQLite store named by the SuperNode's ``--node-config store=...``, so it survives a
SuperNode restart, unlike Flower's in-memory ``context.state``
(:mod:`fedrec.client.deployment`). The ServerApp's catalog comes from the run config
(``catalog`` = a JSON file of item ids, or ``n-items``; :mod:`fedrec.server.deployment`).

``python -m fedrec.cli.deploy COMMAND`` runs these commands without loading the rest of the
``fedrec`` command line (a faster start, e.g. for SuperNodes that restart often).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "register",
    "generate_certificates",
    "generate_node_keys",
    "write_connection",
    "write_deploy_app",
    "superlink_command",
    "supernode_command",
    "node_config_arg",
    "close_stale_session",
    "INSECURE_WARNING",
]

#: The step-by-step guide of this module's docstring (printed by ``fedrec certs --help``).
_GUIDE = (__doc__ or "").split("::", 1)[-1].split("The device state", 1)[0].rstrip()

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
#: The Flower App components of a deployment.
SERVER_APP = "fedrec.server.deployment:server_app"
CLIENT_APP = "fedrec.client.deployment:client_app"

INSECURE_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! WARNING: INSECURE MODE. Traffic between the SuperLink and the SuperNodes is NOT        !!
!! encrypted (no TLS) and SuperNodes are NOT authenticated: anyone on the network can     !!
!! read the item-table updates, impersonate the server, or join as a device. Use this     !!
!! only on a trusted loopback for debugging, never with real users.                       !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"""


# --------------------------------------------------------------------------- crypto material


def _tls_flags(certs_dir: str | Path) -> list[str]:
    """Flower's ``--ssl-*`` flags for the files ``fedrec certs DIR`` wrote (checked to exist)."""
    d = Path(certs_dir).expanduser()
    files = {
        "--ssl-ca-certfile": d / "ca.crt",
        "--ssl-certfile": d / "server.pem",
        "--ssl-keyfile": d / "server.key",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}: run `fedrec certs {d}`")
    return [x for flag, path in files.items() for x in (flag, str(path))]


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(existing)} already exist; pass --force to replace them")


def _ca_certificate(
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Name, x509.Certificate]:
    """A fresh self-signed CA: its key, its name and its certificate (ECDSA P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec"),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedrec deployment CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_name, ca_cert


def _server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    hosts: Sequence[str],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh SuperLink key and its certificate, signed by the CA.

    Subject alternative names: :data:`DEFAULT_HOSTS` plus ``hosts`` (IP addresses as such,
    other names as DNS names).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*DEFAULT_HOSTS, *hosts):
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    first = next((h for h in hosts if h.strip()), "localhost")
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec"),
                    x509.NameAttribute(NameOID.COMMON_NAME, first),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return server_key, server_cert


def generate_certificates(
    out_dir: str | Path, *, hosts: Sequence[str] = (), days: int = 365, force: bool = False
) -> dict[str, Path]:
    """A CA and a SuperLink server certificate signed by it (ECDSA P-256, SHA-256).

    The server certificate's subject alternative names are ``localhost``, ``127.0.0.1`` and
    ``::1`` (the SuperLink's own runtime connects over loopback) plus ``hosts``.

    Returns:
        paths by role: ``ca_cert`` (``ca.crt``: give it to the SuperNodes and ``flwr``),
        ``ca_key`` (``ca.key``: keep offline), ``server_cert`` (``server.pem``) and
        ``server_key`` (``server.key``) for the SuperLink.
    """
    from cryptography.hazmat.primitives import serialization

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "ca_cert": out / "ca.crt",
        "ca_key": out / "ca.key",
        "server_cert": out / "server.pem",
        "server_key": out / "server.key",
    }
    _refuse_overwrite(list(paths.values()), force)
    if days < 1:
        raise ValueError(f"--days must be >= 1, got {days}")

    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key, ca_name, ca_cert = _ca_certificate(not_before, not_after)
    server_key, server_cert = _server_certificate(ca_key, ca_name, hosts, not_before, not_after)

    pem = serialization.Encoding.PEM
    key_format = serialization.PrivateFormat.PKCS8
    paths["ca_cert"].write_bytes(ca_cert.public_bytes(pem))
    _write_private(
        paths["ca_key"], ca_key.private_bytes(pem, key_format, serialization.NoEncryption())
    )
    paths["server_cert"].write_bytes(server_cert.public_bytes(pem))
    _write_private(
        paths["server_key"], server_key.private_bytes(pem, key_format, serialization.NoEncryption())
    )
    return paths


_CURVES = {"p256": "SECP256R1", "p384": "SECP384R1", "p521": "SECP521R1"}


def generate_node_keys(
    out_dir: str | Path,
    count: int,
    *,
    prefix: str = "node",
    curve: str = "p384",
    start: int = 1,
    force: bool = False,
) -> list[tuple[Path, Path]]:
    """SuperNode authentication key pairs in the OpenSSH format Flower reads.

    Each pair is ``PREFIX-i`` (the private key, for ``flower-supernode
    --auth-supernode-private-key``) and ``PREFIX-i.pub`` (``ecdsa-sha2-nistp384 ...``, for
    ``flwr supernode register``): what ``ssh-keygen -t ecdsa -b 384`` writes.

    Returns:
        ``(private, public)`` paths, in order.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    if curve not in _CURVES:
        raise ValueError(f"--curve must be one of {sorted(_CURVES)}, got {curve!r}")
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"--prefix must be a plain file name, got {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = [
        (out / f"{prefix}-{i}", out / f"{prefix}-{i}.pub") for i in range(start, start + count)
    ]
    _refuse_overwrite([p for pair in pairs for p in pair], force)
    for private_path, public_path in pairs:
        key = ec.generate_private_key(getattr(ec, _CURVES[curve])())
        _write_private(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public_path.write_bytes(public + f" fedrec-{private_path.name}\n".encode())
    return pairs


# --------------------------------------------------------------------------- flwr config, app


def _flwr_home(flwr_home: str | Path | None) -> Path:
    if flwr_home is not None:
        return Path(flwr_home).expanduser()
    return Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser()


def write_connection(
    name: str,
    address: str,
    *,
    root_certificates: str | Path | None,
    insecure: bool = False,
    flwr_home: str | Path | None = None,
    default: bool = False,
) -> Path:
    """Add (or replace) a SuperLink connection in ``$FLWR_HOME/config.toml`` for ``flwr``.

    Other connections in the file are kept. Returns the file's path.
    """
    import tomllib

    import tomli_w  # a dependency of flwr

    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"connection name must be letters, digits, - and _, got {name!r}")
    if insecure == (root_certificates is not None):
        raise ValueError("give --root-certificates (TLS), or --insecure (no TLS), not both")
    path = _flwr_home(flwr_home) / "config.toml"
    data: dict = {}
    if path.exists():
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    superlink = data.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        cert = Path(root_certificates).expanduser().resolve()  # type: ignore[arg-type]
        if not cert.is_file():
            raise FileNotFoundError(f"root certificate {cert} does not exist")
        entry["root-certificates"] = str(cert)
    superlink[name] = entry
    if default or "default" not in superlink:
        superlink["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_deploy_app(
    out_dir: str | Path,
    *,
    n_items: int | None = None,
    catalog: str | Path | None = None,
    min_nodes: int = 1,
    settings: dict[str, object] | None = None,
    force: bool = False,
) -> Path:
    """Write the Flower App directory of a deployment (``flwr run OUT_DIR CONNECTION``).

    The app is only a ``pyproject.toml`` naming fedrec's deployment components (fedrec itself
    must be installed where the SuperLink and SuperNodes run) and the run config: every
    :class:`~fedrec.common.config.RunConfig` key plus the deployment keys of
    :mod:`fedrec.server.deployment` (``catalog`` or ``n-items``, ``min-nodes``,
    ``round-timeout``, ``wait-timeout``).
    """
    from fedrec.common.config import RunConfig

    if (n_items is None) == (catalog is None):
        raise ValueError("give the catalog as --n-items N or --catalog FILE (one of them)")
    out = Path(out_dir)
    target = out / "pyproject.toml"
    _refuse_overwrite([target], force)
    config: dict[str, object] = {
        k: v
        for k, v in RunConfig().to_flat().items()
        if k not in ("dataset", "data-dir", "synthetic-users", "synthetic-items", "split")
    }
    # deployment defaults: every connected device is asked each round (each one refuses by
    # itself when its budget or training policy says no); run-dir "": a fresh
    # runs/<timestamp> in the working directory of the SuperLink's ServerApp process
    config.update({"num-rounds": 10, "fraction-train": 1.0, "run-dir": ""})
    config["catalog"] = str(Path(catalog).expanduser().resolve()) if catalog else ""
    config["n-items"] = int(n_items) if n_items is not None else 0
    config["min-nodes"] = int(min_nodes)
    config["round-timeout"] = 600.0
    config["wait-timeout"] = 300.0
    for key, value in (settings or {}).items():
        if key not in config:
            raise ValueError(f"unknown run-config key {key!r}; valid: {', '.join(config)}")
        config[key] = value
    lines = [
        "# A fedrec deployment (written by `fedrec deploy-app`). Submit it with",
        f"#   flwr run {out} CONNECTION --stream",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "fedrec-deployment"',
        'version = "0.1.0"',
        'description = "fedrec: federated recommendation with DP on real SuperNodes"',
        'license = "Apache-2.0"',
        "dependencies = []  # fedrec is installed on the SuperLink and SuperNode machines",
        "",
        "[tool.flwr.app]",
        'publisher = "fedrec"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVER_APP}"',
        f'clientapp = "{CLIENT_APP}"',
        "",
        "[tool.flwr.app.config]",
        *(f"{k} = {_toml_value(v)}" for k, v in config.items()),
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines), encoding="utf-8")
    return target


# --------------------------------------------------------------------------- Flower processes


def superlink_command(
    *,
    certs: str | Path | None,
    host: str = "127.0.0.1",
    port: int = 9093,
    database: str | Path | None = None,
    insecure: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``flower-superlink`` command line: TLS and SuperNode authentication on."""
    cmd = [
        "flower-superlink",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if insecure:
        cmd.append("--insecure")
    else:
        if certs is None:
            raise ValueError("--certs DIR (from `fedrec certs DIR`) is required; or --insecure")
        cmd += _tls_flags(certs)
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd + list(extra)


def node_config_arg(values: dict[str, object]) -> str:
    """Flower's ``--node-config`` string (``key="value" ...``) for the given values."""
    parts = []
    for key, value in values.items():
        if not key.replace("-", "").isalnum():
            raise ValueError(f"bad node-config key {key!r}")
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key}={value!r}")
        else:
            text = str(value)
            if '"' in text or "\\" in text:
                raise ValueError(
                    f"node-config value of {key!r} may not contain quotes or backslashes: {text!r}"
                )
            parts.append(f'{key}="{text}"')
    return " ".join(parts)


def supernode_command(
    *,
    superlink: str,
    store: str | Path,
    root_certificates: str | Path | None,
    auth_key: str | Path | None,
    port: int = 9094,
    host: str = "127.0.0.1",
    events: str | Path | None = None,
    catalog: str | Path | None = None,
    node_config: dict[str, object] | None = None,
    insecure: bool = False,
    runtime_certs: str | Path | None = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``flower-supernode`` command line of one device (TLS and its auth key).

    ``runtime_certs``: a folder of ``fedrec certs`` made *for this device* (never the
    SuperLink's keys) to serve the SuperNode's local runtime API (SuperNode <-> its ClientApp
    processes, on ``host``, loopback by default) over TLS too.
    """
    values: dict[str, object] = {"store": str(Path(store).expanduser().resolve())}
    if events is not None:
        values["events"] = str(Path(events).expanduser().resolve())
    if catalog is not None:
        values["catalog"] = str(Path(catalog).expanduser().resolve())
    values.update(node_config or {})
    cmd = [
        "flower-supernode",
        "--superlink",
        superlink,
        "--host",
        host,
        "--port",
        str(port),
        "--isolation",
        "subprocess",
        "--node-config",
        node_config_arg(values),
    ]
    if insecure:
        cmd.append("--insecure")
        if auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(Path(auth_key).expanduser())]
    else:
        if root_certificates is None or auth_key is None:
            raise ValueError(
                "--root-certificates (the CA of `fedrec certs`) and --auth-key (a "
                "key of `fedrec node-keys`) are required; or --insecure"
            )
        for p in (root_certificates, auth_key):
            if not Path(p).expanduser().is_file():
                raise FileNotFoundError(f"{p} does not exist")
        cmd += [
            "--root-certificates",
            str(Path(root_certificates).expanduser()),
            "--auth-supernode-private-key",
            str(Path(auth_key).expanduser()),
        ]
    if runtime_certs is not None:
        cmd += _tls_flags(runtime_certs)
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd + list(extra)


def _warn_insecure() -> None:
    print(INSECURE_WARNING, file=sys.stderr, flush=True)


def _flower_env() -> dict[str, str]:
    """The environment of the Flower processes.

    No network beyond the deployment's own: no dependency installation at run time, no
    update check, no telemetry (set these variables yourself to choose otherwise).
    """
    env = dict(os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


def _exec(cmd: list[str], *, dry_run: bool) -> int:
    """Replace this process by ``cmd`` (so its pid and signals are Flower's)."""
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    exe = shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(
            f"{cmd[0]} not found on PATH: install flwr (pip install "
            "'flwr>=1.42,<1.43') in this environment"
        )
    env = _flower_env()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(exe, cmd, env)
    return 0  # pragma: no cover


# --------------------------------------------------------------------------- subcommands


def _run_certs(args: argparse.Namespace) -> int:
    paths = generate_certificates(args.out_dir, hosts=args.host, days=args.days, force=args.force)
    for role, path in paths.items():
        print(f"{role:12s} {path}")
    print("Keep ca.key offline; give ca.crt to the SuperNodes and to `flwr` (--root-certificates).")
    return 0


def _run_node_keys(args: argparse.Namespace) -> int:
    pairs = generate_node_keys(
        args.out_dir,
        args.count,
        prefix=args.prefix,
        curve=args.curve,
        start=args.start,
        force=args.force,
    )
    for private, public in pairs:
        print(f"{private}  (private, for flower-supernode)   {public}  (register it)")
    print(
        "Register each public key with the SuperLink before its SuperNode starts:\n  "
        + "\n  ".join(f"flwr supernode register {pub} CONNECTION" for _, pub in pairs)
    )
    return 0


def _run_connection(args: argparse.Namespace) -> int:
    if args.insecure:
        _warn_insecure()
    path = write_connection(
        args.name,
        args.address,
        root_certificates=None if args.insecure else args.root_certificates,
        insecure=args.insecure,
        flwr_home=args.flwr_home,
        default=args.default,
    )
    print(f"connection {args.name!r} -> {args.address} written to {path}")
    return 0


def _parse_settings(items: Sequence[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        parsed: object = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                continue
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        out[key] = parsed
    return out


def _run_deploy_app(args: argparse.Namespace) -> int:
    path = write_deploy_app(
        args.out_dir,
        n_items=args.n_items,
        catalog=args.catalog,
        min_nodes=args.min_nodes,
        settings=_parse_settings(args.set),
        force=args.force,
    )
    print(f"wrote {path}\nsubmit the run with:  flwr run {path.parent} CONNECTION --stream")
    return 0


def _run_superlink(args: argparse.Namespace) -> int:
    if args.insecure:
        _warn_insecure()
    cmd = superlink_command(
        certs=args.certs,
        host=args.host,
        port=args.port,
        database=args.database,
        insecure=args.insecure,
    )
    return _exec(cmd, dry_run=args.dry_run)


def close_stale_session(
    *,
    superlink: str,
    store: str | Path,
    auth_key: str | Path,
    root_certificates: str | Path | None,
    insecure: bool = False,
) -> int | None:
    """Close the SuperLink session a crashed SuperNode of this device left open.

    Flower 1.42 keeps a SuperNode that vanished without saying goodbye (SIGKILL, power loss)
    online until it misses two heartbeats (up to 60 s) and refuses to activate its key again
    until then; meanwhile the ServerApp waits for replies the dead process will never send.
    The device's store records the node id of its last session (written by the ClientApp),
    so the restarting device deactivates that session itself, authenticated with its own
    SuperNode key (the SuperLink checks that the key owns the node id).

    Returns:
        the node id whose session was closed, or None (nothing recorded, nothing open, or
        the SuperLink refused).
    """
    from fedrec.client.storage import DeviceStore
    from fedrec.common.config import NODE_ID_META

    path = Path(store).expanduser()
    if not path.exists():
        return None
    with DeviceStore(path) as s:
        node_id = s.get_meta(NODE_ID_META)
    if node_id is None:
        return None
    try:
        import httpx
        from cryptography.hazmat.primitives.serialization import load_ssh_private_key
        from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=E0611
        from flwr.supercore.interceptors.http.runtime_version import (
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supernode.fleet_http_client import FleetHttpClient
        from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

        key = load_ssh_private_key(Path(auth_key).expanduser().read_bytes(), None)
        interceptors = [
            RuntimeVersionHttpInterceptor(component_name="SuperNode"),
            NodeAuthHttpInterceptor(key, key.public_key()),
        ]  # type: ignore[arg-type]
        root = None if insecure else str(Path(root_certificates).expanduser())  # type: ignore[arg-type]
        with FleetHttpClient.from_server_address(
            superlink, insecure, root, interceptors=interceptors
        ) as client:
            client.DeactivateNode(DeactivateNodeRequest(node_id=int(node_id)))
    except (httpx.HTTPError, OSError, ValueError, RuntimeError, TypeError, ImportError):
        return None  # no open session (or not ours): nothing to close
    return int(node_id)


def _supervise(cmd: list[str], args: argparse.Namespace) -> int:
    """Run flower-supernode; after closing a stale session, and retrying a refused rejoin."""
    import signal
    import subprocess
    import time

    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    exe = shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(
            f"{cmd[0]} not found on PATH: install flwr (pip install "
            "'flwr>=1.42,<1.43') in this environment"
        )
    env = _flower_env()
    if not args.insecure or args.auth_key:
        closed = close_stale_session(
            superlink=args.superlink,
            store=args.store,
            auth_key=args.auth_key,
            root_certificates=args.root_certificates,
            insecure=args.insecure,
        )
        if closed is not None:
            print(
                f"fedrec supernode: closed this device's previous session (node {closed}) "
                f"that a crash left open; rejoining in {args.rejoin_delay:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(max(0.0, args.rejoin_delay))
    deadline = time.monotonic() + max(0.0, args.rejoin_timeout)
    child: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        child = subprocess.Popen([exe, *cmd[1:]], env=env)
        rc = child.wait()
        if rc != _SUPERNODE_CONNECTION_ERROR or time.monotonic() >= deadline:
            return rc
        print(
            "fedrec supernode: the SuperLink refused to activate this node (not "
            "registered, or a previous session is still open: Flower closes it after two "
            "missed heartbeats, up to 60 s); retrying in 5 s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(5.0)


#: flower-supernode's exit code when the connection (activation) to the SuperLink fails.
_SUPERNODE_CONNECTION_ERROR = 305


def _run_supernode(args: argparse.Namespace) -> int:
    if args.insecure:
        _warn_insecure()
    extra_config = _parse_settings(args.node_config)
    cmd = supernode_command(
        superlink=args.superlink,
        store=args.store,
        root_certificates=args.root_certificates,
        auth_key=args.auth_key,
        port=args.port,
        host=args.host,
        events=args.events,
        catalog=args.catalog,
        node_config=extra_config,
        insecure=args.insecure,
        runtime_certs=args.runtime_certs,
        max_retries=args.max_retries,
        max_wait_time=args.max_wait_time,
    )
    if args.dry_run:
        return _exec(cmd, dry_run=True)
    return _supervise(cmd, args)


def _add_certs_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """The ``certs`` subcommand's parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        name,
        help=help_text,
        formatter_class=fmt,
        description=(
            "Generate a CA and a SuperLink TLS certificate signed by it (ECDSA P-256), for "
            "localhost, 127.0.0.1 and ::1 plus any --host.\n\n" + _GUIDE
        ),
    )
    p.add_argument("out_dir", help="folder for ca.crt, ca.key, server.pem, server.key")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="another DNS name or IP the SuperNodes use to reach the SuperLink (repeatable)",
    )
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=_run_certs)


def _add_node_keys_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """The ``node-keys`` subcommand's parser."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Generate SuperNode authentication key pairs (OpenSSH ECDSA, as "
            "`ssh-keygen -t ecdsa -b 384` writes): PREFIX-i (private) and PREFIX-i.pub "
            "(register it with `flwr supernode register`)."
        ),
    )
    p.add_argument("out_dir")
    p.add_argument("--count", type=int, default=1, help="key pairs (default 1)")
    p.add_argument("--prefix", default="node", help="file name prefix (default node)")
    p.add_argument("--start", type=int, default=1, help="first index (default 1)")
    p.add_argument(
        "--curve",
        choices=sorted(_CURVES),
        default="p384",
        help="NIST curve (default p384, as Flower's guide)",
    )
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=_run_node_keys)


def _add_connection_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """The ``connection`` subcommand's parser."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Add a SuperLink connection for `flwr` (run, supernode register, ls ...) to "
            "$FLWR_HOME/config.toml (default ~/.flwr), keeping the others."
        ),
    )
    p.add_argument("name", help="connection name (e.g. fedrec-tls)")
    p.add_argument("--address", required=True, help="SuperLink HOST:PORT")
    p.add_argument("--root-certificates", help="the CA certificate (ca.crt)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS (prints a loud warning; debugging on loopback only)",
    )
    p.add_argument("--flwr-home", default=None, help="default $FLWR_HOME or ~/.flwr")
    p.add_argument("--default", action="store_true", help="make it the default")
    p.set_defaults(func=_run_connection)


def _add_deploy_app_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """The ``deploy-app`` subcommand's parser."""
    p = sub.add_parser(name, help=help_text, description=write_deploy_app.__doc__)
    p.add_argument("out_dir", help="the Flower App folder to write")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--n-items", type=int, help="catalog size (items are rows 0..N-1)")
    group.add_argument(
        "--catalog", help='JSON file: the item ids in row order (a list, or {"item_ids": [...]})'
    )
    p.add_argument(
        "--min-nodes", type=int, default=1, help="devices to wait for before round 1 (default 1)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any run-config key (repeatable), e.g. num-rounds=20",
    )
    p.add_argument("--force", action="store_true", help="replace an existing app")
    p.set_defaults(func=_run_deploy_app)


def _add_superlink_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """The ``superlink`` subcommand's parser."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Start flower-superlink with TLS (the certificates of `fedrec certs`) and "
            "SuperNode authentication (only registered keys may connect). Replaces this "
            "process by flower-superlink."
        ),
    )
    p.add_argument("--certs", help="folder written by `fedrec certs`")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for remote devices)",
    )
    p.add_argument("--port", type=int, default=9093, help="port (default 9093)")
    p.add_argument(
        "--database",
        default=None,
        help="SQLite file of the SuperLink's state (registered nodes, runs); default in memory",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="NO TLS and NO SuperNode authentication (loud warning)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    p.set_defaults(func=_run_superlink)


def _add_reconnection_options(p: argparse.ArgumentParser) -> None:
    """The ``supernode`` options on reconnecting and on rejoining after a crash."""
    p.add_argument(
        "--max-retries",
        type=int,
        default=None,
        help="flower-supernode: reconnection attempts (default unlimited)",
    )
    p.add_argument(
        "--max-wait-time",
        type=float,
        default=None,
        help="flower-supernode: seconds to keep reconnecting (default unlimited)",
    )
    p.add_argument(
        "--rejoin-timeout",
        type=float,
        default=90.0,
        help="keep retrying for this many seconds when the SuperLink refuses "
        "to activate this node (default 90: Flower releases a crashed "
        "node's session within 60 s); 0: fail at once",
    )
    p.add_argument(
        "--rejoin-delay",
        type=float,
        default=5.0,
        help="after closing a session a crash left open, wait this long "
        "before rejoining (default 5 s: the ServerApp polls every 3 s and "
        "must see the old session closed to stop waiting for it)",
    )


def _add_supernode_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """The ``supernode`` subcommand's parser."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Start flower-supernode for one device: TLS to the SuperLink, its "
            "authentication key, and --node-config naming the device's SQLite store (state "
            "kept across restarts). After a crash it first closes the session the dead "
            "SuperNode left open on the SuperLink (authenticated with this node's key), and "
            "it retries while the SuperLink still refuses the node (--rejoin-timeout)."
        ),
    )
    p.add_argument("--superlink", default="127.0.0.1:9093", help="SuperLink HOST:PORT")
    p.add_argument("--root-certificates", help="the CA certificate (ca.crt)")
    p.add_argument("--auth-key", help="this SuperNode's private key (fedrec node-keys)")
    p.add_argument("--store", required=True, help="the device's SQLite store")
    p.add_argument(
        "--events",
        default=None,
        help="demo data: a JSON/CSV file of this user's events, imported once",
    )
    p.add_argument(
        "--catalog",
        default=None,
        help="JSON file of item ids in row order (else the store's catalog, "
        "else ids are row numbers)",
    )
    p.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more node-config (e.g. epsilon-budget=4, charging=false)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="host of this SuperNode's local runtime API (default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=9094,
        help="port of this SuperNode's local runtime API (default 9094; one "
        "per SuperNode on a machine)",
    )
    p.add_argument(
        "--runtime-certs",
        default=None,
        help="a `fedrec certs` folder made for this device: serve the "
        "SuperNode's local runtime API (to its ClientApp processes) over "
        "TLS as well (default: plain HTTP on loopback)",
    )
    _add_reconnection_options(p)
    p.add_argument(
        "--insecure",
        action="store_true",
        help="NO TLS (loud warning); SuperNode authentication then needs the "
        "SuperLink's TLS anyway",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    p.set_defaults(func=_run_supernode)


#: Each subcommand of this module, by name, and the function adding its parser.
_PARSERS = {
    "certs": _add_certs_parser,
    "node-keys": _add_node_keys_parser,
    "connection": _add_connection_parser,
    "deploy-app": _add_deploy_app_parser,
    "superlink": _add_superlink_parser,
    "supernode": _add_supernode_parser,
}


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add one of this module's subcommands (``name`` picks which)."""
    add_parser = _PARSERS.get(name)
    if add_parser is None:  # pragma: no cover - a _COMMANDS entry without a parser here
        raise ValueError(f"fedrec.cli.deploy has no subcommand {name!r}")
    add_parser(sub, name, help_text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedrec.cli.deploy COMMAND``: this module's commands alone.

    Same commands and options as ``fedrec COMMAND``, without loading the other subcommands
    (``fedrec``'s parser imports torch through them): a faster start for SuperNodes that
    restart often.
    """
    from fedrec.cli import _COMMANDS

    parser = argparse.ArgumentParser(
        prog="python -m fedrec.cli.deploy", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _COMMANDS.items():
        if module == "deploy":
            register(sub, name, help_text)
    from fedrec.cli import dispatch

    return dispatch(parser, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
