"""`python -m bench.broker_intake` at a tiny setting: each layout runs as asked for, and the
broker's CPU is read for both phases. Shape and sanity only, never a timing."""

from __future__ import annotations

import pytest

from bench.broker_intake import CURRENT, LAYOUTS, LayoutCost, format_report, main, run
from devstack.broker_node import rabbitmq_installed
from tests.conftest import require

pytestmark = pytest.mark.integration


def test_every_layout_is_measured_on_a_node_of_its_own(tmp_path):
    require(rabbitmq_installed(), "RabbitMQ (Debian's rabbitmq-server)")
    # `run` raises if a vhost's work queues do not run in the version and mode asked for.
    costs = run(messages=1_000, rounds=1, base_dir=str(tmp_path / "node"))
    assert sorted(costs) == sorted(layout.name for layout in LAYOUTS)
    for cost in costs.values():
        assert len(cost.intake) == len(cost.delivery) == 1
        # A thousand persistent, confirmed events cost the broker some CPU in either phase.
        assert cost.intake[0] > 0 and cost.delivery[0] > 0


def test_the_report_gives_each_round_the_median_and_the_saving():
    report = format_report(
        {
            "version 1": LayoutCost([0.150, 0.160, 0.140], [0.05]),
            "version 2": LayoutCost([0.125, 0.110, 0.130], [0.06]),
            CURRENT.name: LayoutCost([0.100, 0.090, 0.120], [0.07]),
        },
        20_000,
    )
    assert "version 1        0.150 0.160 0.140  (0.150)" in report
    assert "version 2, lazy  0.100 0.090 0.120  (0.100)" in report
    assert f"{CURRENT.name} takes an event in for 33% less of the broker's CPU than version 1" in (
        report
    )
    assert f"{CURRENT.name} takes an event in for 20% less of the broker's CPU than version 2" in (
        report
    )


def test_a_dearer_layout_is_reported_as_more_not_as_a_negative_saving():
    # By the hour a newer layout has come out dearer; the line must not read "-25% less".
    report = format_report(
        {"version 1": LayoutCost([0.100], [0.05]), CURRENT.name: LayoutCost([0.125], [0.07])},
        20_000,
    )
    assert f"{CURRENT.name} takes an event in for 25% more of the broker's CPU" in report
    assert "-25%" not in report


def test_nonsense_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["--messages", "0"])
    assert refused.value.code == 2
    assert "--messages and --rounds must be at least 1" in capsys.readouterr().err
