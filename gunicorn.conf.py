"""gunicorn settings for `gunicorn -c gunicorn.conf.py wsgi:app` (the Procfile's web line).

Addresses come from the application's settings (HOST, PORT). Never `preload_app` with gevent: the
app, and with it each worker's broker connections, must be created after the fork.
"""

import os
from typing import Any

from app.config import load_settings_or_exit

# A bad setting stops gunicorn with the same one-line message as `python wsgi.py`.
_settings = load_settings_or_exit()

bind = f"{_settings.host}:{_settings.port}"
worker_class = "gevent"
workers = _settings.web_workers
worker_connections = _settings.web_pool_size
preload_app = False
graceful_timeout = 10
keepalive = 5
accesslog = None


def on_starting(_server: Any) -> None:
    # prometheus-client's multiprocess mode: files left by an earlier run would be summed in.
    folder = _settings.prometheus_multiproc_dir
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.remove(os.path.join(folder, name))


def child_exit(_server: Any, worker: Any) -> None:
    # A dead worker's live gauges leave the sum (its counters stay counted).
    if _settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, _settings.prometheus_multiproc_dir)


def post_worker_init(worker: Any) -> None:
    from app.db import checkpoint_off_the_loop
    from app.extension import offload
    from app.hubwatch import freeze_startup_heap, watch_hub

    watch_hub(_settings.hub_block_report_ms)
    checkpoint_off_the_loop(offload(worker.wsgi).engine)
    freeze_startup_heap()
    # Each worker connects to the broker itself, after the fork, before its first request.
    offload(worker.wsgi).require_dispatcher().publisher.warm_up()


def worker_exit(_server: Any, worker: Any) -> None:
    # Rows confirmed in the last few milliseconds are marked queued before the worker goes.
    from app.extension import offload

    if worker.wsgi is not None:
        offload(worker.wsgi).require_dispatcher().queued_marker.close()
