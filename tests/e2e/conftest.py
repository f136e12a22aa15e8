"""Fixtures for the browser end-to-end tests (see e2e_harness.py and README.md).

``page`` is the one tests use: a fresh browser context with the test app loaded
from http://localhost:<port>/ and a CustomAuthPublicClientApplication pointed
at the real app (``server`` from tests/conftest.py) on http://127.0.0.1:<port>/api.
The bundle, the static site and Chromium are built/started once per session.

Missing prerequisites (Debian chromium, `npm ci`) make the tests fail, with the
command that fixes it; they are never skipped.
"""

from __future__ import annotations

import logging

import pytest

from .e2e_harness import (AccessLog, Driver, HarnessError, Page, StaticSite, build_site, missing_prerequisites,
                         msal_config)


def _require_prerequisites() -> None:
    problems = missing_prerequisites()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def e2e_site(tmp_path_factory):
    _require_prerequisites()
    try:
        site = StaticSite(build_site(tmp_path_factory.mktemp("e2e-site"))).start()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield site
    site.stop()


@pytest.fixture(scope="session")
def e2e_driver(tmp_path_factory):
    _require_prerequisites()
    tmp = tmp_path_factory.mktemp("e2e-chromium")
    profile = tmp / "profile"
    profile.mkdir()
    try:
        driver = Driver(user_data_dir=profile, log_path=tmp / "driver.log")
    except HarnessError as exc:
        pytest.fail(f"could not start headless Chromium through puppeteer-core: {exc}", pytrace=False)
    yield driver
    driver.close()


@pytest.fixture
def access_log(server):
    """What the API host serves during one test, from its ``devhost.access`` logger."""
    logger = logging.getLogger("devhost.access")
    handler = AccessLog()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def page(server, e2e_site, e2e_driver, access_log, request):
    """A fresh page (own browser context, empty storage) with the app created."""
    p = Page(e2e_driver, e2e_site.url, msal_config(server.host.base_url))
    assert p.init["isSecureContext"] is True, p.init  # crypto needs a secure context (contract §7.6)
    yield p
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("\n--- browser console ---\n" + "\n".join(p.console()))
        print("--- page network ---\n" + "\n".join(
            f"{r['method']} {r['url']} -> {r['status']} {r['failure'] or ''}" for r in p.network()))
        print("--- API access log ---\n" + "\n".join(f"{m} {path} {s}" for m, path, s in access_log.snapshot()))
    p.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
