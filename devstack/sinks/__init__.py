"""Local stand-ins for the outside world: an SMTP server and an SMS HTTP gateway.

Both accept what the real senders send, wait a settable delay, can inject failures at a settable
rate, and append every accepted message to a JSON-lines record file that the demo, the benchmark
and the tests read back. Run them with `python -m devstack.sinks {smtp,sms} ...`; tests and the
benchmark start them through `devstack.sinks.process.start_sink_process`.
"""
