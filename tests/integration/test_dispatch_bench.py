"""The dispatch part of the bench: real consumer processes sharing one queue."""

from __future__ import annotations

import pytest

from bench.dispatch import PREFETCHES, draw, report_lines, run_fair_dispatch, run_scaling
from tests.conftest import require

REPORT_KEYS = ("slow_share", "slow_factor", "fair_delay_ms", "scaling_delay_ms")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    from devstack.broker_node import rabbitmq_installed

    require(rabbitmq_installed(), "RabbitMQ (apt-get install rabbitmq-server)")
    return run_fair_dispatch(tmp_path_factory.mktemp("dispatch"), jobs=30, processes_tried=(2,))


def test_every_job_is_delivered_once_and_counted_by_the_consumer_that_took_it(fair):
    assert [cell["prefetch"] for cell in fair] == list(PREFETCHES)
    for cell in fair:
        assert cell["delivered"] == cell["jobs"] == 30
        # Each consumer's own counter: together exactly the jobs, and both consumers took some.
        taken = [consumer["jobs"] for consumer in cell["consumers"]]
        assert sum(taken) == 30 and all(taken), taken
        for consumer in cell["consumers"]:
            assert 0 <= consumer["idle_s"] <= cell["drain_s"]


def test_scaling_and_charts(tmp_path, fair):
    scaling = run_scaling(tmp_path / "run", 40, processes_tried=(1, 2), concurrencies=(5,))
    assert [(c["processes"], c["delivered"]) for c in scaling] == [(1, 40), (2, 40)]
    assert all(c["rate"] > 0 for c in scaling)
    charts = draw({"fair_dispatch": fair, "scaling": scaling}, tmp_path)
    assert [c["file"] for c in charts] == ["dispatch.png", "scaling.png"]
    assert all((tmp_path / c["file"]).stat().st_size > 1000 for c in charts)
    lines = report_lines(
        {"fair_dispatch": fair, "scaling": scaling, **{k: 1.0 for k in REPORT_KEYS}}
    )
    assert sum("fair " in line for line in lines) == len(fair)
