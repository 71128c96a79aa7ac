"""Bridge between Lamassu IoT's CloudEvents on RabbitMQ and AWS SQS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lamassu-aws-connector")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
