"""Fixtures for the browser end-to-end tests (see e2e_harness.py and README.md).

``page`` is the one tests use: a fresh browser context with the test app loaded
from http://localhost:<port>/ and a CustomAuthPublicClientApplication pointed
at the real app (``server`` from tests/conftest.py) on http://127.0.0.1:<port>/api.
``make_page(**custom_auth)`` creates that page with another SDK configuration
instead (e.g. ``make_page(capabilities=[])``: an app that declares no
capabilities). ``second_factor_policy(email, ...)`` turns on a conditional-access
policy requiring a second factor for the given users, deleted after the test.
The bundle, the static site and Chromium are built/started once per session.

Missing prerequisites (Debian chromium, `npm ci`) make the tests fail, with the
command that fixes it; they are never skipped.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from shared.security import policy

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
def make_page(server, e2e_site, e2e_driver, access_log, request):
    """``make_page(**custom_auth)``: a fresh page (own browser context, empty
    storage) with the app created from ``msal_config(api, **custom_auth)``.

    The driver holds one page at a time, so a test uses one page: either the
    ``page`` fixture or one ``make_page(...)`` call."""
    pages: list[Page] = []

    def make(**custom_auth) -> Page:
        p = Page(e2e_driver, e2e_site.url, msal_config(server.host.base_url, **custom_auth))
        pages.append(p)
        assert p.init["isSecureContext"] is True, p.init  # crypto needs a secure context (contract §7.6)
        return p

    yield make
    if not pages:
        return
    p = pages[-1]
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("\n--- SDK configuration ---\n" + repr(p.config.get("customAuth")))
        print("--- browser console ---\n" + "\n".join(p.console()))
        print("--- page network ---\n" + "\n".join(
            f"{r['method']} {r['url']} -> {r['status']} {r['failure'] or ''}" for r in p.network()))
        print("--- API access log ---\n" + "\n".join(f"{m} {path} {s}" for m, path, s in access_log.snapshot()))
    p.close()


@pytest.fixture
def page(make_page):
    """A fresh page (own browser context, empty storage) with the app created
    with the default configuration (capabilities mfa_required + registration_required)."""
    return make_page()


@pytest.fixture
def second_factor_policy(server):
    """``second_factor_policy(*users, methods=("email", "sms"))`` saves a policy
    "second factor required" assigned to those users (emails; all users when
    none are given) and returns its name; every policy saved is deleted after
    the test, whatever happens. Scoping to the test's own users keeps the
    policy from touching any other test even if the deletion failed."""
    names: list[str] = []

    def enable(*users: str, methods: tuple[str, ...] = ("email", "sms")) -> str:
        name = f"e2e second factor {uuid.uuid4().hex[:12]}"
        names.append(name)
        policy.save(server.storage, {
            "name": name,
            "assignments": {"users": {"include": list(users) or ["all"]}},
            "grant": {"require_second_factor": True, "methods": list(methods)},
        })
        return name

    try:
        yield enable
    finally:
        for name in names:
            policy.delete(server.storage, name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
