"""A private RabbitMQ node with a mutual-TLS listener, and the certificates it needs, for tests.

Nothing here touches the system broker (rabbit@localhost, 127.0.0.1:5672, dist port 25672): the node
gets its own name (``lamassutls<port>@localhost``), its own Erlang cookie (``HOME`` is a temp dir),
its own data/log/config files under that temp dir, a free distribution port, and listens on
127.0.0.1 only. ``/etc/rabbitmq/rabbitmq-env.conf`` (which names the system node) is kept out by
pointing ``RABBITMQ_CONF_ENV_FILE`` at an empty file.

Usage from a test module (the fixture is *named* ``tls_broker``; importing the function under
either name registers it)::

    from .tls_broker import TlsBroker, tls_broker_fixture  # noqa: F401

    async def test_x(tls_broker: TlsBroker) -> None:
        ctx = tls_broker.pki.client_context()
        conn = await aio_pika.connect_robust(tls_broker.url, ssl_context=ctx)

Or directly: ``with TlsBroker(make_pki(tmp)) as broker: ...`` / ``async with TlsBroker(...)``.

Set ``LAMASSU_TLS_BROKER_KEEP=1`` to keep the node's temp dir (config, logs, certs) after the stop.
Needs ``cryptography`` (dev dependency) and the Debian package ``rabbitmq-server``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RABBITMQ_BIN = Path(os.environ.get("LAMASSU_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
HOST = "127.0.0.1"
CLIENT_CN = "lamassu-aws-connector"

# ------------------------------------------------------------------------------------------------
# Certificates
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files (keys unencrypted) written by :func:`make_pki`."""

    directory: Path
    ca_cert: Path  # the CA the broker trusts and that signed server_cert and client_cert
    ca_key: Path
    server_cert: Path  # CN/SAN localhost, SAN IP 127.0.0.1 and ::1; serverAuth
    server_key: Path
    client_cert: Path  # CN=lamassu-aws-connector, clientAuth, signed by ca_cert
    client_key: Path
    other_ca_cert: Path  # an unrelated CA (for negative tests)
    other_ca_key: Path
    other_client_cert: Path  # CN=lamassu-aws-connector too, but signed by other_ca_cert
    other_client_key: Path
    client_cn: str = CLIENT_CN

    def client_context(
        self,
        *,
        cafile: Path | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        with_client_cert: bool = True,
    ) -> ssl.SSLContext:
        """A client context verifying the server (hostname included) against ``cafile`` (default
        the good CA) and presenting ``certfile``/``keyfile`` (default the good client cert)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile or self.ca_cert))
        if with_client_cert:
            ctx.load_cert_chain(str(certfile or self.client_cert), str(keyfile or self.client_key))
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lamassu-aws-connector tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=30)
    )


def _make_ca(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _key()
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, builder.sign(key, hashes.SHA256())


def _make_leaf(
    cn: str,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    *,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _key()
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: str | os.PathLike[str]) -> Pki:
    """Write a test PKI into ``directory`` (created if needed) and return the file paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _make_ca("lamassu test CA")
    srv_key, srv = _make_leaf(
        "localhost",
        ca_key,
        ca,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ],
    )
    cli_key, cli = _make_leaf(CLIENT_CN, ca_key, ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    oca_key, oca = _make_ca("unrelated test CA")
    ocli_key, ocli = _make_leaf(CLIENT_CN, oca_key, oca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = Pki(
        directory=d,
        ca_cert=d / "ca.pem",
        ca_key=d / "ca.key",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca_cert=d / "other-ca.pem",
        other_ca_key=d / "other-ca.key",
        other_client_cert=d / "other-client.pem",
        other_client_key=d / "other-client.key",
    )
    for path, cert in (
        (pki.ca_cert, ca),
        (pki.server_cert, srv),
        (pki.client_cert, cli),
        (pki.other_ca_cert, oca),
        (pki.other_client_cert, ocli),
    ):
        _write_cert(path, cert)
    for path, key in (
        (pki.ca_key, ca_key),
        (pki.server_key, srv_key),
        (pki.client_key, cli_key),
        (pki.other_ca_key, oca_key),
        (pki.other_client_key, ocli_key),
    ):
        _write_key(path, key)
    return pki


# ------------------------------------------------------------------------------------------------
# Broker
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


# Runs rabbitmq-server ($0) and stops it with SIGTERM (its trap then stops the VM gracefully) as soon
# as our stdin reaches EOF: when stop() closes the pipe, or when the test process dies, even by
# SIGKILL, so a crashed test run leaves no node behind; then removes the node's directory ($1, if
# given). (An asynchronous list gets /dev/null as stdin in sh, hence fd 3.)
_WATCHDOG = """
exec 3<&0 </dev/null
"$0" 3<&- &
server=$!
{
  cat <&3 >/dev/null
  kill -TERM "$server" 2>/dev/null
  while kill -0 "$server" 2>/dev/null; do sleep 0.2; done
  case $1 in */lamassu-tls-broker-*) rm -rf "$1" ;; esac
} &
exec 3<&-
wait "$server"
"""


def node_env(directory: Path, node: str, dist_port: int) -> dict[str, str]:
    """Environment for a private RabbitMQ node whose files all live under ``directory``, on loopback."""
    d = directory
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env.update(
        HOME=str(d),  # Erlang cookie: $HOME/.erlang.cookie (for the node and rabbitmqctl)
        RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),  # empty: keeps /etc's NODENAME out
        RABBITMQ_NODENAME=node,
        RABBITMQ_DIST_PORT=str(dist_port),
        RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
        RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
        RABBITMQ_LOG_BASE=str(d / "log"),
        ERL_EPMD_ADDRESS=HOST,
        ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
    )
    return env


class TlsBrokerError(RuntimeError):
    pass


_live: weakref.WeakSet[TlsBroker] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - safety net if a finalizer never ran
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.stop()


class TlsBroker:
    """A private RabbitMQ node with only a TLS listener (peer verification, client cert required).

    Attributes once started: ``port`` (TLS, on 127.0.0.1), ``plain_port`` (plain AMQP on 127.0.0.1,
    or None unless ``plain_listener=True``), ``url`` (``amqps://guest:guest@localhost:<port>/``),
    ``node``, ``pki``, ``directory`` (temp dir with rabbitmq.conf, log/, mnesia/),
    ``startup_seconds``, ``stop_seconds``.

    ``start()``/``stop()`` block; ``async with`` runs them in a worker thread.
    """

    def __init__(
        self,
        pki: Pki,
        *,
        timeout: float = 60.0,
        plain_listener: bool = False,
        tls_versions: tuple[str, ...] | None = None,
    ) -> None:
        self.pki = pki
        self.timeout = timeout
        self.tls_versions = tls_versions  # e.g. ("tlsv1.2",); None = the broker's default
        self._plain_listener = plain_listener
        self.port = 0
        self.plain_port: int | None = None
        self.dist_port = 0
        self.node = ""
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: Path | None = None
        self.startup_seconds: float | None = None
        self.stop_seconds: float | None = None

    # -- URLs ------------------------------------------------------------------------------------

    def url_for(self, host: str = "localhost", user: str = "guest", password: str = "guest", query: str = "") -> str:
        """``amqps://user:password@host:port/`` (+ ``?query``). ``localhost`` and ``127.0.0.1`` both
        match the server certificate's SANs."""
        return f"amqps://{user}:{password}@{host}:{self.port}/" + (f"?{query}" if query else "")

    @property
    def url(self) -> str:
        return self.url_for()

    # -- environment -----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        assert self.directory is not None
        return node_env(self.directory, self.node, self.dist_port)

    def rabbitmqctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs ``rabbitmqctl -n <this node> ARGS`` with this node's cookie."""
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.node, *args],
            env=self._env(),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def list_connections(self, *fields: str) -> list[dict[str, object]]:
        """The node's client connections as seen by the broker (``rabbitmqctl list_connections``),
        e.g. fields ``name ssl ssl_protocol peer_cert_subject peer_cert_issuer user``. ~0.5 s."""
        fields = fields or ("name", "ssl", "ssl_protocol", "peer_cert_subject", "peer_cert_issuer", "user")
        out = self.rabbitmqctl("list_connections", *fields, "--formatter", "json").stdout
        result: list[dict[str, object]] = json.loads(out or "[]")
        return result

    def close_all_connections(self, reason: str = "closed by test") -> None:
        """Closes every client connection from the broker side (CONNECTION_FORCED). ~0.5 s."""
        self.rabbitmqctl("close_all_connections", reason)

    def _write_config(self) -> None:
        assert self.directory is not None
        d = self.directory
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        cookie = d / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        lines = [
            "listeners.tcp = none" if self.plain_port is None else f"listeners.tcp.default = {HOST}:{self.plain_port}",
            f"listeners.ssl.default = {HOST}:{self.port}",
            f"ssl_options.cacertfile = {self.pki.ca_cert}",
            f"ssl_options.certfile = {self.pki.server_cert}",
            f"ssl_options.keyfile = {self.pki.server_key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
            "loopback_users.guest = true",  # guest only from loopback (the default; we connect from 127.0.0.1)
        ]
        for i, version in enumerate(self.tls_versions or (), start=1):
            lines.append(f"ssl_options.versions.{i} = {version}")
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def log_tail(self, lines: int = 40) -> str:
        out = []
        files: list[Path] = []
        if self._console is not None:
            files.append(self._console)
        if self.directory is not None:
            files.extend(sorted((self.directory / "log").glob("*.log")))
        for f in files:
            with contextlib.suppress(OSError):
                tail = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"----- last lines of {f} -----\n" + "\n".join(tail))
        return "\n".join(out) or "(no log)"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> TlsBroker:
        if self._proc is not None:
            raise TlsBrokerError("already started")
        t0 = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="lamassu-tls-broker-"))
        self.port = free_port()
        self.plain_port = free_port() if self._plain_listener else None
        self.dist_port = free_port()
        while self.dist_port in (self.port, self.plain_port, 25672):
            self.dist_port = free_port()
        self.node = f"lamassutls{self.port}@localhost"
        self._write_config()
        self._console = self.directory / "log" / "console.log"
        with self._console.open("wb") as console:
            self._proc = subprocess.Popen(
                [
                    "/bin/sh",
                    "-c",
                    _WATCHDOG,
                    str(RABBITMQ_BIN / "rabbitmq-server"),
                    "" if os.environ.get("LAMASSU_TLS_BROKER_KEEP") else str(self.directory),
                ],
                env=self._env(),
                cwd=self.directory,
                stdin=subprocess.PIPE,  # the watchdog: when this pipe closes (stop() or our death), the node stops
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can kill erl and its helpers
            )
        _live.add(self)
        try:
            self._wait_ready(t0 + self.timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while not _port_open(self.port):
            if self._proc.poll() is not None:
                raise TlsBrokerError(
                    f"RabbitMQ node {self.node} exited with {self._proc.returncode} during startup\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TlsBrokerError(
                    f"RabbitMQ node {self.node} did not open {HOST}:{self.port} within {self.timeout}s\n"
                    + self.log_tail()
                )
            time.sleep(0.2)
        left = max(5, int(deadline - time.monotonic()))
        try:
            self.rabbitmqctl("await_startup", "--timeout", str(left), timeout=left + 15)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            output = getattr(e, "stderr", "") or ""
            raise TlsBrokerError(
                f"rabbitmqctl await_startup failed for {self.node}: {e}\n{output}\n" + self.log_tail()
            ) from e

    def stop(self) -> None:
        """Stops the node and everything in its process group; idempotent.

        Closing the watchdog pipe makes the wrapper send SIGTERM to ``rabbitmq-server``, whose trap
        stops the Erlang VM gracefully; whatever is left after 20 s is killed (SIGKILL to the group).
        """
        proc = self._proc
        if proc is None:
            return
        t0 = time.monotonic()
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            self._wait_exit(proc, 20)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                self._wait_exit(proc, 10)
        finally:
            # Whatever else is left in the group (the watchdog, erl_child_setup, a stuck VM...).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            self._proc = None
            _live.discard(self)
            self.stop_seconds = time.monotonic() - t0
            if self.directory is not None and not os.environ.get("LAMASSU_TLS_BROKER_KEEP"):
                shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(seconds)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def __enter__(self) -> TlsBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> TlsBroker:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


# ------------------------------------------------------------------------------------------------
# Fixture
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="tls_broker")
def tls_broker_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """One mutual-TLS RabbitMQ node per test module (sync fixture: usable by async tests with any
    event-loop scope). Import it into a test module to use it; the fixture name is ``tls_broker``."""
    pki = make_pki(tmp_path_factory.mktemp("tls-pki"))
    with TlsBroker(pki) as broker:
        yield broker


# ``from .tls_broker import tls_broker`` works too (same fixture; import only one of the two names).
tls_broker = tls_broker_fixture
