"""The board: its route and static files (Quart's test client), and the JS client's logic (Node).

The client module is exercised under Node (from PATH, or the one bundled with Playwright) with a
fake WebSocket and document; the real browser against a real server is ``tests/test_browser.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from quart import Quart

from quartsig.app import create_app
from quartsig.config import Settings
from quartsig.web import board

BOARD_DIR = Path(board.__file__).parent / "board"
FILES = ("index.html", "board.js", "quartsig.js", "board.css", "favicon.svg")


@pytest.fixture
def app(tmp_path: Path) -> Quart:
    settings = Settings.from_env(
        {}, data_dir=tmp_path / "data", secret_keys=(Fernet.generate_key().decode(),)
    )
    # The board as create_app wires it, nothing added here: a factory that stops registering
    # the blueprint fails every route test below.
    return create_app(settings, components=[])


# ---------------------------------------------------------------------------------- route


async def test_index_is_the_board_with_strict_headers(app: Quart) -> None:
    response = await app.test_client().get("/")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    body = await response.get_data(as_text=True)
    assert '<script type="module" src="/board/board.js"></script>' in body
    csp = response.headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]  # the board's own /ws only (#14)
    assert directives["script-src"] == ["'self'"]
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["ETag"]


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("board.js", "text/javascript; charset=utf-8"),
        ("quartsig.js", "text/javascript; charset=utf-8"),
        ("board.css", "text/css; charset=utf-8"),
        ("index.html", "text/html; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
async def test_static_files_have_proper_types(app: Quart, name: str, content_type: str) -> None:
    response = await app.test_client().get(f"/board/{name}")
    assert response.status_code == 200
    assert response.content_type == content_type
    assert response.headers["Cache-Control"] == "no-cache"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert await response.get_data() == (BOARD_DIR / name).read_bytes()


async def test_a_matching_etag_gets_304(app: Quart) -> None:
    client = app.test_client()
    first = await client.get("/board/quartsig.js")
    etag = first.headers["ETag"]
    again = await client.get("/board/quartsig.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert await again.get_data() == b""
    other = await client.get("/board/quartsig.js", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200


async def test_head_works(app: Quart) -> None:
    response = await app.test_client().head("/board/board.css")
    assert response.status_code == 200
    assert response.content_type == "text/css; charset=utf-8"


@pytest.mark.parametrize(
    "path",
    [
        "/board/missing.js",
        "/board/",
        "/board/../board.py",
        "/board/%2e%2e/board.py",
        "/board/..%2fboard.py",
        "/board/.hidden.js",
        "/board/board",
        "/board/%2e%2e%2fboard.py",
        "/board/..%5cboard.py",
        "/board/nul%00.js",
    ],
)
async def test_anything_else_is_404(app: Quart, path: str) -> None:
    response = await app.test_client().get(path)
    assert response.status_code == 404


async def test_a_path_that_stays_inside_the_folder_is_that_file(app: Quart) -> None:
    response = await app.test_client().get("/board/sub/../board.js")
    assert response.status_code == 200  # what a browser would ask for after normalising
    assert await response.get_data() == (BOARD_DIR / "board.js").read_bytes()


def test_the_files_are_in_the_package() -> None:
    for name in FILES:
        assert (BOARD_DIR / name).is_file()


# ---------------------------------------------------------------------------------- files


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def _tags() -> _Tags:
    parser = _Tags()
    parser.feed((BOARD_DIR / "index.html").read_text())
    return parser


def test_index_has_nothing_inline_that_the_policy_would_block() -> None:
    parser = _tags()
    assert parser.script_text == []
    for tag, attrs in parser.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs.get("type") == "module"
            assert attrs.get("src", "").startswith("/board/")
    assert "<style" not in (BOARD_DIR / "index.html").read_text()


def test_everything_the_page_loads_is_served_from_the_package() -> None:
    for tag, attrs in _tags().tags:
        for attr in ("src", "href"):
            url = attrs.get(attr)
            if url and tag in {"script", "link", "img"}:
                assert url.startswith("/board/"), url
                assert (BOARD_DIR / url.removeprefix("/board/")).is_file(), url
    for name in ("board.js", "quartsig.js"):
        for target in re.findall(
            r"""^import .* from ["'](.+?)["'];""", (BOARD_DIR / name).read_text(), re.M
        ):
            assert target.startswith("./"), target
            assert (BOARD_DIR / target).is_file(), target


