"""Bridge between Lamassu IoT's CloudEvents on RabbitMQ and AWS SQS."""

# The one place the version is written (pyproject.toml reads it from here): a literal, because
# importlib.metadata costs ≈ 20 ms of CPU at every start.
__version__ = "0.1.0"
