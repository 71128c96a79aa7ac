# syntax=docker/dockerfile:1
#
# lamassu-aws-connector container image.
#
#   docker build -t lamassu-aws-connector:0.1.0 .
#   docker run --rm -p 8080:8080 \
#     -e LAMASSU_AMQP__URL=amqp://user:pass@rabbitmq:5672/ \
#     -e AWS_REGION=us-east-1 -e LAMASSU_SQS__REGION=us-east-1 \
#     lamassu-aws-connector:0.1.0
#
# Configuration: a YAML file mounted read-only and named by LAMASSU_CONFIG, and/or LAMASSU_<SECTION>__<KEY>
# environment variables (they win over the file). Without either, the built-in defaults apply (real AWS
# endpoints, queues must already exist). AWS credentials come from the standard botocore chain
# (AWS_* environment variables, IRSA web identity, instance/task role). See docs/deployment.md.
#
# Pin the base image by digest in production builds: --build-arg PYTHON_IMAGE=python:3.12-slim@sha256:...
ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------------------------------
# build: resolve the dependencies and build the project's wheel into a self-contained venv.
# Every dependency ships binary wheels for linux/amd64 and linux/arm64, so no compiler is needed.
# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first, from pyproject.toml alone: this layer is reused while only the sources change.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --requirement /tmp/requirements.txt

# The project itself, as a wheel (not an editable install), without touching the dependencies again.
COPY README.md ./
COPY lamassu_aws_connector ./lamassu_aws_connector
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-deps /tmp/wheels/lamassu_aws_connector-*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/lamassu-aws-connector version

# ---------------------------------------------------------------------------------------------------
# runtime: the same slim base (the venv's interpreter symlink points at its python), the venv, a
# numeric non-root user. No compiler, no package manager run, nothing written at run time.
# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="lamassu-aws-connector" \
      org.opencontainers.image.description="Bridge Lamassu IoT CloudEvents between RabbitMQ and AWS SQS, at-least-once"

# A passwd entry for uid 10001 (some libraries look the user up); its home holds an optional
# read-only ~/.aws mount. Kubernetes runs the image with runAsUser 10001 and a read-only root.
RUN groupadd --system --gid 10001 connector \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/connector --create-home \
      --shell /usr/sbin/nologin connector

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LAMASSU_LOG__FORMAT=json

USER 10001:10001
WORKDIR /home/connector

# /healthz, /readyz and /metrics (http.port).
EXPOSE 8080

# No curl in slim images: the image's own Python probes liveness, on LAMASSU_HTTP__PORT if it is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('LAMASSU_HTTP__PORT') or '8080'), timeout=3)"]

# SIGTERM drains gracefully within shutdown.grace_seconds (25 s) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lamassu-aws-connector"]
CMD ["run"]
