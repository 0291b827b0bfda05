"""Done-when of issue #22 in a real headless Chromium: the alerts panel adds a webhook, the
bell on a card makes a rule, the stand-in scanner changes the value, a real webhook receiver
gets the signed alert, and the board's alerts panel shows the delivery. Real ``quartsig serve``
(Hypercorn subprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import wait_until
from tests.support.processes import REPO, QuartsigServer, Standin, quartsig_cli, quartsig_env
from tests.support.webhooks import threaded_receiver

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

TICKER = "FX_IDC:EURUSD"
CARD = '[data-testid="card"][data-symbol="FX_IDC:EURUSD"][data-profile="summary"]'


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    with Standin.start(tmp_path) as running:
        yield running


def test_bell_rule_scanner_change_history_shows_the_delivery(
        tmp_path: Path, standin: Standin) -> None:
    standin.set_values(TICKER, "1h", {"Recommend.All": 0.0})  # NEUTRAL
    env = quartsig_env(tmp_path / "data", standin.url)
    quartsig_cli(env, "account", "add", "42")
    token = quartsig_cli(env, "token", "issue", "42").strip()
    with QuartsigServer.start(env, tmp_path) as server, threaded_receiver("whsec_") as hook, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.url}/#token={token}")
            page.fill('[data-testid="channel-url"]', hook.url("/alerts"))
            page.click('[data-testid="channel-add"]')
            page.wait_for_selector('[data-testid="channel-secret"][data-secret]')
            hook.secret = str(page.get_attribute('[data-testid="channel-secret"]',
                                                 "data-secret"))
            assert hook.secret.startswith("whsec_")
            page.wait_for_selector('[data-testid="alerts-channel"][data-state="active"]')
            page.fill('[data-testid="add-symbol"]', TICKER)
            page.select_option('[data-testid="add-tf"]', "1h")
            page.select_option('[data-testid="add-profile"]', "summary")
            page.click('[data-testid="add-submit"]')
            page.wait_for_selector(f'{CARD}[data-key] [data-testid="gauge-all"]')
            page.click(f'{CARD} [data-testid="card-bell"]')
            page.select_option(f'{CARD} [data-testid="alert-preset"]', "buy")
            page.click(f'{CARD} [data-testid="alert-create"]')
            page.wait_for_selector(f'{CARD} [data-testid="alert-rule"]')
            assert "not fired yet" in page.inner_text(f'{CARD} [data-testid="alert-rule"]')

            standin.set_values(TICKER, "1h", {"Recommend.All": 0.3})  # BUY
            wait_until(lambda: bool(hook.valid("/alerts")), 60, what="the signed webhook")
            [got] = hook.valid("/alerts")
            assert (got.body["from"], got.body["to"], got.body["symbol"]) == (
                "NEUTRAL", "BUY", TICKER)
            page.wait_for_selector('[data-testid="alerts-entry"][data-status="sent"]',
                                   timeout=60_000)
            entry = page.inner_text('[data-testid="alerts-entry"]')
            assert "NEUTRAL → BUY" in entry and "EURUSD 1h" in entry
            page.wait_for_function(
                "s => document.querySelector(s)?.textContent.includes('last: NEUTRAL → BUY')",
                arg=f'{CARD} [data-testid="alert-last"]', timeout=60_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "alerts-bell-history.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
