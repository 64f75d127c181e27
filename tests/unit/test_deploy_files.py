"""deploy/ is what an operator installs and what `make cluster` runs: the units run the
Procfile's commands, every placeholder is one the harness fills in, and the nginx site passes
what the app needs behind a proxy."""

from __future__ import annotations

import re

import pytest

from devstack.cluster import (
    DEPLOY,
    ClusterError,
    procfile_command,
    read_env_file,
    read_unit,
    render,
)

VALUES = {
    "APP_DIR": "/srv/offload",
    "VENV": "/srv/offload/.venv",
    "ENV_FILE": "/etc/offload/offload.env",
    "RUNTIME_DIR": "/run",
}
UNITS = {
    "offload-release.service": "release",
    "offload-web.service": "web",
    "offload-email@.service": "email",
    "offload-sms@.service": "sms",
    "offload-relay@.service": "relay",
}


@pytest.mark.parametrize(("unit", "process"), UNITS.items())
def test_each_unit_runs_its_procfile_line_from_the_venv(unit, process):
    read = read_unit(unit, VALUES, "2")
    assert read.exec_start[0] == f"{VALUES['VENV']}/bin/{procfile_command(process)[0]}"
    assert read.exec_start[1:] == procfile_command(process)[1:]
    assert str(read.environment_file) == VALUES["ENV_FILE"]
    assert str(read.working_directory) == VALUES["APP_DIR"]


def test_only_the_web_unit_uses_prometheus_multiprocess_mode():
    assert read_unit("offload-web.service", VALUES).environment == {
        "PROMETHEUS_MULTIPROC_DIR": "/run/offload-web"
    }
    assert read_unit("offload-email@.service", VALUES, "1").environment == {}


def test_the_environment_template_names_a_cluster_and_quorum_queues():
    text = (DEPLOY / "offload.env.template").read_text()
    placeholders = set(re.findall(r"@([A-Z_]+)@", text))
    env = read_env_file(render(text, dict.fromkeys(placeholders, "x")))
    assert env["QUEUE_TYPE"] == "quorum"
    assert env["OFFLOAD_ENV"] == "production"
    assert env["RATE_LIMIT_TRUSTED_PROXIES"] == "1"
    assert env["AMQP_URL"] == "x"  # the harness writes every node, comma-separated


def test_the_nginx_site_forwards_the_scheme_and_the_client():
    site = (DEPLOY / "nginx" / "offload.conf").read_text()
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in site
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in site
    assert "ssl" in site


def test_a_placeholder_without_a_value_is_an_error():
    with pytest.raises(ClusterError, match="@MISSING@"):
        render("listen @MISSING@;", {})


def test_nginx_drops_an_idle_upstream_connection_before_gunicorn_does():
    """nginx reuses idle connections to gunicorn (upstream keepalive). One gunicorn closes at
    its `keepalive` seconds can be taken by nginx just as it goes: the POST on it fails with
    'connection reset' and nginx, which never retries a POST, answers 502. Seen in
    tests/integration/test_cluster.py after a pause of about gunicorn's 5 s."""
    site = (DEPLOY / "nginx" / "offload.conf").read_text()
    upstream = re.search(r"upstream offload_web \{(.*?)\}", site, re.S)
    assert upstream, "no upstream block in the nginx site"
    found = re.search(r"^\s*keepalive_timeout (\d+)s;", upstream.group(1), re.M)
    assert found, "the upstream sets no keepalive_timeout (nginx's default is 60 s)"
    gunicorn = (DEPLOY.parent / "gunicorn.conf.py").read_text()
    gunicorn_keepalive = int(re.search(r"^keepalive = (\d+)$", gunicorn, re.M).group(1))
    assert int(found.group(1)) < gunicorn_keepalive


@pytest.mark.parametrize(
    "unit", ["offload-email@.service", "offload-sms@.service", "offload-relay@.service"]
)
def test_the_worker_units_weigh_less_than_the_web_for_the_cpu(unit):
    # Each unit is a cgroup of its own: WORKER_NICE does not reach across them, CPUWeight does.
    def weight(name: str) -> int:
        found = re.findall(r"^CPUWeight=(\d+)$", (DEPLOY / "systemd" / name).read_text(), re.M)
        return int(found[0]) if found else 100  # systemd's default

    assert weight(unit) < weight("offload-web.service")
