"""The command line as an operator uses it: config checks, and the daemon as a real process."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml

from lamassu_aws_connector import catalogue_cli, dlq
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


def test_an_override_spelled_with_single_underscores_is_an_error_naming_the_spelling_that_works() -> None:
    example = str(ROOT / "config.example.yaml")
    for given, meant in (
        ("LAMASSU_AMQP_URL", "LAMASSU_AMQP__URL"),
        ("LAMASSU_AMQP_TLS_CA_FILE", "LAMASSU_AMQP__TLS__CA_FILE"),
        ("LAMASSU_ACTIONS__LAMASSU_CA_URL", "LAMASSU_ACTIONS__LAMASSU_CA__URL"),
        ("LAMASSU_AMQP_TLS__CA_FILE", "LAMASSU_AMQP__TLS__CA_FILE"),  # two underscores, one place short
    ):
        for command in ("check-config", "run"):
            result = cli(command, "--config", example, env={given: "amqp://x:y@nowhere:1/"})
            assert result.returncode == 2, (given, command, result.stderr)
            assert f"{given} (did you mean {meant}?)" in result.stderr and "Traceback" not in result.stderr
    # Spelled right, the nested override is read.
    right = cli("check-config", "--config", example, env={"LAMASSU_ACTIONS__LAMASSU_CA__TIMEOUT_SECONDS": "3"})
    assert right.returncode == 0 and yaml.safe_load(right.stdout)["actions"]["lamassu_ca"]["timeout_seconds"] == 3


def test_example_config_is_valid_and_secrets_are_masked() -> None:
    result = cli("check-config", "--config", str(ROOT / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["amqp"]["url"] == "amqp://guest:***@127.0.0.1:5672/"
    assert shown["sqs"]["command_queue"] == "lamassu-command"


def test_the_example_config_with_the_command_api_on_keeps_held_replies_within_a_callers_wait() -> None:
    api = {"LAMASSU_HTTP__COMMANDS": "true", "LAMASSU_HTTP__AUTH_TOKEN": "a-token-of-twenty-four-chars"}
    example = str(ROOT / "config.example.yaml")
    derived = cli("check-config", "--config", example, env=api)
    assert derived.returncode == 0, derived.stderr
    assert yaml.safe_load(derived.stdout)["sqs"]["visibility_timeout"] == 20 and "warning" not in derived.stderr
    pinned = cli("check-config", "--config", example, env={**api, "LAMASSU_SQS__VISIBILITY_TIMEOUT": "60"})
    assert pinned.returncode == 0 and "warning: sqs.visibility_timeout" in pinned.stderr


def test_a_tool_run_without_a_config_file_says_what_it_talks_to() -> None:
    assert "LAMASSU_CONFIG" not in os.environ
    bare = cli("check-config")
    assert bare.returncode == 0
    assert "no --config (or LAMASSU_CONFIG)" in bare.stderr and "AWS SQS in us-east-1" in bare.stderr
    assert "guest:***@" in bare.stderr and "guest:guest" not in bare.stderr
    given = cli("check-config", "--config", str(ROOT / "config.example.yaml"))
    assert "no --config" not in given.stderr


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
    flag = cli("--version")
    assert flag.returncode == 0 and flag.stdout.strip() == f"lamassu-aws-connector {result.stdout.strip()}"


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


# --- the operator's command line: help, validate -, examples, send --dry-run, check-config --connect ---

EXAMPLES = ROOT / "examples" / "events"
COMMANDS = ("run", "check-config", "status", "version", "dlq", "send", "events", "validate")


def test_help_lists_every_command_with_one_line_each() -> None:
    result = cli("--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for command in COMMANDS:
        [line] = [line for line in lines if line.split()[:1] == [command]]
        assert len(line.split()) > 1, f"{command}: its help wrapped to the next line"
        assert len(line) <= 80
    listed = cli("dlq", "--help", env={"COLUMNS": "80"}).stdout.splitlines()
    for action in ("list", "show", "replay", "purge"):
        assert [line for line in listed if line.split()[:1] == [action] and len(line.split()) > 1]


def test_validate_reads_one_event_from_stdin() -> None:
    event = (EXAMPLES / "device.create.json").read_text()
    good = subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", "validate", "-"],
        input=event,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("-: ok: device.create")
    bad = subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", "validate", "-"],
        input=event.replace('"NO_IDENTITY"', '"no_identity"'),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stdout.startswith("-: invalid: invalid_data: data.status")


def test_validate_takes_a_directory_and_several_events_on_stdin(tmp_path: Path) -> None:
    paths = sorted(EXAMPLES.glob("*.json"))
    whole = cli("validate", str(EXAMPLES))  # a directory stands for its *.json files (README.md is not one)
    assert whole.returncode == 0, whole.stdout
    assert [line.split(": ok: ")[0] for line in whole.stdout.splitlines()] == [str(path) for path in paths]
    empty = cli("validate", str(tmp_path))
    assert empty.returncode == 1 and "a directory without *.json files" in empty.stdout
    # `cat *.json | validate -`: one line per event, the bad one named by its position.
    events = [path.read_text() for path in paths[:3]]
    events[1] = events[1].replace('"specversion": "1.0"', '"specversion": "0.3"', 1)
    piped = subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", "validate", "-"],
        input="".join(events) + '{"compact": true}\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = piped.stdout.splitlines()
    assert piped.returncode == 1 and [line.split(":")[0] for line in lines] == ["-[1]", "-[2]", "-[3]", "-[4]"]
    assert ": ok: " in lines[0] and ": ok: " in lines[2]
    assert "invalid: invalid_attribute" in lines[1] and "invalid: not_cloudevent" in lines[3]


def test_validate_on_stdin_finds_the_event_after_a_too_deep_one() -> None:
    good = (EXAMPLES / "certificate.status.update.json").read_text()
    deep = '{"specversion": "1.0", "id": "d", "type": "t", "source": "s", "data": ' + "[" * 5000 + "]" * 5000 + "}"
    tricky = good.replace('"data": {', '"data": {"note": "a } ] and \\" { inside a string", ', 1)
    piped = subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", "validate", "-"],
        input=deep + "\n" + good + tricky,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = piped.stdout.splitlines()
    assert piped.returncode == 1 and "Traceback" not in piped.stderr
    assert [line.split(":")[0] for line in lines] == ["-[1]", "-[2]", "-[3]"], piped.stdout
    assert "invalid: invalid_json" in lines[0] and "levels" in lines[0]
    assert ": ok: certificate.status.update" in lines[1] and ": ok: certificate.status.update" in lines[2]


def test_events_into_a_closed_pipe_exits_quietly() -> None:
    piped = subprocess.run(
        f"{sys.executable} -m lamassu_aws_connector events | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.stdout.startswith("TYPE") and piped.stderr == ""


def test_examples_are_valid_lamassu_v3_events_of_the_main_types() -> None:
    paths = sorted(EXAMPLES.glob("*.json"))
    types = {path.stem for path in paths}
    assert {"certificate.status.update", "ca.create", "device.create", "dms.update"} <= types
    result = cli("validate", *map(str, paths))
    assert result.returncode == 0, result.stdout
    for path, line in zip(paths, result.stdout.splitlines(), strict=True):
        event = orjson.loads(path.read_bytes())
        assert event["type"] == path.stem  # one file per type, named after it
        # Checked against the catalogue model of a v3 type, not just the envelope.
        # The v3.2+ CA shape is named where the shape changed between releases.
        shape = "; shape v3.2+" if path.stem.startswith("ca.") else ""
        assert line == f"{path}: ok: {path.stem} (v2.4+/v3 command{shape})"
        assert event["source"].startswith("source://lamassu.io/ctx/source/service/")
    revocation = orjson.loads((EXAMPLES / "certificate.status.update.json").read_bytes())["data"]
    assert (revocation["previous"]["status"], revocation["updated"]["status"]) == ("ACTIVE", "REVOKED")


def test_an_example_with_bad_data_fails_validate(tmp_path: Path) -> None:
    """The examples pass because their data is right: the same file with a wrong status does not."""
    broken = tmp_path / "certificate.status.update.json"
    broken.write_text((EXAMPLES / "certificate.status.update.json").read_text().replace('"REVOKED"', '"Revoked"'))
    result = cli("validate", str(broken))
    assert result.returncode == 1
    assert "invalid_data: data.updated.status" in result.stdout


def closed_port_config(tmp_path: Path, **sections: dict[str, object]) -> Path:
    """A config whose RabbitMQ and SQS are closed ports on loopback: nothing can be sent or reached."""
    data: dict[str, dict[str, object]] = {
        "amqp": {"url": f"amqp://guest:s3cr3t-pw@127.0.0.1:{free_port()}/", "exchanges": ["x.lamassu-events"]},
        "sqs": {"endpoint_url": f"http://127.0.0.1:{free_port()}", "connect_timeout_seconds": 1},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_send_dry_run_validates_and_sends_nothing(tmp_path: Path) -> None:
    config = closed_port_config(tmp_path)  # a real send would fail: nothing listens
    files = [EXAMPLES / "certificate.status.update.json", EXAMPLES / "device.create.json"]
    result = cli("send", "--dry-run", "--config", str(config), *map(str, files))
    assert result.returncode == 0, result.stderr
    for path in files:
        event = orjson.loads(path.read_bytes())
        assert f"would send: {event['id']}  {event['type']}" in result.stdout
    assert "would send 2 event(s) to exchange x.lamassu-events; nothing sent" in result.stdout


BROKEN_EXAMPLES = [
    (lambda text: text.replace('"REVOKED"', '"Revoked"'), "invalid_data: data.updated.status"),
    (lambda text: text.replace('"time": "2026-', '"time": "26-', 1), "invalid_attribute: attribute time"),
    (lambda text: text[:100], "invalid_json"),
]


def test_an_event_without_id_is_valid_as_the_daemon_takes_it_but_not_sent(tmp_path: Path) -> None:
    no_id = tmp_path / "no-id.json"
    no_id.write_text((EXAMPLES / "device.create.json").read_text().replace('"id": "', '"id": "", "x": "', 1))
    verdict = io.StringIO()
    assert catalogue_cli.validate_files([str(no_id)], out=verdict) == 0  # Lamassu v2.0 sends id ""
    assert "no id: the connector derives one from the body" in verdict.getvalue()
    with pytest.raises(dlq.ToolError, match="not sent: invalid_attribute: attribute id"):
        dlq.load_events([no_id])


@pytest.mark.parametrize(("change", "reason"), BROKEN_EXAMPLES)
def test_send_refuses_what_validate_rejects(tmp_path: Path, change: Any, reason: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(change((EXAMPLES / "certificate.status.update.json").read_text()))
    verdict = io.StringIO()
    assert catalogue_cli.validate_files([str(bad)], out=verdict) == 1
    assert reason in verdict.getvalue()
    with pytest.raises(dlq.ToolError) as refused:
        dlq.load_events([EXAMPLES / "device.create.json", bad])
    assert str(refused.value).startswith(f"{bad}: rejected by validate: {reason}")


def test_send_refusal_sends_nothing_and_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(BROKEN_EXAMPLES[0][0]((EXAMPLES / "certificate.status.update.json").read_text()))
    for dry_run in ((), ("--dry-run",)):
        sent = cli(
            "send", *dry_run, "--config", str(closed_port_config(tmp_path)), str(EXAMPLES / "ca.create.json"), str(bad)
        )
        assert sent.returncode == 2
        assert f"nothing sent: {bad}: rejected by validate: invalid_data: data.updated.status" in sent.stderr
        assert "would send" not in sent.stdout and "Traceback" not in sent.stderr


def test_check_config_connect_names_each_dependency_that_fails(tmp_path: Path) -> None:
    config = closed_port_config(tmp_path, claim_check={"bucket": "some-bucket"})
    result = cli("check-config", "--connect", "--config", str(config), "--wait", "5")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "rabbitmq",
        "sqs command queue lamassu-command",
        "sqs response queue lamassu-response",
        "s3 claim-check bucket some-bucket",
    ]
    assert all(line.split(": ")[1] == "error" for line in lines), lines
    assert "cannot connect to RabbitMQ at 127.0.0.1:" in lines[0] and "Connection refused" in lines[0]
    assert "cannot connect to http://127.0.0.1:" in lines[1] and "Connection refused" in lines[1]
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert "check-config --connect failed: rabbitmq, sqs command queue" in result.stderr


@pytest.mark.integration
async def test_check_config_connect_passes_when_everything_answers(
    world: World, s3_bucket: tuple[str, Any], tmp_path: Path
) -> None:
    bucket, _ = s3_bucket
    await world.create_sqs_queue(world.command_queue)
    await world.create_sqs_queue(world.response_queue)
    settings = world.settings(sqs={"create_queues": False}, claim_check={"bucket": bucket})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    result = cli("check-config", "--connect", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("rabbitmq: ok: amqp://guest:***@") and "login accepted" in lines[0]
    assert lines[1].startswith(f"sqs command queue {world.command_queue}: ok: http")
    assert lines[2].startswith(f"sqs response queue {world.response_queue}: ok: http")
    assert lines[3].startswith(f"s3 claim-check bucket {bucket}: ok")
    # A wrong password is a clear error at once, masked, not a wait.
    wrong = world.settings(amqp={"url": AMQP_URL.replace(":guest@", ":not-the-pw@")})
    config.write_text(yaml.safe_dump(wrong.model_dump(mode="json")))
    refused = cli("check-config", "--connect", "--config", str(config))
    assert refused.returncode == 1
    assert "refused the login" in refused.stdout and "not-the-pw" not in refused.stdout
    # A virtual host that does not exist is named as such, not as an unexpected AMQP frame.
    no_vhost_url = urlsplit(AMQP_URL)._replace(path=f"/t{world.tag}-no-such-vhost").geturl()
    no_vhost = world.settings(amqp={"url": no_vhost_url})
    config.write_text(yaml.safe_dump(no_vhost.model_dump(mode="json")))
    missing = cli("check-config", "--connect", "--config", str(config))
    assert missing.returncode == 1
    assert f"RabbitMQ refused virtual host 't{world.tag}-no-such-vhost'" in missing.stdout, missing.stdout
    listed = cli("dlq", "list", "--config", str(config))
    assert listed.returncode == 1 and "refused virtual host" in listed.stderr and "Traceback" not in listed.stderr


def test_library_log_lines_are_json_lines_too() -> None:
    """aiormq / aio-pika log through the standard library: in JSON mode those lines are JSON as well."""
    script = (
        "import logging\n"
        "from lamassu_aws_connector.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "try:\n"
        "    raise ConnectionResetError('peer gone')\n"
        "except ConnectionResetError:\n"
        "    logging.getLogger('aiormq.connection').exception('Unexpected connection close from remote')\n"
        "logging.getLogger('aio_pika.robust_connection').info('below warning: not shown')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    [line] = result.stderr.splitlines()
    record = orjson.loads(line)
    assert record["logger"] == "aiormq.connection" and record["level"] == "error"
    assert record["event"] == "Unexpected connection close from remote"
    assert "ConnectionResetError: peer gone" in record["exception"]


def test_a_console_log_written_to_a_file_carries_no_colour_codes() -> None:
    script = (
        "import logging, structlog\n"
        "from lamassu_aws_connector.logs import configure_logging\n"
        "configure_logging('info', 'console')\n"
        "structlog.get_logger().warning('outbound.dead_lettered', event_id='e-1', error_code='invalid_json')\n"
        "logging.getLogger('aiormq.connection').warning('library line')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert "event_id=e-1" in result.stderr and "error_code=invalid_json" in result.stderr
    assert "library line" in result.stderr
    assert "\x1b[" not in result.stderr


def test_a_library_line_repeated_within_a_minute_is_shown_once() -> None:
    script = (
        "import logging\n"
        "from lamassu_aws_connector.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "refresh = logging.getLogger('aiobotocore.credentials')\n"
        "for _ in range(50):\n"
        "    refresh.warning('Refreshing temporary credentials failed during mandatory refresh period.')\n"
        "refresh.warning('another line')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    records = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert [record["event"] for record in records] == [
        "Refreshing temporary credentials failed during mandatory refresh period.",
        "another line",
    ]


def test_the_next_showing_of_a_repeated_line_says_how_many_were_left_out() -> None:
    from lamassu_aws_connector.logs import _Repeats  # noqa: PLC0415

    repeats = _Repeats(window_seconds=60.0)

    def record(at: float) -> logging.LogRecord:
        made = logging.LogRecord("aiormq.connection", logging.WARNING, __file__, 1, "same", None, None)
        made.created = at
        return made

    shown = [at for at in (0.0, 1.0, 2.0, 59.0, 61.0, 62.0) if repeats.filter(record(at))]
    assert shown == [0.0, 61.0]
    again = record(130.0)
    assert repeats.filter(again) and getattr(again, "repeats_left_out", None) == 1
