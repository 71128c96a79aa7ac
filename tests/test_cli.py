"""The command line as an operator uses it: config checks, and the daemon as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from lamassu_aws_connector.config import ConfigError, load_settings, mask_url

from . import samples
from .conftest import AMQP_URL, World, connector_ready, wait_for
from .tls_broker import free_port

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_example_config_is_valid_and_secrets_are_masked() -> None:
    result = cli("check-config", "--config", str(ROOT / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["amqp"]["url"] == "amqp://guest:***@127.0.0.1:5672/"
    assert shown["sqs"]["command_queue"] == "lamassu-command"


def test_environment_overrides_the_file() -> None:
    result = cli(
        "check-config",
        "--config",
        str(ROOT / "config.example.yaml"),
        env={
            "LAMASSU_AMQP__PREFETCH": "17",
            "LAMASSU_AMQP__EXCHANGES": '["lamassu"]',
            "LAMASSU_AMQP__URL": "amqps://svc:s3cr3t-pw@rabbit:5671/prod",
        },
    )
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["amqp"]["prefetch"] == 17 and shown["amqp"]["exchanges"] == ["lamassu"]
    assert "s3cr3t-pw" not in result.stdout


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("amqp:\n  prefetch: 0\n", "amqp.prefetch"),
        ("amqp:\n  prefech: 10\n", "amqp.prefech"),
        ("sqs:\n  endpoint_url: localhost:4566\n", "sqs.endpoint_url"),
        ("log:\n  format: xml\n", "log.format"),
        ("amqp:\n  url: http://guest:topsecret@rabbit/\n", "amqp.url"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, content: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    for command in ("check-config", "run"):
        result = cli(command, "--config", str(path))
        assert result.returncode == 2
        assert key in result.stderr
        assert "Traceback" not in result.stderr
        assert "topsecret" not in result.stderr


def test_unreadable_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("amqp: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)


def test_mask_url() -> None:
    assert mask_url("amqps://user:p%40ss@host:5671/vh") == "amqps://user:***@host:5671/vh"
    assert mask_url("amqp://host/") == "amqp://host/"


def test_version() -> None:
    result = cli("version")
    assert result.returncode == 0 and result.stdout.strip()


@pytest.mark.integration
async def test_daemon_forwards_then_stops_cleanly_on_sigterm(world: World, tmp_path: Path) -> None:
    http_port = free_port()
    settings = world.settings(
        log={"format": "json", "level": "debug", "summary_seconds": 0.5}, http={"host": "127.0.0.1", "port": http_port}
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamassu_aws_connector",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        event = samples.v3_device_create()
        # Ready: queue, exchanges and bindings declared, consumer running; publish after that.
        await wait_for(lambda: connector_ready(http_port), 30, "the connector ready")
        await world.publish(samples.body(event), routing_key="device.create")
        [message] = await world.take_sqs(world.command_queue, 1)
        await asyncio.sleep(1.2)  # long enough for two summary lines (every 0.5 s)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), settings.shutdown.grace_seconds + 5)
    finally:
        if process.returncode is None:
            process.kill()
    assert code == 0
    stderr = (await process.stderr.read()).decode()  # type: ignore[union-attr]
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    forwarded = [line for line in lines if line["event"] == "outbound.forwarded"]
    assert forwarded and forwarded[0]["event_id"] == event["id"]
    assert forwarded[0]["event_type"] == "device.create"
    assert forwarded[0]["queue"] == world.queue
    assert forwarded[0]["sqs_message_id"] == message["MessageId"]
    assert forwarded[0]["level"] == "debug"  # one line per event only at debug; the summary at info
    summaries = [line for line in lines if line["event"] == "connector.summary"]
    assert summaries and sum(line["forwarded"] for line in summaries) == 1 and summaries[0]["level"] == "info"
    assert any(line["event"] == "connector.stopped" for line in lines)
    password = AMQP_URL.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert f":{password}@" not in stderr


def test_unknown_environment_section_is_an_error() -> None:
    result = cli("check-config", env={"LAMASSU_SQSX__REGION": "eu-west-1"})
    assert result.returncode == 2
    assert "LAMASSU_SQSX__REGION" in result.stderr
