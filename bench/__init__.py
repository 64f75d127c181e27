"""The timing comparison: `python -m bench` (what `make bench` runs).

It starts the whole stack on free ports, drives registrations over real HTTP from a gevent load
generator in a child process, and reports serial, parallel and queued dispatch side by side with
two baselines (a no-op endpoint and an insert-only registration), the delivery lag of queued
mode, a burst the queue absorbs, and a Celery worker doing the same sends. See
docs/benchmark.md. Nothing in the request path imports this package.
"""