def test_no_cdn_or_external_url() -> None:
    for name in FILES:
        text = (BOARD_DIR / name).read_text()
        urls = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text, re.I))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)


def test_the_page_offers_every_timeframe_and_the_builtin_profiles() -> None:
    parser = _tags()
    html = (BOARD_DIR / "index.html").read_text()
    select = html[html.index('data-testid="add-tf"') : html.index("</select>")]
    assert re.findall(r"<option[^>]*>([^<]+)</option>", select) == [
        "1m", "5m", "15m", "30m", "1h", "2h", "4h", "1d", "1W", "1M",
    ]  # fmt: skip
    values = [a.get("value") for t, a in parser.tags if t == "option" and a.get("value")]
    assert values == ["full", "summary"]


def test_the_page_knows_every_indicator_of_the_full_profile() -> None:
    script = (BOARD_DIR / "board.js").read_text()
    oscillators = ["RSI", "STOCH.K", "CCI", "ADX", "AO", "Mom", "MACD", "Stoch.RSI", "W%R", "BBP",
                   "UO"]  # fmt: skip
    values = ["RSI", "Stoch.K", "CCI20", "ADX", "AO", "Mom", "MACD.macd", "Stoch.RSI.K", "W.R",
              "BBPower", "UO"]  # fmt: skip
    for name, column in zip(oscillators, values, strict=True):
        assert f'["{name}", "{column}", ' in script, name
    for name, column in [("Ichimoku", "Ichimoku.BLine"), ("VWMA", "VWMA"), ("HullMA", "HullMA9")]:
        assert f'["{name}", "{column}", ' in script, name


# ---------------------------------------------------------------------------------- the client


def _node() -> str | None:
    """Node from PATH, else the one Playwright's Python package ships for its driver."""
    found = shutil.which("node")
    if found:
        return found
    try:
        from playwright._impl._driver import compute_driver_executable
    except ImportError:
        return None
    bundled = Path(str(compute_driver_executable()[0]))
    return str(bundled) if bundled.is_file() else None


NODE = _node()

