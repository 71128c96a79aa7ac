"""Security checks of the reliability suite: no credential in any output, TLS verification that
cannot be switched off by accident, and an input size limit that holds for a 50 MB message.

(Every scenario also searches its connector's logs for the AMQP password and the AWS secret key:
see ``driver.assert_no_secrets``.)
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..conftest import wait_for
from ..tls_broker import free_port
from .driver import (
    AMQP_PASSWORD,
    AMQP_USER,
    AWS_ACCESS_KEY,
    AWS_SECRET,
    AmqpCounter,
    Connector,
    Env,
    Figures,
    Names,
    Publisher,
    SqsCounter,
    assert_no_secrets,
    connector_config,
    event,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

FIFTY_MB = 50 * 1024 * 1024


async def _cli(*args: str, config: dict[str, Any] | None, tmp_path: Path, **env: str) -> tuple[int, str]:
    """Run the CLI as a process with the distinctive AWS credentials; (exit code, stdout + stderr)."""
    argv = [sys.executable, "-m", "lamassu_aws_connector", *args]
    if config is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        argv += ["--config", str(path)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("LAMASSU_", "AWS_"))}
    environment.update(AWS_ACCESS_KEY_ID=AWS_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=AWS_SECRET, **env)
    process = await asyncio.create_subprocess_exec(
        *argv, env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_check_config_never_prints_a_credential(tmp_path: Path) -> None:
    names = Names()
    url = f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/"
    good = connector_config(names, url, "http://127.0.0.1:4566")
    code, output = await _cli("check-config", config=good, tmp_path=tmp_path)
    assert code == 0, output
    assert f"{AMQP_USER}:***@127.0.0.1:5672" in output  # the URL is there, masked
    assert_no_secrets(output)

    # Rejected configurations name the bad key without echoing the secret next to it.
    bad_scheme = connector_config(names, url.replace("amqp://", "amqpx://"), "http://127.0.0.1:4566")
    code, output = await _cli("check-config", config=bad_scheme, tmp_path=tmp_path)
    assert code == 2 and "amqp.url" in output, output
    assert_no_secrets(output)
    code, output = await _cli(
        "check-config", config=good, tmp_path=tmp_path, LAMASSU_AMQP__URL=url, LAMASSU_AMQP__PREFETCH="0"
    )
    assert code == 2 and "amqp.prefetch" in output, output
    assert_no_secrets(output)


@pytest.mark.parametrize("value", ["0", "no", "off", "n", "f", "", "flase", "null", 0])
async def test_tls_verification_is_not_disabled_by_an_ambiguous_value(tmp_path: Path, value: object) -> None:
    names = Names()
    config = connector_config(names, f"amqps://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5671/", "http://127.0.0.1:4566")
    config["amqp"]["tls"] = {"verify": value}
    code, output = await _cli("check-config", config=config, tmp_path=tmp_path)
    assert code == 2, output
    assert "amqp.tls.verify" in output
    assert_no_secrets(output)
    # The same through the environment.
    code, output = await _cli("check-config", config=None, tmp_path=tmp_path, LAMASSU_AMQP__TLS__VERIFY=str(value))
    assert code == 2, output
    assert "amqp.tls.verify" in output


async def test_tls_verification_is_on_unless_explicitly_false_and_then_logged(env: Env) -> None:
    """The connector process: no warning by default; an explicit false logs one before connecting."""
    names = Names()
    closed_port = free_port()  # nothing listens: start-up waits for the broker, we only read the log
    url = f"amqps://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:{closed_port}/"
    for verify, warned in ((None, False), (True, False), (False, True), ("false", True)):
        config = connector_config(names, url, env.sqs_endpoint)
        if verify is not None:
            config["amqp"]["tls"] = {"verify": verify}
        connector = Connector(config, env.workdir, f"tls-{verify}")
        await connector.start()
        try:
            await wait_for(lambda c=connector: bool(c.log_events("amqp.connect_failed")), 60, "a connect attempt")
        finally:
            await connector.kill()
        assert bool(connector.log_events("amqp.tls_verification_disabled")) == warned, verify
        assert_no_secrets(connector.log_text())
    await env.delete_sqs_queues(names)


async def test_a_50_mb_message_is_dead_lettered_with_bounded_memory(env: Env) -> None:
    """Measured: RSS grows by about 4.9x the message while it is received and copied to the DLQ
    (aiormq reassembles the body through a BytesIO, then splits, frames and joins it again to
    publish the dead-letter copy). Bounded by a constant factor, but above the 3x target below."""
    growth_mb = await _fifty_mb_message(env)
    assert growth_mb < 6 * FIFTY_MB / 2**20, f"RSS grew by {growth_mb:.0f} MB for a 50 MB message"


@pytest.mark.xfail(
    strict=True,
    reason="aiormq copies a 50 MB body ~4 times to receive it and publish the dead-letter copy (measured ~243 MB); "
    "the fix belongs in the AMQP library's framing, not in a local patch",
)
async def test_a_50_mb_message_costs_less_than_three_times_its_size(env: Env) -> None:
    growth_mb = await _fifty_mb_message(env, record=False)
    assert growth_mb < 3 * FIFTY_MB / 2**20, f"RSS grew by {growth_mb:.0f} MB for a 50 MB message"


async def _fifty_mb_message(env: Env, *, record: bool = True) -> float:
    """Send a 50 MB message among events; check it is dead-lettered whole and the flow goes on.
    Returns how much the connector's peak RSS rose over its RSS just before (MB)."""
    names = Names()
    connector = Connector(connector_config(names, env.amqp_url, env.sqs_endpoint), env.workdir, "connector")
    dead_letters = AmqpCounter(env.test_url, names.dlq)
    publisher = Publisher(env.test_url, names.exchange)
    counter: SqsCounter | None = None
    try:
        await connector.start()
        await connector.wait_ready()
        await dead_letters.start()
        await publisher.open()
        counter = SqsCounter(env.sqs, await env.sqs_url(names.command_queue)).start()
        await publisher.publish(0, event(names.tag, 0))  # warm up the forwarding path first
        await wait_for(lambda: counter.unique == 1, 30, "the warm-up event in SQS")
        await asyncio.sleep(1)
        before_kb = connector.sample()["VmRSS"]
        huge = b'{"specversion":"1.0","id":"huge","source":"s","type":"t","data":"' + b"x" * FIFTY_MB + b'"}'
        await publisher.publish(1, huge)
        await wait_for(lambda: dead_letters.unique == 1, 120, "the 50 MB message in the dead-letter queue")
        peak_kb = connector.sample()["VmHWM"]
        message = dead_letters.messages[1]
        assert message.headers["x-error-code"] == "too_large"
        assert len(message.body) == len(huge)  # parked whole, replayable
        # Still forwarding afterwards.
        for seq in range(2, 12):
            await publisher.publish(seq, event(names.tag, seq))
        await wait_for(lambda: counter.unique == 11, 30, "10 events after the big one")
        growth_mb = (peak_kb - before_kb) / 1024
        assert await connector.stop() == 0
        assert_no_secrets(connector.log_text())
        if not record:
            return growth_mb
        Figures(
            scenario="S3-50mb-message",
            title="A 50 MB AMQP message among events",
            sent=12,
            arrived=counter.unique,
            lost=12 - 1 - counter.unique,
            duplicated=counter.duplicated,
            dead_lettered=dead_letters.unique,
            recovery_seconds=None,
            drain_seconds=None,
            peak_rss_mb=round(peak_kb / 1024, 1),
            notes={"rss_before_mb": round(before_kb / 1024, 1), "rss_growth_mb": round(growth_mb, 1)},
        ).save()
        return growth_mb
    finally:
        if counter is not None:
            await counter.stop()
        await dead_letters.close()
        await publisher.close()
        if connector.running:
            await connector.kill()
        await env.delete_sqs_queues(names)
