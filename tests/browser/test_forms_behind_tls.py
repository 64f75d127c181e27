"""Every form, submitted by Chromium through a real TLS-terminating nginx, in front of the
Procfile's gunicorn line: the registration form (with errors, then valid), the email link's
confirmation button, and the SMS code form.

The certificate is a throwaway self-signed one made with openssl at test start; nginx passes
X-Forwarded-Proto and X-Forwarded-For, and the app trusts one proxy (RATE_LIMIT_TRUSTED_PROXIES).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack import PROJECT_ROOT
from devstack.ports import free_port
from devstack.sinks.process import start_sink_process
from tests.browser.test_registration_journey import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    fill_registration,
    new_person,
)
from tests.conftest import require

pytestmark = pytest.mark.browser

NGINX = "/usr/sbin/nginx"
CSRF_REFUSAL = "Please try again"  # the title of the page a failed CSRF check shows

NGINX_CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def procfile_command(name: str) -> list[str]:
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {name} line in the Procfile")


def wait_until_up(
    url: str, process: subprocess.Popen[bytes], what: str, verify: str | bool = True
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        try:
            requests.get(url, timeout=2, verify=verify)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not come up at {url}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def tls_site(tmp_path: Path, database_url: str) -> Iterator[dict[str, Any]]:
    require(os.path.exists(NGINX), "Debian's nginx (apt-get install nginx)")
    require(shutil.which("openssl") is not None, "openssl")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    smtp = start_sink_process("smtp", 0, tmp_path / "mail.jsonl", delay_ms=0)
    sms = start_sink_process("sms", 0, tmp_path / "sms.jsonl", delay_ms=0)
    web_port, tls_port = free_port(), free_port()
    base_url = f"https://127.0.0.1:{tls_port}"
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            "HOST": "127.0.0.1",
            "PORT": str(web_port),
            "BASE_URL": base_url,
            "SECRET_KEY": "tls-test-secret-of-at-least-32-bytes",
            "DATABASE_URL": database_url,
            "DISPATCH_MODE": "serial",
            "WEB_WORKERS": "1",
            "SMTP_PORT": str(smtp.port),
            "SMS_GATEWAY_URL": sms.messages_url,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",  # serial: unused
            "RATE_LIMIT_TRUSTED_PROXIES": "1",
            "LOG_LEVEL": "WARNING",
        }
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        web = subprocess.Popen(procfile_command("web"), cwd=PROJECT_ROOT, env=env)
        processes.append(web)
        wait_until_up(f"http://127.0.0.1:{web_port}/healthz", web, "gunicorn")
        for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / folder).mkdir()
        conf = tmp_path / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp_path, port=tls_port, upstream=web_port))
        nginx = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "nginx-error.log")]
        )
        processes.append(nginx)
        wait_until_up(f"{base_url}/healthz", nginx, "nginx", verify=str(tmp_path / "cert.pem"))
        yield {"base_url": base_url, "smtp": smtp, "sms": sms}
    finally:
        for process in reversed(processes):
            stop(process)
        smtp.stop()
        sms.stop()


def record_for(sink: Any, to: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for record in sink.records():
            if record["to"] == to:
                return record  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"nothing for {to} reached the sink")


def test_every_form_works_through_a_tls_terminating_proxy(tls_site, artifacts_dir):
    submit_every_form(tls_site, artifacts_dir / "browser-tls-all-forms.png", mode="serial")


@pytest.mark.integration
def test_every_form_works_through_make_clusters_nginx(cluster, artifacts_dir):
    """The same journey through `make cluster`'s nginx (deploy/nginx/offload.conf), gunicorn's
    two workers, PostgreSQL, and the consumers of the RabbitMQ cluster (queued mode)."""
    site = {
        "base_url": cluster.base_url,
        "smtp": cluster.sinks["smtp"],
        "sms": cluster.sinks["sms"],
    }
    # In production the form offers no mode: DISPATCH_MODE (queued) decides.
    submit_every_form(site, artifacts_dir / "browser-cluster-all-forms.png", mode=None)


def submit_every_form(tls_site: dict[str, Any], screenshot: Path, *, mode: str | None) -> None:
    require(os.path.exists(CHROMIUM), "Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    base_url = tls_site["base_url"]
    person = new_person()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        context = browser.new_context(ignore_https_errors=True)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        try:
            # 1. The registration form, sent with errors: the field errors, not a CSRF refusal.
            page.goto(f"{base_url}/register")
            assert page.url.startswith("https://")
            page.get_by_role("button", name="Create account").click()
            assert CSRF_REFUSAL not in page.title()
            assert page.locator("#email-error").is_visible()

            # 2. Sent properly: the status page.
            if mode is None:
                page.get_by_label("Full name").fill(person["name"])
                page.get_by_label("Email address").fill(person["email"])
                page.get_by_label("Mobile phone").fill(person["phone"])
            else:
                fill_registration(page, person, mode=mode)
            page.get_by_role("button", name="Create account").click()
            assert CSRF_REFUSAL not in page.title()
            page.wait_for_url(re.compile(r"/status$"))
            status_url = page.url

            # 3. The email link (https, through the proxy), then its confirmation button.
            link = re.search(
                r"(\S+/verify-email/\S+)", record_for(tls_site["smtp"], person["email"])["text"]
            ).group(1)
            assert link.startswith(f"{base_url}/verify-email/")
            page.goto(link)
            page.get_by_role("button", name="Confirm my email address").click()
            assert CSRF_REFUSAL not in page.title()
            assert (
                page.locator("#verify-email-outcome").get_attribute("data-outcome") == "confirmed"
            )

            # 4. The SMS code form.
            sms = record_for(tls_site["sms"], person["phone"])
            code = re.search(r"code is (\d{6})", sms["body"]).group(1)
            page.goto(status_url)
            page.get_by_label("Code from the SMS").fill(code)
            page.get_by_role("button", name="Confirm phone number").click()
            assert CSRF_REFUSAL not in page.title()
            assert page.locator("#phone-verification").inner_text() == "confirmed"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
            browser.close()
