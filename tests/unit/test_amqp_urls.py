"""AMQP_URL lists a cluster's nodes: every client gets one set of parameters per node, in order."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_settings
from app.topology import amqp_urls, cluster_parameters, connection_parameters

NODES = "amqp://guest:guest@127.0.0.1:5701/%2F, amqp://guest:guest@127.0.0.1:5702/%2F,"


def test_a_comma_separated_list_names_each_node_in_order():
    assert amqp_urls(NODES) == [
        "amqp://guest:guest@127.0.0.1:5701/%2F",
        "amqp://guest:guest@127.0.0.1:5702/%2F",
    ]
    params = cluster_parameters(NODES, name="x")
    assert [p.port for p in params] == [5701, 5702]
    # Each node's parameters keep the bounds every connection has.
    assert {p.heartbeat for p in params} == {30}
    assert {p.blocked_connection_timeout for p in params} == {30}
    assert {p.client_properties["connection_name"] for p in params} == {"x"}


def test_one_url_is_a_list_of_one_and_connection_parameters_takes_the_first():
    assert [p.port for p in cluster_parameters("amqp://127.0.0.1:5999/%2F")] == [5999]
    assert connection_parameters(NODES).port == 5701


@pytest.mark.parametrize("value", ["", " , ,"])
def test_an_empty_list_is_refused_at_start(value):
    with pytest.raises(ConfigError, match="AMQP_URL"):
        load_settings({"AMQP_URL": value})