HARNESS = r"""
import assert from "node:assert/strict";
const { QuartsigClient, backoffDelay, keyOf, STATES } = await import(process.argv[2]);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(check, what, ms = 2000) {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (check()) return; await sleep(5); }
  throw new Error(`timed out: ${what}`);
}

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url; this.readyState = 0; this.sent = []; this.closedWith = null;
    FakeSocket.all.push(this);
    setTimeout(() => { this.readyState = 1; this.onopen?.({}); }, 1);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code = 1000, reason = "") {
    this.closedWith = { code, reason }; this.readyState = 3;
  }
  // the server's side
  reply(value) { this.onmessage?.({ data: JSON.stringify(value) }); }
  drop(code = 1006, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
  ops() { return this.sent.flatMap((m) => (Array.isArray(m) ? m : [m])); }
  subscribes() { return this.ops().filter((m) => m.op === "subscribe"); }
}
const last = () => FakeSocket.all.at(-1);

class FakeDocument extends EventTarget {
  visibilityState = "visible";
  set(state) { this.visibilityState = state; this.dispatchEvent(new Event("visibilitychange")); }
}

function makeClient(extra = {}) {
  FakeSocket.all = [];
  const document = new FakeDocument();
  const client = new QuartsigClient({
    url: "ws://test/ws", token: "T0K", WebSocket: FakeSocket, document,
    backoffMin: 20, backoffMax: 200, ...extra,
  });
  return { client, document };
}

function events(client, ...types) {
  const seen = [];
  for (const type of types) client.addEventListener(type, (e) => seen.push([type, e.detail]));
  return seen;
}

// Accept the connection and confirm every subscribe in one array frame, as the server would.
async function serve(socket, { snapshot = null } = {}) {
  await until(() => socket.sent.length >= 1, "auth");
  assert.deepEqual(socket.sent[0], { op: "auth", token: "T0K", id: "auth" });
  socket.reply([{ type: "authed", tg_id: 42, id: "auth" }]);
  await sleep(5);
  const frames = [];
  for (const s of socket.subscribes()) {
    const upper = s.symbol.toUpperCase();
    const symbol = upper.includes(":") ? upper : `FX_IDC:${upper}`;
    const target = { symbol, tf: s.tf, profile: s.profile };
    frames.push({ type: "subscribed", ...target, id: s.id });
    if (snapshot) frames.push({ type: "snapshot", ...target, data: snapshot, ts: 1700000000000 });
  }
  if (frames.length) socket.reply(frames);
}

const tests = {
  async subscribe_snapshot_update() {
    const { client } = makeClient();
    const seen = events(client, "open", "authed", "subscribed", "snapshot", "update", "change");
    client.connect();
    const done = client.subscribe("eurusd", "1h", "full");
    await serve(last());
    const sub = await done;
    assert.equal(sub.key, "full|FX_IDC:EURUSD|1h");
    assert.equal(last().subscribes()[0].symbol, "eurusd");
    assert.equal(client.connectionState, STATES.OPEN);
    // a snapshot as a single object frame, then an update in an array frame
    last().reply({ type: "snapshot", symbol: "FX_IDC:EURUSD", tf: "1h", profile: "full",
                   data: { "Recommend.All": 0.2, "rec.all": "BUY", RSI: 55 }, ts: 1 });
    last().reply([{ type: "update", symbol: "FX_IDC:EURUSD", tf: "1h", profile: "full",
                    data: { "Recommend.All": 0.6, "rec.all": "STRONG_BUY" }, ts: 2 }]);
    assert.deepEqual(client.state.get(sub.key),
                     { "Recommend.All": 0.6, "rec.all": "STRONG_BUY", RSI: 55 });
    const changes = seen.filter(([t]) => t === "change").map(([, d]) => d);
    assert.deepEqual(changes.map((c) => c.kind), ["snapshot", "update"]);
    assert.deepEqual(changes[1].changed.sort(), ["Recommend.All", "rec.all"]);
    assert.equal(changes[1].key, sub.key);
    assert.equal(client.meta.get(sub.key).ts, 2);
    assert.deepEqual(seen.map(([t]) => t).slice(0, 3), ["open", "authed", "subscribed"]);
    // subscribing again under either spelling does not send anything
    const before = last().sent.length;
    assert.equal((await client.subscribe("FX_IDC:EURUSD", "1h", "full")).key, sub.key);
    assert.equal((await client.subscribe("EURUSD", "1h", "full")).key, sub.key);
    assert.equal(last().sent.length, before);
    // unsubscribe with the raw spelling sends the normalised one and forgets the state
    client.unsubscribe("eurusd", "1h", "full");
    await until(() => last().ops().some((m) => m.op === "unsubscribe"), "unsubscribe");
    const unsub = last().ops().find((m) => m.op === "unsubscribe");
    assert.equal(unsub.symbol, "FX_IDC:EURUSD");
    assert.equal(client.state.has(sub.key), false);
    // data still in flight for it is ignored
    last().reply({ type: "update", symbol: "FX_IDC:EURUSD", tf: "1h", profile: "full",
                   data: { RSI: 1 }, ts: 3 });
    assert.equal(client.state.has(sub.key), false);
    client.close();
  },

  async reconnects_with_backoff_and_resubscribes() {
    const { client } = makeClient();
    const closes = events(client, "close");
    client.connect();
    client.subscribe("BINANCE:BTCUSDT", "15m", "summary");
    client.subscribe("usdjpy", "1d");
    await serve(last(), { snapshot: { "Recommend.All": 0.1, "rec.all": "NEUTRAL" } });
    assert.equal(client.state.size, 2);
    last().drop(1006);
    assert.equal(client.connectionState, STATES.WAITING);
    assert.equal(closes.at(-1)[1].retry, true);
    assert.ok(closes.at(-1)[1].delay <= 20);
    await until(() => client.attempts === 2, "second attempt");
    // a server shutting down (1001) and "try again later" (1013) are retried too
    last().drop(1001);
    await until(() => client.attempts === 3, "third attempt");
    last().drop(1013);
    await until(() => client.attempts === 4, "fourth attempt");
    await serve(last());
    const symbols = last().subscribes().map((s) => `${s.profile}|${s.symbol}|${s.tf}`).sort();
    assert.deepEqual(symbols, ["full|FX_IDC:USDJPY|1d", "summary|BINANCE:BTCUSDT|15m"]);
    assert.equal(client.connectionState, STATES.OPEN);
    assert.equal(client.state.size, 2, "last data is kept while reconnecting");
    client.close();
    assert.equal(last().closedWith.code, 1000);
    await sleep(60);
    assert.equal(client.attempts, 4, "close() stops for good");
  },

  async fatal_codes_stop_retrying() {
    for (const code of [4401, 4403]) {
      const { client } = makeClient();
      const fatal = events(client, "fatal");
      client.connect();
      await until(() => last().sent.length, "auth");
      last().drop(code, "bad token");
      await sleep(100);
      assert.equal(client.attempts, 1);
      assert.equal(client.connectionState, STATES.FATAL);
      assert.deepEqual(fatal, [["fatal", { code, reason: "bad token" }]]);
      // a new token starts again
      client.setToken("T0K");
      assert.equal(client.attempts, 2);
      client.close();
    }
    for (const code of [1008, 1009]) {
      const { client } = makeClient();
      client.connect();
      await serve(last());
      last().drop(code);
      await sleep(60);
      assert.equal(client.attempts, 1);
      assert.equal(client.connectionState, STATES.STOPPED);
    }
  },

  async hidden_tab_closes_and_visible_reopens() {
    const { client, document } = makeClient();
    client.connect();
    client.subscribe("EURUSD", "1h", "full");
    await serve(last(), { snapshot: { RSI: 50 } });
    const first = last();
    document.set("hidden");
    assert.deepEqual(first.closedWith, { code: 1000, reason: "tab hidden" });
    assert.equal(client.connectionState, STATES.HIDDEN);
    await sleep(60);
    assert.equal(client.attempts, 1, "no reconnect while hidden");
    document.set("visible");
    assert.equal(client.attempts, 2);
    await serve(last());
    assert.deepEqual(last().subscribes().map((s) => s.symbol), ["FX_IDC:EURUSD"]);
    // a drop while hidden waits for the tab to be shown
    document.set("hidden");
    document.set("visible");
    await serve(last());
    last().drop(1006);
    document.set("hidden");
    await sleep(60);
    assert.equal(client.attempts, 3);
    client.close();
  },

  async close_when_hidden_can_be_turned_off() {
    const { client, document } = makeClient({ closeWhenHidden: false });
    client.connect();
    await serve(last());
    document.set("hidden");
    assert.equal(last().closedWith, null);
    assert.equal(client.connectionState, STATES.OPEN);
    client.close();
  },

  async refused_and_dropped_subscriptions() {
    const { client } = makeClient();
    const errors = events(client, "error");
    client.connect();
    const bad = client.subscribe("??", "1h", "full").catch((e) => e);
    const gone = client.subscribe("FX_IDC:NOPE", "1h", "full");
    await until(() => last().sent.length, "auth");
    last().reply({ type: "authed", tg_id: 42 });
    await until(() => last().subscribes().length === 2, "subscribes");
    const [first, second] = last().subscribes();
    last().reply([
      { type: "error", code: "bad_symbol", message: "malformed", id: first.id },
      { type: "subscribed", symbol: "FX_IDC:NOPE", tf: "1h", profile: "full", id: second.id },
    ]);
    const error = await bad;
    assert.equal(error.code, "bad_symbol");
    await gone;
    last().reply({ type: "error", code: "unknown_symbol", message: "no such ticker",
                   symbol: "FX_IDC:NOPE", tf: "1h", profile: "full" });
    assert.deepEqual(errors.map(([, d]) => [d.code, d.key]), [
      ["bad_symbol", null], ["unknown_symbol", "full|FX_IDC:NOPE|1h"],
    ]);
    assert.deepEqual(errors[0][1].request, { symbol: "??", tf: "1h", profile: "full" });
    assert.deepEqual(client.subscriptions(), []);
    last().drop(1006);
    await until(() => client.attempts === 2, "reconnect");
    await serve(last());
    assert.equal(last().subscribes().length, 0, "a dropped key is not resubscribed");
    client.close();
  },

  async many_subscriptions_are_batched_and_paced() {
    const { client } = makeClient({ opsPerSecond: 200, opsBurst: 40 });
    client.connect();
    for (let i = 0; i < 128; i++) client.subscribe(`BINANCE:COIN${i}USDT`, "1h", "full");
    await until(() => last().sent.length, "auth");
    last().reply({ type: "authed", tg_id: 42 });
    await until(() => last().subscribes().length === 128, "all subscribes", 3000);
    const frames = last().sent.slice(1);
    for (const frame of frames) {
      const messages = Array.isArray(frame) ? frame : [frame];
      assert.ok(messages.length <= 64);
      assert.ok(JSON.stringify(frame).length <= 4096);
    }
    assert.ok(frames.length >= 3, `paced into several frames, got ${frames.length}`);
    // rate-limited ops are sent again
    const victim = last().subscribes()[0];
    last().reply({ type: "error", code: "rate_limited", message: "slow down", id: victim.id });
    await until(() => last().subscribes().length === 129, "retry", 3000);
    client.close();
  },

  async backoff_is_full_jitter_within_bounds() {
    const top = (n) => backoffDelay(n, { random: () => 0.999999 });
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 10].map(top),
      [499, 999, 1999, 3999, 7999, 15999, 19999, 19999, 19999]);
    assert.equal(backoffDelay(3, { random: () => 0 }), 50);
    assert.equal(keyOf("full", "FX_IDC:EURUSD", "1h"), "full|FX_IDC:EURUSD|1h");
  },

  async an_expired_token_mid_session_asks_for_a_new_one_once() {
    const { client } = makeClient();
    const seen = events(client, "fatal", "close");
    client.connect();
    client.subscribe("eurusd", "1h", "full");
    await serve(last(), { snapshot: { "Recommend.All": 0.1 } });
    assert.equal(client.connectionState, STATES.OPEN);
    last().drop(4401, "token expired"); // the server's session check, hours after auth
    await sleep(100);
    assert.equal(client.attempts, 1, "no reconnect with the dead token");
    assert.equal(client.connectionState, STATES.FATAL);
    assert.deepEqual(seen.filter(([t]) => t === "fatal"),
                     [["fatal", { code: 4401, reason: "token expired" }]]);
    assert.equal(seen.find(([t]) => t === "close")[1].retry, false);
    client.setToken("T0K"); // the fresh token from the form
    await serve(last());
    assert.equal(client.attempts, 2);
    assert.deepEqual(last().subscribes().map((s) => s.tf), ["1h"], "subscriptions come back");
    client.close();
  },

  async too_many_connections_is_retried_with_backoff() {
    const { client } = makeClient();
    const closes = events(client, "close");
    client.connect();
    await until(() => last().sent.length, "auth");
    last().drop(4429, "too many connections for this account");
    assert.equal(client.connectionState, STATES.WAITING);
    assert.equal(closes.at(-1)[1].retry, true);
    await until(() => client.attempts === 2, "second attempt");
    await serve(last());
    assert.equal(client.connectionState, STATES.OPEN);
    client.close();
  },

  async status_and_ping() {
    const { client } = makeClient();
    const seen = events(client, "status", "pong");
    client.connect();
    await serve(last());
    last().reply([{ type: "status", upstream: "degraded", reason: "429" }]);
    assert.deepEqual(client.upstream, { upstream: "degraded", reason: "429" });
    const rtt = client.ping();
    const ping = last().ops().find((m) => m.op === "ping");
    last().reply({ type: "pong", id: ping.id });
    assert.ok((await rtt) >= 0);
    assert.deepEqual(seen.map(([t]) => t), ["status", "pong"]);
    client.close();
  },
};

const name = process.argv[3];
await tests[name]();
console.log(`ok ${name}`);
process.exit(0);
"""

CLIENT_TESTS = [
    "subscribe_snapshot_update",
    "reconnects_with_backoff_and_resubscribes",
    "fatal_codes_stop_retrying",
    "hidden_tab_closes_and_visible_reopens",
    "close_when_hidden_can_be_turned_off",
    "refused_and_dropped_subscriptions",
    "many_subscriptions_are_batched_and_paced",
    "backoff_is_full_jitter_within_bounds",
    "status_and_ping",
    "an_expired_token_mid_session_asks_for_a_new_one_once",
    "too_many_connections_is_retried_with_backoff",
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("node") / "harness.mjs"
    path.write_text(HARNESS)
    return path


def test_the_harness_lists_every_client_test() -> None:
    assert sorted(re.findall(r"^  async (\w+)\(\) \{$", HARNESS, re.M)) == sorted(CLIENT_TESTS)


@pytest.mark.skipif(NODE is None, reason="neither node nor playwright is installed")
@pytest.mark.parametrize("name", CLIENT_TESTS)
def test_client(harness: Path, name: str) -> None:
    assert NODE is not None
    module = (BOARD_DIR / "quartsig.js").as_uri()
    done = subprocess.run(
        [NODE, str(harness), module, name], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"ok {name}"
