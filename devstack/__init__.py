"""The local harness production never runs: a private RabbitMQ node, the SMTP and SMS sinks,
and the stack runner that starts them with the web app and the workers (`make run`, the
benchmark and the tests).
"""

from pathlib import Path

# The checkout the harness runs from: child processes start here so `python -m app...` resolves.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
