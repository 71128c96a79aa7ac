"""A private plain-AMQP RabbitMQ node that a test may kill and restart, for fault injection.

Unlike :class:`tests.tls_broker.TlsBroker` (a fresh node per start), this node keeps its ports, its
node name and its data directory across restarts, so durable queues and persistent messages survive
a crash exactly as on a production broker. It never touches the shared broker on 5672: its own node
name, Erlang cookie, distribution port and files under a temp dir (the same isolation as TlsBroker).

    broker = PrivateBroker().start()
    broker.add_user("lamassu", password)       # a distinctive password the tests grep logs for
    broker.kill()                              # SIGKILL of the Erlang VM (beam), like a crash
    broker.start()                             # same ports, same data dir
    broker.stop()                              # graceful (SIGTERM to rabbitmq-server)
    broker.close()                             # stop and remove the data dir
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .tls_broker import _WATCHDOG, HOST, RABBITMQ_BIN, TlsBrokerError, _port_open, free_port, node_env


class PrivateBroker:
    def __init__(self, *, timeout: float = 60.0, extra_config: tuple[str, ...] = ()) -> None:
        self.timeout = timeout
        self.extra_config = extra_config
        self.directory = Path(tempfile.mkdtemp(prefix="lamassu-private-broker-"))
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port in (self.port, 25672):
            self.dist_port = free_port()
        self.node = f"lamassuplain{self.port}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None
        self.listening_at = 0.0  # time.monotonic() when the AMQP port last opened
        self._write_config()

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@{HOST}:{self.port}/"

    def _env(self) -> dict[str, str]:
        env = node_env(self.directory, self.node, self.dist_port)
        env["RABBITMQ_PID_FILE"] = str(self.directory / "node.pid")
        return env

    def _write_config(self) -> None:
        d = self.directory
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        cookie = d / ".erlang.cookie"
        cookie.write_text(os.urandom(20).hex().upper())
        cookie.chmod(0o400)
        lines = [f"listeners.tcp.default = {HOST}:{self.port}", "loopback_users.guest = true", *self.extra_config]
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.node, *args],
            env=self._env(),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return result.stdout

    def add_user(self, user: str, password: str) -> None:
        self.rabbitmqctl("add_user", user, password)
        self.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")

    def connection_names(self) -> list[str]:
        """The ``connection_name`` client property of every client connection (``rabbitmqctl``)."""
        out = self.rabbitmqctl("list_connections", "client_properties")
        return [line for line in out.splitlines() if line.strip()]

    def start(self) -> PrivateBroker:
        if self._proc is not None:
            raise TlsBrokerError("already running")
        console = (self.directory / "log" / "console.log").open("ab")
        with console:
            self._proc = subprocess.Popen(
                # The watchdog stops the node when our stdin closes (or we die); "" = keep the data dir.
                ["/bin/sh", "-c", _WATCHDOG, str(RABBITMQ_BIN / "rabbitmq-server"), ""],
                env=self._env(),
                cwd=self.directory,
                stdin=subprocess.PIPE,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.timeout
        try:
            while not _port_open(self.port):
                if self._proc.poll() is not None:
                    raise TlsBrokerError(f"RabbitMQ node {self.node} exited during startup\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TlsBrokerError(f"RabbitMQ node {self.node} did not listen in time\n{self.log_tail()}")
                time.sleep(0.1)
            self.listening_at = time.monotonic()
            self.rabbitmqctl("await_startup", "--timeout", str(int(self.timeout)), timeout=self.timeout + 15)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None

    def beam_pid(self) -> int:
        return int((self.directory / "node.pid").read_text().strip())

    def kill(self) -> None:
        """SIGKILL the Erlang VM: no clean shutdown, no flush beyond what RabbitMQ already fsynced."""
        assert self._proc is not None, "not running"
        os.kill(self.beam_pid(), signal.SIGKILL)
        self._reap(graceful=False)

    def stop(self) -> None:
        """Graceful stop (the watchdog sends SIGTERM to rabbitmq-server); SIGKILL whatever is left."""
        if self._proc is not None:
            self._reap(graceful=True)

    def _reap(self, *, graceful: bool) -> None:
        proc = self._proc
        assert proc is not None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30 if graceful else 10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self._proc = None
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted((self.directory / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)
