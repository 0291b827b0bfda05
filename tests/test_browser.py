"""The board in a real headless Chromium against a real ``quartsig serve`` and the stand-in.

Each test starts its own server (Hypercorn subprocess) on a fresh data directory, with one
account and a token minted through the CLI; the stand-in scanner runs once per module and each
test pins the values of its own ticker. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import wait_until
from tests.support.processes import REPO, QuartsigServer, Standin, quartsig_cli, quartsig_env

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = REPO / "artifacts"
TG_ID = "42"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    with Standin.start(tmp_path_factory.mktemp("standin")) as running:
        yield running


@dataclass
class Site:
    server: QuartsigServer
    env: dict[str, str]
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    def subscriptions(self) -> float | None:
        """``quartsig_subscriptions`` from /metrics (which must answer)."""
        return self.server.metrics().get("quartsig_subscriptions")


@pytest.fixture
def site(tmp_path: Path, standin: Standin) -> Iterator[Site]:
    env = quartsig_env(tmp_path / "data", standin.url)
    quartsig_cli(env, "account", "add", TG_ID)
    token = quartsig_cli(env, "token", "issue", TG_ID).strip()
    with QuartsigServer.start(env, tmp_path) as server:
        yield Site(server, env, token)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@dataclass
class Watched:
    """A page with its console errors, uncaught exceptions and WebSockets recorded."""

    page: Any
    errors: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        bad = [e for e in self.errors if not any(a in e for a in allow)]
        assert bad == [], bad


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    contexts = []

    def open_page(viewport: dict[str, int] = DESKTOP) -> Watched:
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        watched = Watched(page)
        page.on("pageerror", lambda error: watched.errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda m: watched.errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("websocket", lambda ws: watched.sockets.append(ws.url))
        return watched

    yield open_page
    for context in contexts:
        context.close()


# ---------------------------------------------------------------------------------- helpers


def card_selector(key: str) -> str:
    return f'[data-testid="card"][data-key="{key}"]'


def add_card(page: Any, symbol: str, tf: str, profile: str = "full") -> None:
    page.fill('[data-testid="add-symbol"]', symbol)
    page.select_option('[data-testid="add-tf"]', tf)
    page.select_option('[data-testid="add-profile"]', profile)
    page.click('[data-testid="add-submit"]')


def wait_value(page: Any, key: str, testid: str, expected: str, timeout: float = 20_000) -> None:
    """Wait until the card's element ``testid`` has ``data-value == expected``."""
    selector = f'{card_selector(key)} [data-testid="{testid}"]'
    try:
        page.wait_for_function(
            "([s, v]) => document.querySelector(s)?.dataset.value === v",
            arg=[selector, expected],
            timeout=timeout,
        )
    except sync_api.TimeoutError:
        current = page.evaluate("s => document.querySelector(s)?.dataset.value ?? null", selector)
        raise AssertionError(
            f"{testid} of {key}: wanted {expected!r}, has {current!r}\n{describe(page)}"
        ) from None


def describe(page: Any) -> str:
    """The client's and the cards' state, for failure messages."""
    return str(
        page.evaluate(
            """() => JSON.stringify({
                state: window.quartsigClient.connectionState,
                attempts: window.quartsigClient.attempts,
                lastClose: window.quartsigClient.lastClose,
                upstream: window.quartsigClient.upstream,
                keys: [...window.quartsigClient.state.keys()],
                cards: [...document.querySelectorAll('[data-testid="card"]')].map((c) => ({
                    ...c.dataset,
                    error: c.querySelector('[data-testid="card-error"]').textContent,
                })),
            })"""
        )
    )


def connection_state(page: Any) -> str:
    return str(page.get_attribute('[data-testid="connection-state"]', "data-state"))


def wait_state(page: Any, state: str, timeout: float = 20_000) -> None:
    page.wait_for_function(
        "s => document.querySelector('[data-testid=\"connection-state\"]').dataset.state === s",
        arg=state,
        timeout=timeout,
    )


def attempts(page: Any) -> int:
    return int(page.evaluate("window.quartsigClient.attempts"))


