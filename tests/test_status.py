"""``status``: both sides at a glance; and the scripts' own status (services.sh ownership, bootstrap progress)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import orjson
import pytest
import yaml
from aiohttp import web
from prometheus_client import generate_latest

from lamassu_aws_connector import dlq, status
from lamassu_aws_connector.config import Settings
from lamassu_aws_connector.metrics import Metrics

from .conftest import AMQP_URL, SQS_ENDPOINT, World, running, wait_for
from .test_outbound import metric
from .tls_broker import free_port

ROOT = Path(__file__).resolve().parents[1]
AMQP_PORT = urlsplit(AMQP_URL).port or 5672
SQS_PORT = urlsplit(SQS_ENDPOINT).port or 80


def cli(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", "status", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


async def cli_async(settings: Settings, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """:func:`cli` without blocking the event loop (a connector of the test may run in it)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamassu_aws_connector",
        "status",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# --- the parts, without services -----------------------------------------------------------------


def test_key_counters_are_read_from_the_metrics_page() -> None:
    metrics = Metrics()
    metrics.events_consumed.inc(7)
    metrics.events_forwarded.labels("device.create").inc(3)
    metrics.events_forwarded.labels("other").inc(1)
    metrics.events_dead_lettered.labels("too_large").inc(2)
    metrics.events_skipped.labels("loop_guard").inc(1)
    metrics.replies_relayed.inc(4)
    metrics.replies_dead_lettered.labels("unroutable").inc(1)
    metrics.dependency_up.labels("sqs_command_queue").set(1)
    metrics.dependency_up.labels("s3").set(0)
    summary = status.summarize_metrics(generate_latest(metrics.registry).decode())
    assert summary["events_consumed"] == 7
    assert summary["events_forwarded"] == 4  # summed over types
    assert summary["events_dead_lettered"] == {"too_large": 2}  # codes at 0 are left out
    assert summary["events_skipped"] == {"loop_guard": 1}
    assert (summary["replies_relayed"], summary["replies_dead_lettered"]) == (4, {"unroutable": 1})
    assert summary["dependency_up"] == {"s3": 0, "sqs_command_queue": 1}  # every dependency, down ones too


def test_every_problem_is_named_and_nothing_else() -> None:
    quiet = status.Status(
        status.SideStatus(
            "rabbitmq",
            "amqp://guest:***@h:5672/",
            reachable=True,
            queues=[
                status.QueueStatus("q", "events queue", messages=0, consumers=1),
                status.QueueStatus("q.dlq", "event dead letters", messages=3, by_code={"too_large": 3}, peeked=3),
            ],
        ),
        status.SideStatus(
            "sqs",
            "http://h:4566",
            reachable=True,
            queues=[
                status.QueueStatus("cmd", "command queue", messages=5, in_flight=1),
            ],
        ),
    )
    assert quiet.problems == []  # dead letters waiting are news, not a failure
    text = status.render(quiet)
    assert "q.dlq" in text and "3  (too_large 3" in text and "5 visible, 1 in flight" in text
    broken = status.Status(
        status.SideStatus("rabbitmq", "amqp://guest:***@h:5672/", error="cannot connect to RabbitMQ at h:5672: x"),
        status.SideStatus(
            "sqs",
            "http://h:4566",
            reachable=True,
            queues=[
                status.QueueStatus("cmd", "command queue", exists=False),
            ],
        ),
        status.ConnectorStatus("http://h:8080", reachable=True, ready=False, down=["sqs", "amqp_consumer"]),
    )
    assert broken.problems == [
        "RabbitMQ (amqp://guest:***@h:5672/): cannot connect to RabbitMQ at h:5672: x",
        "SQS command queue 'cmd' does not exist",
        "connector at http://h:8080 is not ready: down: sqs, amqp_consumer",
    ]
    assert broken.to_dict()["ok"] is False


async def test_the_connector_part_reads_readyz_and_metrics() -> None:
    metrics = Metrics()
    metrics.events_forwarded.labels("other").inc(2)
    ready = {"value": False}

    async def readyz(_: web.Request) -> web.Response:
        checks = {"amqp_connection": True, "sqs": ready["value"]}
        down = [name for name, ok in checks.items() if not ok]
        return web.json_response({"checks": checks, "down": down}, status=200 if not down else 503)

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        found = await status.read_connector(f"127.0.0.1:{port}", 5)
        assert (found.reachable, found.ready, found.down) == (True, False, ["sqs"])
        assert found.metrics["events_forwarded"] == 2
        ready["value"] = True
        found = await status.read_connector(f"http://127.0.0.1:{port}/", 5)
        assert found.ready and found.error is None and found.checks == {"amqp_connection": True, "sqs": True}
    finally:
        await runner.cleanup()
    gone = await status.read_connector(f"http://127.0.0.1:{port}", 5)
    assert not gone.reachable and gone.error == "Connection refused"


