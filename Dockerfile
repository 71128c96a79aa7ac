# syntax=docker/dockerfile:1
# Build: docker build -t lamassu-aws-connector .
# Run:   docker run --rm -e LAMASSU_CONFIG=/config/config.yaml -v $PWD/config.yaml:/config/config.yaml:ro \
#          lamassu-aws-connector
#        Without a file the built-in defaults apply (AWS endpoints, queues must exist), overridden by
#        LAMASSU_* environment variables; AWS credentials come from the standard chain (env, IRSA, role).

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY lamassu_aws_connector ./lamassu_aws_connector
RUN /opt/venv/bin/pip install .

FROM python:3.12-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LAMASSU_LOG__FORMAT=json
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin connector
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
ENTRYPOINT ["lamassu-aws-connector"]
CMD ["run"]
