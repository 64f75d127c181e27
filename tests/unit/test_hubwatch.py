"""gevent's monitor thread counts event-loop stalls in `offload_hub_blocks_total`."""

from __future__ import annotations

from tests.fresh_process import run_python

# In a fresh interpreter: the monitor thread, once started, stays for the process's life.
PROBE = """
import time, gevent
from app.hubwatch import watch_hub
from app.metrics import HUB_BLOCKS
watch_hub({threshold_ms})
gevent.sleep(0.05)
before = HUB_BLOCKS._value.get()
gevent.spawn(time.sleep, 0.6).join()  # time.sleep is not patched here: it holds the loop
gevent.sleep(0.5)  # give the monitor thread its turn to look
print(before, HUB_BLOCKS._value.get())
"""


def probe(threshold_ms: float) -> tuple[float, float]:
    result = run_python(PROBE.format(threshold_ms=threshold_ms))
    before, after = result.stdout.split()
    return float(before), float(after)


def test_a_stall_longer_than_the_threshold_is_counted():
    before, after = probe(100)
    assert after > before


def test_off_by_default_counts_nothing():
    assert probe(0) == (0.0, 0.0)


def test_the_startup_heap_is_left_out_of_later_collections():
    import gc

    from app.hubwatch import freeze_startup_heap

    freeze_startup_heap()
    try:
        assert gc.get_freeze_count() > 1000  # this test process's imports, at least
    finally:
        gc.unfreeze()


def test_watching_the_loop_warns_about_nothing_it_does_not_watch():
    """The monitor thread would also watch memory if psutil were installed, and warns at start
    when it is not; Offload never sets a memory limit, so that warning was noise in every log."""
    result = run_python(
        "from app.hubwatch import watch_hub; watch_hub(20)", interpreter_flags=("-W", "error")
    )
    assert "MonitorWarning" not in result.stderr