# --- status on the real services -------------------------------------------------------------------


def dead_letter(event_id: str, code: str, **headers: str) -> aio_pika.Message:
    body = orjson.dumps({"specversion": "1.0", "id": event_id, "source": "lamassu/ca", "type": "ca.create", "data": {}})
    return aio_pika.Message(
        body,
        headers={"x-error-code": code, "x-dead-lettered-at": "2026-01-01T00:00:00.000+00:00", **headers},
    )


@pytest.mark.integration
async def test_status_shows_both_sides_and_consumes_nothing(world: World, tmp_path: Path) -> None:
    await world.create_sqs_queue(world.command_queue)
    await world.create_sqs_queue(world.response_queue)
    http_port = free_port()
    settings = world.settings(http={"host": "127.0.0.1", "port": http_port}, sqs={"create_queues": False})
    channel = await world.channel()
    async with running(settings) as service:  # declares the queues
        for number, code in enumerate(["too_large", "too_large", "invalid_json"]):
            await channel.default_exchange.publish(dead_letter(f"e-{number}", code), routing_key=world.dlq)
        await channel.default_exchange.publish(
            dead_letter("r-1", "unroutable", **{"x-sqs-message-id": "m-1"}), routing_key=world.reply_dlq
        )
        await world.publish(orjson.dumps({"specversion": "1.0", "id": "fwd-1", "source": "s", "type": "t"}))
        await wait_for(lambda: metric(service, "events_forwarded") == 1, what="one forwarded")
        code, shown, errors = await cli_async(settings, tmp_path, "--url", f"http://127.0.0.1:{http_port}")
        _, as_json, _ = await cli_async(settings, tmp_path, "--url", f"http://127.0.0.1:{http_port}", "--json")
    assert code == 0, shown + errors
    lines = shown.splitlines()

    def row(name: str) -> str:
        [found] = [line for line in lines if line.split()[:1] == [name]]
        return found

    assert "0 ready, 1 consumer(s)" in row(world.queue)
    assert "event dead letters  3  (too_large 2, invalid_json 1; oldest " in row(world.dlq)
    assert "1  (unroutable 1" in row(world.reply_dlq)
    assert "1 visible, 0 in flight" in row(world.command_queue)
    assert "0 visible, 0 in flight" in row(world.response_queue)
    assert any(line.startswith(f"connector http://127.0.0.1:{http_port}: ready") for line in lines)
    assert any("forwarded 1" in line for line in lines)
    # Peeking left every dead letter where it was.
    assert await world.queue_depth(world.dlq) == 3 and await world.queue_depth(world.reply_dlq) == 1
    document = orjson.loads(as_json)
    assert document["ok"] is True and document["problems"] == []
    dlq_entry = document["rabbitmq"]["queues"][1]
    assert (dlq_entry["name"], dlq_entry["messages"], dlq_entry["by_code"]) == (
        world.dlq,
        3,
        {"too_large": 2, "invalid_json": 1},
    )
    assert document["sqs"]["queues"][0]["messages"] == 1
    assert document["connector"]["metrics"]["events_forwarded"] == 1