def set_visibility(page: Any, state: str) -> None:
    """Emulate the tab being hidden or shown: what the page sees of a background tab."""
    page.evaluate(
        """state => {
            if (!window.__visibilityPatched) {
                window.__visibilityPatched = true;
                Object.defineProperty(document, "visibilityState",
                    { configurable: true, get: () => window.__visibility });
                Object.defineProperty(document, "hidden",
                    { configurable: true, get: () => window.__visibility === "hidden" });
            }
            window.__visibility = state;
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        state,
    )


def assert_gave_up(page: Any, attempts: int = 1) -> None:
    """The client is in ``fatal`` with no reconnect scheduled: it will not try again by itself
    (what a fixed wait for a retry that never comes cannot show on a busy machine)."""
    state = page.evaluate(
        "() => ({state: window.quartsigClient.connectionState, ws: window.quartsigClient._ws,"
        " next: window.quartsigClient.nextAttemptAt, timer: window.quartsigClient._timer})"
    )
    assert state == {"state": "fatal", "ws": None, "next": None, "timer": None}, state
    assert connection_state(page) == "fatal"
    # and none by another path: the first retry would come 0.05-0.5 s after the close; this
    # only looks for something that must not happen, so a slow machine cannot fail it
    page.wait_for_timeout(2_000)
    assert page.evaluate("window.quartsigClient.attempts") == attempts


def requested_tickers(standin: Standin, since: float) -> set[str]:
    return {t for r in standin.requests() if r["time"] >= since for t in r["tickers"]}


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    return path


# ---------------------------------------------------------------------------------- tests


def test_fragment_token_connects_and_a_card_shows_the_standin_value(
    site: Site, standin: Standin, open_page: Any
) -> None:
    values = standin.set_values("FX_IDC:EURUSD", "1h", {"Recommend.All": 0.37})
    standin.set_values("BINANCE:BTCUSDT", "15m", {"Recommend.All": -0.62})
    watched = open_page()
    page = watched.page
    page.goto(f"{site.url}/#token={site.token}")
    wait_state(page, "open")
    # the token left the address bar for the tab's storage
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('quartsig.token')") == site.token

    add_card(page, "eurusd", "1h", "full")
    add_card(page, "BINANCE:BTCUSDT", "15m", "summary")
    key = "full|FX_IDC:EURUSD|1h"
    wait_value(page, key, "card-recommend-all", "0.37")
    card = page.locator(card_selector(key))
    assert card.get_by_test_id("card-rec-all").inner_text() == "Buy"
    assert card.get_by_test_id("card-symbol").inner_text() == "FX_IDC:EURUSD"
    # the tables carry the stand-in's own numbers and the profile's actions
    rsi = card.get_by_test_id("value-RSI").get_attribute("data-value")
    assert rsi is not None
    assert float(rsi) == pytest.approx(values["RSI"], abs=1e-12)
    assert card.get_by_test_id("act-RSI").get_attribute("data-value") in {"BUY", "SELL", "NEUTRAL"}
    counts = [
        card.get_by_test_id(f"count-other-{k}").inner_text() for k in ("sell", "neutral", "buy")
    ]
    assert sum(int(c) for c in counts) == 11
    assert card.get_by_test_id("card-updated").inner_text().startswith("Updated ")
    assert card.get_by_test_id("status").is_hidden()

    summary = "summary|BINANCE:BTCUSDT|15m"
    wait_value(page, summary, "card-recommend-all", "-0.62")
    summary_card = page.locator(card_selector(summary))
    assert summary_card.get_by_test_id("card-rec-all").inner_text() == "Strong sell"
    assert summary_card.get_by_test_id("table-osc").count() == 0

    # the cards are kept: a reload restores them from localStorage, the token from the tab
    saved = json.loads(page.evaluate("localStorage.getItem('quartsig.cards')"))
    assert saved == [
        {"symbol": "FX_IDC:EURUSD", "tf": "1h", "profile": "full"},
        {"symbol": "BINANCE:BTCUSDT", "tf": "15m", "profile": "summary"},
    ]
    page.reload()
    wait_value(page, key, "card-recommend-all", "0.37")
    wait_value(page, summary, "card-recommend-all", "-0.62")
    assert page.locator('[data-testid="card"]').count() == 2

    # an unknown ticker is reported on its card
    add_card(page, "FX_IDC:NOSUCH", "1h", "full")
    error = page.locator(
        '[data-testid="card"][data-symbol="FX_IDC:NOSUCH"] [data-testid="card-error"]'
    )
    error.wait_for(state="visible", timeout=20_000)
    assert "TradingView does not know this symbol" in error.inner_text()
    page.locator(
        '[data-testid="card"][data-symbol="FX_IDC:NOSUCH"] [data-testid="card-remove"]'
    ).click()
    assert page.locator('[data-testid="card"]').count() == 2

    screenshot(page, "board-desktop.png")
    phone = open_page(PHONE)
    phone.page.goto(f"{site.url}/#token={site.token}")
    add_card(phone.page, "EURUSD", "1h", "full")
    wait_value(phone.page, key, "card-recommend-all", "0.37")
    width = phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px)"
    screenshot(phone.page, "board-phone.png")
    watched.assert_clean()
    phone.assert_clean()


def test_the_value_on_the_page_follows_the_standin(
    site: Site, standin: Standin, open_page: Any
) -> None:
    standin.set_values("FX_IDC:GBPUSD", "5m", {"Recommend.All": -0.2, "Recommend.MA": 0.3})
    watched = open_page()
    page = watched.page
    page.goto(f"{site.url}/#token={site.token}")
    add_card(page, "GBPUSD", "5m")
    key = "full|FX_IDC:GBPUSD|5m"
    wait_value(page, key, "card-recommend-all", "-0.2")
    page.evaluate(
        """() => {
            window.__flashed = [];
            new MutationObserver((records) => {
                for (const r of records) {
                    if (r.target.classList.contains("flash")) {
                        window.__flashed.push(r.target.dataset.testid || r.target.dataset.field);
                    }
                }
            }).observe(document.body,
                       { subtree: true, attributes: true, attributeFilter: ["class"] });
        }"""
    )
    standin.set_values("FX_IDC:GBPUSD", "5m", {"Recommend.All": 0.8})
    wait_value(page, key, "card-recommend-all", "0.8")
    card = page.locator(card_selector(key))
    assert card.get_by_test_id("card-rec-all").inner_text() == "Strong buy"
    assert card.get_by_test_id("card-recommend-ma").get_attribute("data-value") == "0.3"
    flashed = page.evaluate("window.__flashed")
    assert "card-recommend-all" in flashed, flashed
    assert "card-rec-all" in flashed, flashed
    assert "card-recommend-ma" not in flashed, "unchanged values are not highlighted"

    # a moving market: every step the stand-in takes reaches the page
    before = card.get_by_test_id("card-updated").get_attribute("data-ts")
    rsi = card.get_by_test_id("value-RSI").get_attribute("data-value")

    def moved() -> bool:
        standin.step(5)
        return card.get_by_test_id("value-RSI").get_attribute("data-value") != rsi

    wait_until(moved, 60, interval=0.5, what="RSI to move with the stand-in's steps")
    page.wait_for_function(
        "([s, ts]) => document.querySelector(s).dataset.ts !== ts",
        arg=[f'{card_selector(key)} [data-testid="card-updated"]', before],
        timeout=20_000,
    )
    watched.assert_clean()


def test_hiding_the_tab_closes_the_socket_and_showing_it_resubscribes(
    site: Site, standin: Standin, open_page: Any
) -> None:
    standin.set_values("FX_IDC:USDJPY", "4h", {"Recommend.All": 0.11})
    # a second tab keeps another key wanted, so the collector keeps asking the scanner and
    # "USDJPY is no longer asked for" is seen in requests that were made, not in silence
    witness = open_page()
    witness.page.goto(f"{site.url}/#token={site.token}")
    add_card(witness.page, "EURGBP", "4h", "summary")
    wait_until(lambda: site.subscriptions() == 1.0, 60, what="the witness's subscription")
    watched = open_page()
    page = watched.page
    page.goto(f"{site.url}/#token={site.token}")
    add_card(page, "USDJPY", "4h", "summary")
    key = "summary|FX_IDC:USDJPY|4h"
    wait_value(page, key, "card-recommend-all", "0.11")
    wait_until(lambda: site.subscriptions() == 2.0, 60, what="two subscriptions")
    assert attempts(page) == 1

    set_visibility(page, "hidden")
    wait_state(page, "hidden")
    assert page.evaluate("window.quartsigClient._ws") is None
    # the server dropped the subscription: the metric says so and the scanner stops being asked
    wait_until(lambda: site.subscriptions() == 1.0, 60, what="only the witness's subscription")
    dropped = time.time()
    # a tick that was in flight when the subscription went may still carry USDJPY: count
    # only requests made after one that started later than that has finished
    settled = wait_until(lambda: min((r["finished"] for r in standin.requests()
                                      if r["time"] >= dropped and r["finished"]), default=None),
                         60, what="a request made after the subscription was dropped")
    later = wait_until(lambda: (lambda got: got if len(got) >= 3 else None)(
        [r for r in standin.requests() if r["time"] > settled]), 60, what="three more requests")
    assert all("FX_IDC:EURGBP" in r["tickers"] for r in later), later
    assert not any("FX_IDC:USDJPY" in r["tickers"] for r in later), later
    standin.set_values("FX_IDC:USDJPY", "4h", {"Recommend.All": -0.33})
    assert attempts(page) == 1, "no reconnect while hidden"
    assert page.evaluate("window.quartsigClient.nextAttemptAt") is None, "none scheduled"

    since = time.time()
    set_visibility(page, "visible")
    wait_state(page, "open", timeout=60_000)
    assert attempts(page) == 2
    wait_value(page, key, "card-recommend-all", "-0.33", timeout=60_000)
    wait_until(lambda: site.subscriptions() == 2.0, 60, what="subscribed again")
    wait_until(
        lambda: "FX_IDC:USDJPY" in requested_tickers(standin, since), 60, what="polled again"
    )
    assert watched.sockets == [watched.sockets[0]] * 2
    watched.assert_clean()
    witness.assert_clean()


def test_a_bad_token_shows_a_clear_message_and_does_not_retry(site: Site, open_page: Any) -> None:
    watched = open_page()
    page = watched.page
    page.goto(f"{site.url}/#token=not-a-token")
    fatal = page.get_by_test_id("fatal")
    fatal.wait_for(state="visible", timeout=60_000)
    assert "token invalid or expired — get a new link from the bot" in fatal.inner_text().lower()
    assert fatal.get_attribute("data-code") == "4401"
    assert_gave_up(page)
    assert page.get_by_test_id("token-input").is_visible()
    assert page.evaluate("sessionStorage.getItem('quartsig.token')") is None
    screenshot(page, "board-fatal.png")
    assert len(watched.sockets) == 1

    # pasting a good token in the field connects
    page.fill('[data-testid="token-input"]', site.token)
    page.click('[data-testid="token-submit"]')
    wait_state(page, "open", timeout=60_000)
    assert fatal.is_hidden()
    assert attempts(page) == 2

    # a disabled account: its open connection is closed 4403 by the server's next check (a
    # reload raced that close: the close clears the stored token, and a reload after it had
    # none to connect with), the fatal message shows, and nothing retries
    quartsig_cli(site.env, "account", "disable", TG_ID)
    fatal.wait_for(state="visible", timeout=60_000)
    assert fatal.get_attribute("data-code") == "4403"
    assert_gave_up(page, attempts=2)
    # and the same token, pasted again, is refused 4403 at once, and not retried either
    page.fill('[data-testid="token-input"]', site.token)
    page.click('[data-testid="token-submit"]')
    page.wait_for_function(
        "() => window.quartsigClient.attempts === 3"
        " && window.quartsigClient.connectionState === 'fatal'", timeout=60_000)
    assert fatal.get_attribute("data-code") == "4403"
    assert_gave_up(page, attempts=3)
    watched.assert_clean()


def test_a_token_expiring_mid_session_shows_the_token_form_without_retrying(
    tmp_path: Path, standin: Standin, open_page: Any
) -> None:
    """Finding 4 of issue 14: the server closes 4401 when the token runs out; the board stops
    and asks for a new token. The TTL leaves the page ample time to connect first."""
    env = quartsig_env(tmp_path / "data", standin.url, QUARTSIG_TOKEN_TTL="30")
    quartsig_cli(env, "account", "add", TG_ID)
    with QuartsigServer.start(env, tmp_path) as server:
        token = quartsig_cli(env, "token", "issue", TG_ID).strip()
        watched = open_page()
        page = watched.page
        page.goto(f"{server.url}/#token={token}")
        wait_state(page, "open")
        fatal = page.get_by_test_id("fatal")
        fatal.wait_for(state="visible", timeout=90_000)
        assert fatal.get_attribute("data-code") == "4401"
        assert "token expired" in page.get_by_test_id("fatal-detail").inner_text()
        assert page.get_by_test_id("token-input").is_visible()
        assert_gave_up(page)
        assert len(watched.sockets) == 1
        watched.assert_clean()


def test_a_tab_over_the_accounts_connection_cap_says_so_and_gets_in_when_another_closes(
    tmp_path: Path, standin: Standin, open_page: Any
) -> None:
    """A 4429 is not fatal: the board says why it waits and reconnects with backoff."""
    env = quartsig_env(tmp_path / "data", standin.url,
                       QUARTSIG_MAX_CONNECTIONS_PER_ACCOUNT="1")
    quartsig_cli(env, "account", "add", TG_ID)
    with QuartsigServer.start(env, tmp_path) as server:
        token = quartsig_cli(env, "token", "issue", TG_ID).strip()
        first = open_page()
        first.page.goto(f"{server.url}/#token={token}")
        wait_state(first.page, "open")
        second = open_page()
        page = second.page
        page.goto(f"{server.url}/#token={token}")
        # one look at the element: the next attempt (0.05-0.5 s later) changes it again
        page.wait_for_function(
            """() => {
                const el = document.querySelector('[data-testid="connection-state"]');
                return el.dataset.closeCode === "4429"
                    && el.textContent.startsWith("Too many open tabs for this account")
                    && el.title === "too many connections for this account";
            }""")
        assert page.get_by_test_id("fatal").is_hidden()
        conn = page.get_by_test_id("connection-state")
        first.page.close()  # its socket closes: the second tab's next attempt gets in
        wait_state(page, "open", timeout=60_000)
        assert conn.get_attribute("data-close-code") == ""
        second.assert_clean(allow=("4429",))


@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_a_server_restart_is_survived(
    site: Site, standin: Standin, open_page: Any, how: str
) -> None:
    ticker = "FX_IDC:AUDUSD" if how == "terminate" else "FX_IDC:NZDUSD"
    standin.set_values(ticker, "1d", {"Recommend.All": 0.25})
    watched = open_page()
    page = watched.page
    page.goto(f"{site.url}/#token={site.token}")
    add_card(page, ticker, "1d")
    key = f"full|{ticker}|1d"
    wait_value(page, key, "card-recommend-all", "0.25")

    if how == "terminate":
        site.server.stop()
    else:
        site.server.kill()
    page.wait_for_function("() => window.quartsigClient.connectionState !== 'open'", timeout=15_000)
    standin.set_values(ticker, "1d", {"Recommend.All": -0.75})
    # a couple of failed attempts while it is down
    page.wait_for_function("() => window.quartsigClient.attempts >= 3", timeout=60_000)
    site.server.launch()
    wait_value(page, key, "card-recommend-all", "-0.75", timeout=40_000)
    wait_state(page, "open", timeout=60_000)
    assert page.locator(card_selector(key)).get_by_test_id("card-rec-all").inner_text() == (
        "Strong sell"
    )
    assert attempts(page) >= 2
    assert attempts(page) <= 12, "backoff, not a storm"
    watched.assert_clean(allow=("WebSocket connection to",))


def test_an_upstream_outage_is_marked_on_the_cards(
    site: Site, standin: Standin, open_page: Any
) -> None:
    standin.set_values("FX_IDC:USDCHF", "30m", {"Recommend.All": -0.3})
    watched = open_page()
    page = watched.page
    page.goto(f"{site.url}/#token={site.token}")
    add_card(page, "USDCHF", "30m", "summary")
    key = "summary|FX_IDC:USDCHF|30m"
    wait_value(page, key, "card-recommend-all", "-0.3")
    badge = page.locator(card_selector(key)).get_by_test_id("status")
    assert badge.is_hidden()

    standin.add_faults({"kind": "status", "status": 503, "sticky": True})
    try:
        badge.wait_for(state="visible", timeout=60_000)
        assert badge.get_attribute("data-status") in {"degraded", "down"}
        assert "Upstream" in badge.inner_text()
        # the last data stays on the card
        value = page.locator(card_selector(key)).get_by_test_id("card-recommend-all")
        assert value.get_attribute("data-value") == "-0.3"
        screenshot(page, "board-upstream-down.png")
    finally:
        standin.clear_faults()
    badge.wait_for(state="hidden", timeout=60_000)
    watched.assert_clean()
