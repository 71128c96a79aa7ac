#!/usr/bin/env bash
# scripts/check-lowest-deps.sh - do the lower bounds in pyproject.toml tell the truth?
#
# Installs every runtime dependency of [project].dependencies at exactly its declared lower bound
# ("aiohttp>=3.11" -> aiohttp==3.11; what they need in turn is resolved by pip as usual) into a
# throwaway venv under ${TMPDIR:-/tmp}, installs the connector itself with --no-deps, then runs:
#   1. a smoke check of the code paths that depend on versions: every module imports; the default
#      Settings build (and the example config, and environment overrides); SqsJsonWire starts (its
#      kept-alive pool, or an aiohttp session with proxy=; botocore's credentials) and closes, with and
#      without a proxy variable, and maps a refused connection; both SQS paths (fast path and the full botocore
#      client) send their calls to a fake SQS endpoint served in-process on 127.0.0.1; the AMQP
#      connect hands heartbeat and connection name to aiormq (aiormq.connect is faked: no broker);
#      /healthz and /metrics answer; a JSON log line is written;
#   2. the unit tests, `pytest -m "not integration"`, with the dev test tools (pytest,
#      pytest-asyncio, pytest-timeout, hypothesis, cloudevents, opentelemetry-sdk) at their newest
#      versions. No service is used: the test endpoints point at a closed port. Left out:
#      - tests that need the `services` fixture (real RabbitMQ and SQS) without carrying the
#        integration marker, found by fixture, not by name; today the round trips of
#        tests/test_sqs_wire.py (they use `world`). The fake endpoint of the smoke check covers
#        the same two SQS paths here.
#      - tests/test_catalogue.py::test_committed_schemas_match_the_models: docs/events/*.json are
#        compared byte for byte with what the installed pydantic generates, and pydantic < 2.11
#        writes `dict[str, Any]` without `"additionalProperties": true` (the same schema). The
#        models themselves are tested by the rest of test_catalogue.py.
#
# Usage: scripts/check-lowest-deps.sh [NAME==VERSION ...]
#   Each argument replaces the pin of one package (or adds one, e.g. for a transitive dependency):
#   `scripts/check-lowest-deps.sh aiohttp==3.10.11` shows what an older release would break.
#   PYTHON=python3.12 picks the interpreter (default python3, >= 3.11); KEEP=1 keeps the venv.
# Exit status: 0 PASS, 1 FAIL, 2 usage or pyproject problem. 1 to 2.5 minutes with a warm pip cache.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}
started=$SECONDS
what="the lower bounds of pyproject.toml [project].dependencies"
if (($#)); then what+=", with $*"; fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "check-lowest-deps: $python is not a Python >= 3.11 (set PYTHON=...)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/lamassu-lowest-deps.XXXXXX")
# shellcheck disable=SC2329  # run by the EXIT trap
cleanup() {
  if [[ ${KEEP:-0} == 1 ]]; then
    echo "check-lowest-deps: kept $work (venv: $work/venv)" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

summary=()
failed=0
record() { # record STATUS NAME SECONDS
  summary+=("$(printf '  %-4s  %-34s %4ss' "$1" "$2" "$3")")
  [[ $1 == PASS ]] || failed=1
}
finish() {
  echo
  echo "== check-lowest-deps summary ($("$venv/bin/python" --version 2>/dev/null || "$python" --version), $((SECONDS - started)) s) =="
  printf '%s\n' "${summary[@]}"
  if ((failed)); then
    echo "FAIL: the code does not work with $what"
    exit 1
  fi
  echo "PASS: the code works with $what"
  exit 0
}
pip_log_tail() { # what matters in a pip log: a resolver conflict from its first ERROR, else the end
  local clean
  clean=$(grep -v "is ignored: it is neither a file nor a directory" "$1" || true)
  if grep -q '^ERROR: \(Cannot install\|Could not find\|No matching\)' <<<"$clean"; then
    awk '/^ERROR/ { shown = 1 } shown' <<<"$clean" | head -n 40
  else
    tail -n 30 <<<"$clean"
  fi | sed 's/^/    /'
}

# --- 1. the pins: name==lower bound for each runtime dependency -----------------------------------
"$python" - "$root/pyproject.toml" "$work" "$@" <<'PY' || exit 2
import re
import sys
import tomllib
from pathlib import Path

pyproject, work, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
project = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]
DEV_TOOLS = ("pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "cloudevents", "opentelemetry-sdk")
REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?")
CLAUSE = re.compile(r"(===|~=|==|!=|<=|>=|<|>)\s*(\S+)")


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


problems: list[str] = []
wanted: dict[str, str] = {}
for override in overrides:
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s*]+)\s*", override)
    if match is None:
        problems.append(f"argument {override!r} is not NAME==VERSION")
    else:
        wanted[key(match[1])] = f"{match[1]}=={match[2]}"

pins: list[str] = []
for requirement in project.get("dependencies", []):
    match = REQUIREMENT.fullmatch(requirement)
    if match is None:
        problems.append(f"cannot read the requirement {requirement!r}")
        continue
    name, extras, specifier, marker = match[1], match[2] or "", match[3], match[4] or ""
    lower = None
    for clause in filter(None, (part.strip() for part in specifier.split(","))):
        parsed = CLAUSE.fullmatch(clause)
        if parsed is None:
            problems.append(f"{requirement!r}: cannot read {clause!r}")
        elif parsed[1] in (">=", "~=", "==", "===") and "*" not in parsed[2]:
            lower = parsed[2]
        elif parsed[1] == ">":
            problems.append(f"{requirement!r}: '>' names no installable lower bound; write '>='")
    override = wanted.pop(key(name), None)
    if override is not None:
        version = override.split("==", 1)[1]
        print(f"check-lowest-deps: {name} pinned to {version} by argument (declared: {specifier or 'none'})")
        lower = version
    if lower is None:
        problems.append(f"{requirement!r} declares no lower bound (>=, ~= or ==)")
        continue
    pins.append(f"{name}{extras}=={lower}{' ' + marker if marker else ''}")
for extra in wanted.values():
    print(f"check-lowest-deps: {extra} added by argument (not a runtime dependency)")
    pins.append(extra)

declared_dev = {key(REQUIREMENT.fullmatch(r)[1]): r for r in project.get("optional-dependencies", {}).get("dev", [])}
tools = [declared_dev.get(key(tool), tool) for tool in DEV_TOOLS]

if problems:
    print("check-lowest-deps: " + "\n  ".join(["pyproject.toml problems:", *problems]), file=sys.stderr)
    sys.exit(2)
(work / "lowest.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")
(work / "tools.txt").write_text("\n".join(tools) + "\n", encoding="utf-8")
PY

echo "check-lowest-deps: runtime dependencies at their lower bounds:"
sed 's/^/  /' "$work/lowest.txt"

# --- 2. the venv ----------------------------------------------------------------------------------
venv=$work/venv
t=$SECONDS
"$python" -m venv "$venv"
# One resolution for the pins and the test tools together: a tool can never move a pin.
if "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off \
  -r "$work/lowest.txt" -r "$work/tools.txt" >"$work/pip.log" 2>&1; then
  record PASS "install the lower bounds" $((SECONDS - t))
else
  echo "check-lowest-deps: pip could not install the lower bounds together:" >&2
  pip_log_tail "$work/pip.log" >&2
  record FAIL "install the lower bounds" $((SECONDS - t))
  finish
fi
echo "check-lowest-deps: installed (pins and what pip resolved for them):"
"$venv/bin/python" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
  | grep -iE '^(aio-pika|aiormq|pamqp|aiobotocore|botocore|aiohttp|httptools|yarl|multidict|pydantic|pydantic[-_]core|pydantic-settings|structlog|orjson|tenacity|prometheus[-_]client|pyyaml|cryptography)==' \
  | sed 's/^/  /'

# The connector from a copy of its sources, so the build leaves nothing in the work tree.
t=$SECONDS
mkdir -p "$work/src"
cp pyproject.toml README.md "$work/src/"
cp -r lamassu_aws_connector "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
if "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet --no-deps "$work/src" \
  >"$work/pip-project.log" 2>&1; then
  record PASS "install the connector (--no-deps)" $((SECONDS - t))
else
  pip_log_tail "$work/pip-project.log" >&2
  record FAIL "install the connector (--no-deps)" $((SECONDS - t))
  finish
fi

# --- 3. smoke check -------------------------------------------------------------------------------
dead_port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
# No proxy, no real AWS profile or credentials, none of the caller's LAMASSU_* settings.
isolated_env=(env -u HTTP_PROXY -u HTTPS_PROXY -u NO_PROXY -u http_proxy -u https_proxy -u no_proxy -u AWS_PROFILE)
while IFS='=' read -r name _; do
  if [[ $name == LAMASSU_* ]]; then isolated_env+=(-u "$name"); fi
done < <(env)
isolated_env+=(
  AWS_ACCESS_KEY_ID=lowest-deps-dummy AWS_SECRET_ACCESS_KEY=lowest-deps-dummy AWS_DEFAULT_REGION=us-east-1
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
  PYTHONDONTWRITEBYTECODE=1 LOWEST_DEPS_DEAD_PORT="$dead_port" LOWEST_DEPS_WORK="$work"
)

cat >"$work/smoke.py" <<'PY'
"""Smoke check of the connector's version-dependent code paths (scripts/check-lowest-deps.sh)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

ROOT = Path(sys.argv[1])
DEAD = f"http://127.0.0.1:{os.environ['LOWEST_DEPS_DEAD_PORT']}"
failures = 0


def report(name, error=None):
    global failures
    if error is None:
        print(f"  ok    {name}")
        return
    failures += 1
    print(f"  FAIL  {name}: {type(error).__name__}: {error}")
    print(textwrap.indent("".join(traceback.format_exception(error)[-6:]), "        "), end="")


async def run(name, check):
    try:
        result = check()
        if asyncio.iscoroutine(result):
            await result
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then the next check runs
        report(name, exc)
    else:
        report(name)


def imports():
    import lamassu_aws_connector as package

    assert str(ROOT) not in package.__file__, f"imported the work tree, not the installed copy: {package.__file__}"
    names = [info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for name in names:
        if name.endswith(".__main__"):
            continue  # runs the CLI when imported
        importlib.import_module(name)
    assert len(names) > 5, names


def settings():
    from lamassu_aws_connector.config import Settings, load_settings

    defaults = Settings()
    assert defaults.sqs.fast_path and defaults.amqp.url.startswith("amqp://"), defaults
    defaults.masked()
    load_settings(None)
    example = ROOT / "config.example.yaml"
    if example.exists():
        load_settings(example)
    os.environ.update({"LAMASSU_SQS__REGION": "eu-west-3", "LAMASSU_AMQP__EXCHANGES": '["a", "b"]'})
    try:
        overridden = load_settings(None)
    finally:
        del os.environ["LAMASSU_SQS__REGION"], os.environ["LAMASSU_AMQP__EXCHANGES"]
    assert overridden.sqs.region == "eu-west-3" and overridden.amqp.exchanges == ["a", "b"], overridden


def wire(endpoint):
    from aiobotocore.session import get_session

    from lamassu_aws_connector.sqs_wire import SqsJsonWire

    return SqsJsonWire(
        get_session(),
        region="us-east-1",
        endpoint_url=endpoint,
        connect_timeout=2,
        read_timeout=5,
        max_connections=4,
        attempts=2,
    )


async def wire_start_close(proxy):
    """start() builds its transport (the pool; with a proxy, an aiohttp session with proxy=) and reads the credentials."""
    names = ("HTTP_PROXY", "HTTPS_PROXY")
    for name in names:
        if proxy:
            os.environ[name] = proxy
        else:
            os.environ.pop(name, None)
    try:
        sqs = wire(DEAD)
        await sqs.start()
        try:
            assert getattr(sqs, "_credentials", None) is not None, "start() read no credentials"
        finally:
            await sqs.close()
    finally:
        for name in names:
            os.environ.pop(name, None)


async def wire_refused():
    """A refused connection is an EndpointConnectionError (the transport maps its own exceptions to botocore's)."""
    from botocore.exceptions import EndpointConnectionError

    sqs = wire(DEAD)
    await sqs.start()
    try:
        await sqs.call("ReceiveMessage", {"QueueUrl": DEAD + "/000000000000/q", "MaxNumberOfMessages": 1})
    except EndpointConnectionError:
        pass
    else:
        raise AssertionError("a call to a closed port did not fail")
    finally:
        await sqs.close()


def _md5(text):
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - what SQS answers


class FakeSqs:
    """Just enough of SQS's JSON protocol for the four per-message calls and one error."""

    def __init__(self):
        self.seen = []
        self.runner = None
        self.url = ""

    async def start(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self):
        await self.runner.cleanup()

    async def handle(self, request):
        from aiohttp import web

        target = request.headers.get("X-Amz-Target", "")
        self.seen.append((target, request.headers.get("Authorization", "").split(" ", 1)[0]))
        body = json.loads(await request.read() or b"{}")
        operation = target.rpartition(".")[2]
        json_type = "application/x-amz-json-1.0"
        if body.get("QueueUrl", "").endswith("/missing"):
            error = {"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "The specified queue does not exist."}
            headers = {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"}
            return web.Response(status=400, body=json.dumps(error).encode(), content_type=json_type, headers=headers)
        entries = body.get("Entries", [])
        if operation == "ReceiveMessage":
            message = {"MessageId": "m-1", "ReceiptHandle": "r-1", "MD5OfBody": _md5("hello"), "Body": "hello"}
            answer = {"Messages": [{**message, "Attributes": {"ApproximateReceiveCount": "1"}}]}
        elif operation == "SendMessageBatch":
            ok = [dict(Id=e["Id"], MessageId="m-" + e["Id"], MD5OfMessageBody=_md5(e["MessageBody"])) for e in entries]
            answer = {"Successful": ok, "Failed": []}
        elif operation in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
            answer = {"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []}
        else:
            return web.Response(status=400, body=b'{"__type": "InvalidAction"}', content_type=json_type)
        return web.Response(body=json.dumps(answer).encode(), content_type=json_type, headers={"x-amzn-RequestId": "r"})


async def sqs_paths(fake, fast_path):
    """SqsGateway's calls on one path, against the fake endpoint: requests signed, answers parsed, errors mapped."""
    from botocore.exceptions import ClientError

    from lamassu_aws_connector.config import SqsConfig
    from lamassu_aws_connector.metrics import Metrics
    from lamassu_aws_connector.sqs import QueueInfo, SqsGateway

    config = SqsConfig(endpoint_url=fake.url, fast_path=fast_path, connect_timeout_seconds=2, wait_time_seconds=1)
    queue = QueueInfo(name="smoke", url=fake.url + "/000000000000/smoke", max_message_bytes=262_144, fifo=False)
    missing = QueueInfo(name="missing", url=fake.url + "/000000000000/missing", max_message_bytes=262_144, fifo=False)
    entry = {
        "Id": "0",
        "MessageBody": '{"specversion": "1.0", "id": "1", "type": "t", "source": "s"}',
        "MessageAttributes": {"ce-type": {"DataType": "String", "StringValue": "t"}},
    }
    before = len(fake.seen)
    async with SqsGateway(config, Metrics()) as sqs:
        messages = await sqs.receive(queue, wait_seconds=1, visibility_timeout=30)
        assert [m["Body"] for m in messages] == ["hello"], messages
        sent = await sqs.send_batch(queue, [entry])
        assert [s["Id"] for s in sent["Successful"]] == ["0"] and not sent.get("Failed"), sent
        deleted = await sqs.delete_batch(queue, {"0": "r-1"})
        assert [s["Id"] for s in deleted["Successful"]] == ["0"], deleted
        extended = await sqs.change_visibility_batch(queue, {"0": "r-1"}, 30)
        assert [s["Id"] for s in extended["Successful"]] == ["0"], extended
        try:
            await sqs.send_batch(missing, [entry])
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            assert code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"), code
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400, exc.response
        else:
            raise AssertionError("a missing queue raised nothing")
    seen = fake.seen[before:]
    targets = [target for target, _ in seen]
    assert targets[:4] == [
        "AmazonSQS.ReceiveMessage",
        "AmazonSQS.SendMessageBatch",
        "AmazonSQS.DeleteMessageBatch",
        "AmazonSQS.ChangeMessageVisibilityBatch",
    ], targets
    assert all(scheme == "AWS4-HMAC-SHA256" for _, scheme in seen), seen


async def amqp_connect():
    """What AmqpGateway.connect hands to aiormq (faked: no broker): heartbeat and connection name arrive."""
    import aiormq
    from yarl import URL

    from lamassu_aws_connector.amqp import AmqpGateway
    from lamassu_aws_connector.config import APP_ID, AmqpConfig
    from lamassu_aws_connector.metrics import Metrics

    class Reached(RuntimeError):  # one of aio-pika's CONNECTION_EXCEPTIONS: fails fast, and is not retried
        pass

    captured = {}

    async def fake_connect(url, *args, **kwargs):
        captured.update(url=URL(str(url)), kwargs=kwargs)
        raise Reached

    real_connect, aiormq.connect = aiormq.connect, fake_connect
    try:
        await asyncio.wait_for(AmqpGateway(AmqpConfig(heartbeat_seconds=17), Metrics()).connect(), 10)
    except Reached:
        pass
    else:
        raise AssertionError("AmqpGateway.connect never reached aiormq.connect")
    finally:
        aiormq.connect = real_connect
    url, kwargs = captured["url"], captured["kwargs"]
    heartbeat = url.query.get("heartbeat", kwargs.get("heartbeat"))
    assert str(heartbeat) == "17", (
        f"aiormq gets heartbeat={heartbeat!r}, not amqp.heartbeat_seconds=17 (url {url.with_password(None)}, "
        f"kwargs {sorted(kwargs)}): aio-pika drops connect_robust's keyword arguments when a URL is given"
    )
    name = (kwargs.get("client_properties") or {}).get("connection_name") or url.query.get("name")
    assert name == APP_ID, f"aiormq gets connection name {name!r}, not {APP_ID!r}"


async def ops_server():
    import aiohttp

    from lamassu_aws_connector.config import HttpConfig
    from lamassu_aws_connector.http import OpsServer
    from lamassu_aws_connector.metrics import Metrics

    server = OpsServer(HttpConfig(host="127.0.0.1", port=0), Metrics(), lambda: {"smoke": True})
    await server.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{server.port}/healthz") as response:
                assert response.status == 200, response.status
            async with client.get(f"http://127.0.0.1:{server.port}/readyz") as response:
                assert response.status == 200 and (await response.json())["status"] == "ready"
            async with client.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                text = await response.text()
                assert response.status == 200 and "lamassu_connector_" in text, text[:200]
    finally:
        await server.stop()


def json_log_line():
    """configure_logging's JSON form (structlog + orjson), in a child: structlog's set-up is global."""
    code = (
        "from lamassu_aws_connector.logs import configure_logging, get_logger\n"
        "configure_logging('info', 'json')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    get_logger('smoke').exception('smoke.event', number=1)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == 0, child.stderr
    line = json.loads(child.stderr.strip().splitlines()[-1])
    assert line["event"] == "smoke.event" and line["level"] == "error" and "ZeroDivisionError" in line["exception"]


async def main():
    from lamassu_aws_connector.logs import configure_logging

    configure_logging("warning", "console")
    await run("every module imports", imports)
    await run("Settings: defaults, example config, env", settings)
    await run("SqsJsonWire start/close (no proxy)", lambda: wire_start_close(None))
    await run("SqsJsonWire start/close (HTTPS_PROXY)", lambda: wire_start_close(DEAD))
    await run("SqsJsonWire: refused -> EndpointConnectionError", wire_refused)
    fake = FakeSqs()
    await fake.start()
    try:
        await run("SQS calls, fast path (fake endpoint)", lambda: sqs_paths(fake, True))
        await run("SQS calls, botocore client (fake endpoint)", lambda: sqs_paths(fake, False))
    finally:
        await fake.stop()
    await run("AMQP connect: heartbeat, connection name", amqp_connect)
    await run("ops server: /healthz /readyz /metrics", ops_server)
    await run("JSON log line", json_log_line)


loop = asyncio.new_event_loop()
try:
    loop.run_until_complete(main())
finally:
    # No clean-up of what a failed check may have left running (a reconnecting AMQP connection):
    # this process is thrown away.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failures else 0)
PY

echo
echo "check-lowest-deps: smoke check"
t=$SECONDS
if (cd "$work" && "${isolated_env[@]}" timeout 120 "$venv/bin/python" "$work/smoke.py" "$root"); then
  record PASS "smoke check" $((SECONDS - t))
else
  record FAIL "smoke check" $((SECONDS - t))
fi

# --- 4. unit tests --------------------------------------------------------------------------------
mkdir -p "$work/plugins"
cat >"$work/plugins/lowest_deps_plugin.py" <<'PY'
"""Deselects the tests that need real RabbitMQ and SQS (the `services` fixture); keeps Hypothesis'
example database out of the work tree."""

import os

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(os.path.join(os.environ["LOWEST_DEPS_WORK"], "hypothesis"))


@pytest.hookimpl(trylast=True)  # after -m "not integration" took its share
def pytest_collection_modifyitems(config, items):
    needs_services = [item for item in items if "services" in getattr(item, "fixturenames", ())]
    if needs_services:
        config.hook.pytest_deselected(items=needs_services)
        items[:] = [item for item in items if item not in needs_services]
        print(f"\nlowest-deps: {len(needs_services)} tests need RabbitMQ/SQS (the services fixture): deselected")
PY

echo
echo "check-lowest-deps: unit tests"
t=$SECONDS
if "${isolated_env[@]}" PYTHONPATH="$work/plugins" \
  LAMASSU_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$dead_port/" LAMASSU_TEST_SQS_ENDPOINT="http://127.0.0.1:$dead_port" \
  timeout 600 "$venv/bin/python" -m pytest -p no:cacheprovider -p lowest_deps_plugin -m "not integration" -q \
  --deselect tests/test_catalogue.py::test_committed_schemas_match_the_models tests; then
  record PASS "unit tests" $((SECONDS - t))
else
  record FAIL "unit tests" $((SECONDS - t))
fi

finish