@pytest.mark.integration
async def test_status_names_what_does_not_answer(world: World, tmp_path: Path) -> None:
    closed = free_port()
    unreachable = world.settings(amqp={"url": f"amqp://guest:s3cr3t-pw@127.0.0.1:{closed}/"})
    result = cli(unreachable, tmp_path, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert f"RabbitMQ amqp://guest:***@127.0.0.1:{closed}/: UNREACHABLE: cannot connect" in result.stdout
    assert "connection refused" in result.stdout.lower()
    for name in (world.queue, world.dlq, world.reply_dlq):  # still named, with no depth
        assert any(line.split()[:1] == [name] and "not looked at" in line for line in result.stdout.splitlines())
    assert "SQS http" in result.stdout  # the other side is still reported
    assert f"status: RabbitMQ (amqp://guest:***@127.0.0.1:{closed}/)" in result.stderr
    assert "status: connector at http://127.0.0.1:" in result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    no_sqs = world.settings(sqs={"endpoint_url": f"http://127.0.0.1:{closed}"})
    result = cli(no_sqs, tmp_path, "--peek", "0")
    assert result.returncode == 1
    assert f"SQS http://127.0.0.1:{closed}: UNREACHABLE: Connection refused" in result.stdout
    for name in (world.command_queue, world.response_queue):
        assert any(line.split()[:1] == [name] and "not looked at" in line for line in result.stdout.splitlines())
    assert "does not exist" in result.stderr  # nothing declared the queues of this test's names yet


@pytest.mark.integration
async def test_an_endpoint_that_answers_but_is_not_sqs_leaves_the_queues_unread(world: World, tmp_path: Path) -> None:
    async def not_sqs(_: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>not here</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_sqs)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = world.settings(sqs={"endpoint_url": f"http://127.0.0.1:{port}"})
        code, out, _ = await cli_async(settings, tmp_path, "--peek", "0", "--json")
    finally:
        await runner.cleanup()
    assert code == 1
    queues = {queue["name"]: queue for queue in orjson.loads(out)["sqs"]["queues"]}
    assert set(queues) == {world.command_queue, world.response_queue}
    for queue in queues.values():  # neither claimed to exist with an unknown depth
        assert queue["messages"] is None
        assert queue["exists"] is None
        assert queue["error"]


# --- scripts/services.sh: which clone started what ------------------------------------------------


def clone(tmp_path: Path, name: str) -> Path:
    """A stand-in for another clone of the project: its own scripts/services.sh, nothing else."""
    (tmp_path / name / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "services.sh", tmp_path / name / "scripts" / "services.sh")
    return (tmp_path / name).resolve()


def services(where: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The services the tests use, wherever scripts/test.sh put them.
    env = {**os.environ, "RABBITMQ_PORT": str(AMQP_PORT), "SQS_PORT": str(SQS_PORT)}
    env.pop("LAMASSU_SERVICES_STATE", None)
    if home is not None:
        env["LAMASSU_SERVICES_HOME"] = str(home)
    return subprocess.run(
        [str(where / "scripts" / "services.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def fake_localstack() -> Iterator[subprocess.Popen[bytes]]:
    """A process that looks like LocalStack to services.sh (its command line), and stops on TERM."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "localstack.runtime.main"],
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]


@pytest.mark.integration
def test_another_clone_reuses_the_services_but_claims_none(tmp_path: Path) -> None:
    other = clone(tmp_path, "other-clone")
    shown = services(other, "status")  # the shared cache, as a second clone on this machine has it
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"rabbitmq: amqp://guest:***@127.0.0.1:{AMQP_PORT}/ (up, not started by this clone)" in shown.stdout
    assert "up, not started by this clone)" in shown.stdout.splitlines()[1]
    assert not (other / ".services").exists()  # status only reads
    up = services(other, "up", home=tmp_path / "home")
    assert up.returncode == 0, up.stderr
    assert "(reused)" in up.stdout.splitlines()[0] and up.stdout.splitlines()[1].endswith(", reused)")


@pytest.mark.integration
def test_ownership_records_are_per_clone(tmp_path: Path, fake_localstack: subprocess.Popen[bytes]) -> None:
    """Clone A "started" an SQS server (a stand-in process, so no real service is ever stopped):
    only A claims it, only A's down stops it; a forged or stale record claims nothing."""
    home = tmp_path / "home"  # the shared cache of both clones
    a, b = clone(tmp_path, "a"), clone(tmp_path, "b")
    pid = fake_localstack.pid

    def sqs_status(where: Path) -> str:
        [line] = [line for line in services(where, "status", home=home).stdout.splitlines() if line.startswith("sqs:")]
        return line

    record = a / ".services" / f"sqs-{SQS_PORT}.pid"
    record.parent.mkdir()
    record.write_text(f"{pid} localstack {start_time(pid)} {a}\n")
    assert sqs_status(a).endswith(f"up, started by this clone, pid {pid})")
    assert sqs_status(b).endswith("up, not started by this clone)")
    down = services(b, "down", home=home)
    assert "sqs: not started by this clone; left alone" in down.stdout, down.stderr
    assert "rabbitmq: not started by this clone; left alone" in down.stdout
    assert fake_localstack.poll() is None
    # The record names another clone, or another process that once had this pid: not A's.
    for forged in (f"{pid} localstack {start_time(pid)} {b}\n", f"{pid} localstack 1 {a}\n", f"{pid} localstack\n"):
        record.write_text(forged)
        assert sqs_status(a).endswith("up, not started by this clone)"), forged
        assert "sqs: not started by this clone; left alone" in services(a, "down", home=home).stdout
        assert fake_localstack.poll() is None
    # A record of the old layout in the shared cache: reported, never claimed nor stopped.
    (home / f"sqs-{SQS_PORT}.pid").write_text(f"{pid} localstack\n")
    legacy = services(b, "down", home=home)
    assert "sqs: not started by this clone; left alone" in legacy.stdout
    assert f"names pid {pid}" in legacy.stderr and fake_localstack.poll() is None
    # A's own record: A's down stops it (the stand-in, never the real server).
    record.write_text(f"{pid} localstack {start_time(pid)} {a}\n")
    stopped = services(a, "down", home=home)
    assert f"sqs: stopped (localstack on {SQS_ENDPOINT})" in stopped.stdout, stopped.stderr
    assert fake_localstack.wait(timeout=20) == -signal.SIGTERM
    assert not record.exists()
    assert "up, not started by this clone)" in services(a, "status", home=home).stdout.splitlines()[1]


# --- scripts/bootstrap.sh: progress while pip works ---------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3 in bootstrap.sh: a venv that is a copy of itself, a pip that takes a while.
case "$1" in
  -c) exit 0 ;;
  --version) echo "Python 3.11.99"; exit 0 ;;
esac
if [[ "$1 $2" == "-m venv" ]]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
if [[ "$*" == *"--upgrade pip"* ]]; then exit 0; fi
[[ -n ${FAIL_PIP:-} ]] && { echo "Collecting aio-pika"; echo "ERROR: no matching distribution"; exit 1; }
for package in aio-pika aiobotocore pydantic; do echo "Collecting $package"; sleep 1; done
echo "Installing collected packages: aio-pika, aiobotocore, pydantic"
sleep 1
echo "Successfully installed aio-pika aiobotocore pydantic"
"""


def test_bootstrap_reports_progress_while_pip_installs(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "bootstrap.sh", project / "scripts" / "bootstrap.sh")
    shutil.copy2(ROOT / "pyproject.toml", project / "pyproject.toml")
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "BOOTSTRAP_TICK_SECONDS": "1"}

    def bootstrap(**extra: str) -> subprocess.CompletedProcess[str]:
        command = [str(project / "scripts" / "bootstrap.sh")]
        return subprocess.run(command, capture_output=True, text=True, env={**env, **extra}, timeout=60, check=False)

    started = time.monotonic()
    failed = bootstrap(FAIL_PIP="1")
    assert failed.returncode == 1 and "ERROR: no matching distribution" in failed.stderr
    assert "pip install failed" in failed.stderr and not (project / ".venv" / ".installed").exists()
    done = bootstrap()
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "bootstrap: creating .venv with Python 3.11.99 (pyproject.toml is new or changed)"
    ticks = [line for line in lines if " packages found" in line]
    assert len(ticks) >= 2, lines  # a line every second here (every 10 s by default), while pip works
    assert any("Collecting" in line for line in ticks)
    assert lines[-1].startswith("bootstrap: .venv ready in ")
    assert time.monotonic() - started < 30
    again = bootstrap()  # up to date: nothing to do, nothing said
    assert again.returncode == 0 and again.stderr == ""


def test_services_help_explains_ownership() -> None:
    shown = subprocess.run(
        [str(ROOT / "scripts" / "services.sh"), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert "LAMASSU_SERVICES_STATE" in shown.stdout and "THIS CLONE" in shown.stdout


@pytest.mark.integration
async def test_a_census_holds_a_bounded_number_of_bytes(world: World) -> None:
    settings = world.settings()
    channel = await world.channel()
    await channel.declare_queue(world.dlq, durable=True)
    for number in range(3):
        await channel.default_exchange.publish(dead_letter(f"big-{number}", "too_large"), routing_key=world.dlq)
    size = len(dead_letter("big-0", "too_large").body)
    async with dlq.amqp_session(settings) as gateway:
        bounded = await dlq.census(gateway, settings, world.dlq, limit=10, max_bytes=2 * size)
        counted = await dlq.census(gateway, settings, world.dlq, limit=2)
        everything = await dlq.census(gateway, settings, world.dlq, limit=10)
    assert (bounded.depth, bounded.peeked, bounded.by_code) == (3, 2, {"too_large": 2})
    assert (counted.peeked, everything.peeked, everything.by_code) == (2, 3, {"too_large": 3})
    assert await world.queue_depth(world.dlq) == 3
