"""The sample runs under the repository's devhost as `python -m devhost` from its
own folder (what the README tells you to do), and serve.start/stop work."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from ext_sample_testkit import (  # noqa: F401  (fixtures)
    SAMPLE, Client, http, issuer, otp_send, sample_files, serve, settings_for, signup_submit, token_issuance,
)

REPO_ROOT = SAMPLE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_devhost_serves_the_sample_from_its_folder(issuer, sample_files):
    port = _free_port()
    env = {**os.environ, **settings_for(issuer.url, sample_files / "cli"),
           "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "devhost", "--port", str(port), "--settings", os.devnull],
                               cwd=SAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base_url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 15
        while True:
            try:
                if http("GET", f"{base_url}/health").status == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "devhost did not come up"
            time.sleep(0.05)
        c = Client(base_url, issuer.url)
        r = c.post("token-issuance-start", token_issuance({"id": "x", "mail": "ada@example.com"}))
        assert r.status == 200
        assert r.json()["data"]["actions"][0]["claims"]["tenant"] == "contoso"
        assert c.post("otp-send", otp_send("+4915112345678", "86420", "sms")).status == 200
        assert c.post("token-issuance-start", {}, token=None).status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    assert "token_issuance_start: [POST]" in output and f"127.0.0.1:{port}/api/password-submit" in output
    assert "OTP for +4915112345678 (sms): 86420" in output
    assert process.returncode == 0


def test_serve_start_returns_a_base_url_and_stop_frees_the_port(issuer, sample_files):
    base_url, stop = serve.start(settings_for(issuer.url, sample_files / "startstop"))
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api")
    assert http("GET", f"{base_url}/health").status == 200
    stop()
    port = int(base_url.split(":")[2].split("/")[0])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free again


def test_two_instances_with_different_settings_run_side_by_side(issuer, sample_files):
    environment_before = dict(os.environ)
    with serve.running(settings_for(issuer.url, sample_files / "one", INVITATION_CODES="ONE")) as one, \
            serve.running(settings_for(issuer.url, sample_files / "two", INVITATION_CODES="TWO")) as two:
        kinds = [Client(url, issuer.url).post("attribute-collection-submit", signup_submit("ONE")).json()
                 ["data"]["actions"][0]["@odata.type"].rsplit(".", 1)[1] for url in (one, two)]
    assert kinds == ["continueWithDefaultBehavior", "showValidationError"]
    assert dict(os.environ) == environment_before  # settings are given to the app, not put in the environment


def test_the_example_files_work_as_the_readme_says(issuer, sample_files):
    from ext_sample_testkit import PASSWORD_KEY, pem, password_context, password_submit
    (sample_files / "example-key.pem").write_bytes(pem(PASSWORD_KEY))
    settings = {"EXTENSION_ISSUER": issuer.url, "EXTENSION_AUDIENCE": "api://localhost/extensions",
                "ROLES_FILE": str(SAMPLE / "examples" / "roles.json"),
                "LEGACY_USERS": str(SAMPLE / "examples" / "legacy-users.json"),
                "PASSWORD_PRIVATE_KEY_FILE": str(sample_files / "example-key.pem")}
    with serve.running(settings) as base_url:
        c = Client(base_url, issuer.url)
        claims = c.post("token-issuance-start", token_issuance({"id": "x", "mail": "alice@example.com"})).json()
        assert claims["data"]["actions"][0]["claims"] == {"roles": ["Admin", "Editor"], "tenant": "contoso",
                                                          "plan": "enterprise"}
        for user, expected in [("alice", "MigratePassword"), ("bob", "MigratePassword"), ("mallory", "Block")]:
            context = password_context(f"{user}@example.com", f"{user}'s legacy passphrase", "n")
            action = c.post("password-submit", password_submit(context)).json()["data"]["actions"][0]
            assert action["@odata.type"] == f"microsoft.graph.passwordSubmit.{expected}"
