"""The web dashboard in a real browser: Debian's chromium driven by Playwright (no browser
download). A user signs in with a token and sees snapshots, the last drill's RTO/RPO against
the targets, integrity, tasks and the audit log fill in; an operate token can start a backup
from the page. Screenshots go to test-artifacts/ (or $STACKVAULT_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import SV
from serve_support import Server, make_stack, stop_tasks, token

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("STACKVAULT_TEST_ARTIFACTS")
                 or Path(__file__).resolve().parents[2] / "test-artifacts")


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install chromium "
                    "(scripts/test.sh does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[SV, Server]]:
    sv = make_stack(tmp_path, """\
integrity:
  rules:
    - name: no-empty-titles
      type: custom
      component: app_db
      sql: "SELECT id FROM docs WHERE title = ''"
""")
    sv.ok("backup")
    sv.ok("backup")
    sv.ok("drill")
    sv.ok("integrity", "check")
    server = Server(sv).start()
    try:
        yield sv, server
    finally:
        server.stop()
        stop_tasks(tmp_path / "stackvault-state")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_dashboard_fills_in_for_a_read_token(stack: tuple[SV, Server],
                                                 browser: Any) -> None:
    sv, server = stack
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server.url + "/")
    page.fill("#token", "svt_00000000_wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('unknown or revoked')")
    assert page.is_hidden("#dash")

    page.fill("#token", token(sv, "read", "viewer"))
    page.click("button[type=submit]")
    page.wait_for_selector("#snap-svg")
    # two backups of two components: four bars
    page.wait_for_function("document.querySelectorAll('#snap-svg rect').length === 4")
    assert "viewer (read)" in page.inner_text("#who")
    assert "2 snapshots" in page.inner_text("#repo")
    drill = page.inner_text("#drill")
    assert "passed" in drill and "stack RTO" in drill and "/ 60.0 s" in drill  # the target
    assert "met" in drill  # RPO 1h
    assert page.locator("#drill-svg line").count() == 1  # one RTO target in the config
    assert "no-empty-titles" in page.inner_text("#integrity")
    assert "healthy" in page.inner_text("#integrity")
    audit = page.inner_text("#audit")
    assert "backup" in audit and "drill" in audit and "token create" in audit
    assert page.locator("#actions button").count() == 0  # a read token starts nothing
    shot(page, "dashboard-read")


def test_an_operate_token_starts_a_backup_and_sees_it_finish(stack: tuple[SV, Server],
                                                             browser: Any) -> None:
    sv, server = stack
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server.url + "/")
    page.fill("#token", token(sv, "operate", "operator"))
    page.click("button[type=submit]")
    page.wait_for_selector("#actions button[data-kind=backup]")
    page.click("#actions button[data-kind=backup]")
    page.wait_for_selector("#tasks td:has-text('operator')")
    page.wait_for_selector("#tasks .succeeded", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('#snap-svg rect').length === 6",
                           timeout=30_000)
    assert "3 snapshots" in page.inner_text("#repo")
    assert "api POST /api/v1/tasks" in page.inner_text("#audit")
    shot(page, "dashboard-operate")
