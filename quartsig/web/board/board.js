// The quartsig board: cards of live TradingView technicals, fed by QuartsigClient.
import { QuartsigClient, STATES, keyOf } from "./quartsig.js";

const CARDS_STORAGE = "quartsig.cards";
const TOKEN_STORAGE = "quartsig.token";
const SVG = "http://www.w3.org/2000/svg";

// [action name (act.<name>), value column, short label, full name]
const OSCILLATORS = [
  ["RSI", "RSI", "RSI (14)", "Relative Strength Index (14)"],
  ["STOCH.K", "Stoch.K", "Stoch %K (14, 3, 3)", "Stochastic %K (14, 3, 3)"],
  ["CCI", "CCI20", "CCI (20)", "Commodity Channel Index (20)"],
  ["ADX", "ADX", "ADX (14)", "Average Directional Index (14)"],
  ["AO", "AO", "Awesome Osc.", "Awesome Oscillator"],
  ["Mom", "Mom", "Momentum (10)", "Momentum (10)"],
  ["MACD", "MACD.macd", "MACD (12, 26)", "MACD Level (12, 26)"],
  ["Stoch.RSI", "Stoch.RSI.K", "Stoch RSI (3, 3, 14, 14)", "Stochastic RSI Fast (3, 3, 14, 14)"],
  ["W%R", "W.R", "Williams %R (14)", "Williams Percent Range (14)"],
  ["BBP", "BBPower", "Bull Bear Power", "Bull Bear Power"],
  ["UO", "UO", "Ultimate Osc. (7, 14, 28)", "Ultimate Oscillator (7, 14, 28)"],
];
const MOVING_AVERAGES = [
  ...[10, 20, 30, 50, 100, 200].flatMap((n) => [
    [`EMA${n}`, `EMA${n}`, `EMA (${n})`, `Exponential Moving Average (${n})`],
    [`SMA${n}`, `SMA${n}`, `SMA (${n})`, `Simple Moving Average (${n})`],
  ]),
  ["Ichimoku", "Ichimoku.BLine", "Ichimoku BL (9, 26, 52, 26)", "Ichimoku Base Line (9, 26, 52, 26)"],
  ["VWMA", "VWMA", "VWMA (20)", "Volume Weighted Moving Average (20)"],
  ["HullMA", "HullMA9", "Hull MA (9)", "Hull Moving Average (9)"],
];
const GAUGES = {
  all: { title: "Summary", rating: "Recommend.All", label: "rec.all", counts: null },
  other: { title: "Oscillators", rating: "Recommend.Other", label: "rec.other", counts: "osc" },
  ma: { title: "Moving averages", rating: "Recommend.MA", label: "rec.ma", counts: "ma" },
};
const LABELS = {
  STRONG_SELL: "Strong sell",
  SELL: "Sell",
  NEUTRAL: "Neutral",
  BUY: "Buy",
  STRONG_BUY: "Strong buy",
};
// rating boundaries of the labels (docs: recommendation rules)
const SEGMENTS = [
  [-1, -0.5, "strong-sell"],
  [-0.5, -0.1, "sell"],
  [-0.1, 0.1, "neutral"],
  [0.1, 0.5, "buy"],
  [0.5, 1, "strong-buy"],
];
const CONNECTION_TEXT = {
  [STATES.IDLE]: "Not connected",
  [STATES.CONNECTING]: "Connecting…",
  [STATES.OPEN]: "Live",
  [STATES.WAITING]: "Reconnecting…",
  [STATES.HIDDEN]: "Paused (tab hidden)",
  [STATES.STOPPED]: "Disconnected",
  [STATES.FATAL]: "Token rejected",
};
/** Why the board waits to reconnect, for the closes a person can do something about. */
const WAIT_TEXT = {
  4429: "Too many open tabs for this account (close one)",
  1013: "Server busy",
  1001: "Server restarting",
};
const ERROR_TEXT = {
  bad_symbol: "Not a valid symbol (use EXCHANGE:TICKER, e.g. BINANCE:BTCUSDT)",
  unknown_symbol: "TradingView does not know this symbol",
  bad_timeframe: "Unsupported timeframe",
  bad_profile: "Unknown profile",
  too_many_subscriptions: "Too many cards on this connection",
  rate_limited: "Too many requests; retrying",
};

const $ = (selector, root = document) => root.querySelector(selector);
const bigNumber = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
const midNumber = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 6 });
const smallNumber = new Intl.NumberFormat("en-US", { maximumFractionDigits: 6 });

function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  const abs = Math.abs(value);
  if (abs >= 10000) return bigNumber.format(value);
  if (abs >= 1) return midNumber.format(value);
  return smallNumber.format(value);
}

function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** The bot's link is Telegram's (https), or the demo's chat page on this machine
 * (`quartsig serve --demo --bot`): never another page the server could be made to name. */
function botLinkAllowed(url) {
  if (url.protocol === "https:") return true;
  return url.protocol === "http:" && ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
}

function labelClass(label) {
  return label ? label.toLowerCase().replace("_", "-") : "none";
}

// ------------------------------------------------------------------ token

function takeToken() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fromFragment = params.get("token");
  if (fromFragment) {
    sessionStorage.setItem(TOKEN_STORAGE, fromFragment);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    return fromFragment;
  }
  return sessionStorage.getItem(TOKEN_STORAGE);
}

// ------------------------------------------------------------------ gauge

function point(value, radius) {
  const angle = Math.PI * (1 - (value + 1) / 2);
  return [100 + radius * Math.cos(angle), 100 - radius * Math.sin(angle)];
}

function svg(name, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

function buildGauge(box, name, profile) {
  const spec = GAUGES[name];
  box.replaceChildren();
  const caption = document.createElement("figcaption");
  caption.textContent = spec.title;
  const chart = svg("svg", { viewBox: "0 0 200 118", class: "gauge", role: "img", "aria-hidden": "true" });
  for (const [from, to, cls] of SEGMENTS) {
    const [x1, y1] = point(from + 0.015, 80);
    const [x2, y2] = point(to - 0.015, 80);
    svg("path", { d: `M ${x1.toFixed(2)} ${y1.toFixed(2)} A 80 80 0 0 1 ${x2.toFixed(2)} ${y2.toFixed(2)}`, class: `arc arc-${cls}` }, chart);
  }
  svg("text", { x: 12, y: 116, class: "gauge-end", "text-anchor": "start" }, chart).textContent = "Strong sell";
  svg("text", { x: 188, y: 116, class: "gauge-end", "text-anchor": "end" }, chart).textContent = "Strong buy";
  svg("text", { x: 100, y: 12, class: "gauge-end", "text-anchor": "middle" }, chart).textContent = "Neutral";
  const needle = svg("g", { class: "needle" }, chart);
  svg("line", { x1: 100, y1: 100, x2: 32, y2: 100, class: "needle-line" }, needle);
  svg("circle", { cx: 100, cy: 100, r: 6, class: "needle-hub" }, chart);

  const label = document.createElement("div");
  label.className = "gauge-label rec-none";
  label.dataset.testid = `card-rec-${name}`;
  label.dataset.field = spec.label;
  label.textContent = "—";
  const number = document.createElement("div");
  number.className = "gauge-value";
  number.dataset.testid = `card-recommend-${name}`;
  number.dataset.field = spec.rating;
  number.textContent = "—";
  box.append(caption, chart, label, number);

  if (profile === "full") {
    const counts = document.createElement("dl");
    counts.className = "counts";
    for (const kind of ["sell", "neutral", "buy"]) {
      const wrap = document.createElement("div");
      wrap.className = `count count-${kind}`;
      const dt = document.createElement("dt");
      dt.textContent = kind[0].toUpperCase() + kind.slice(1);
      const dd = document.createElement("dd");
      dd.dataset.testid = `count-${name}-${kind}`;
      if (spec.counts) dd.dataset.field = `${spec.counts}.${kind}`;
      else dd.dataset.fields = `osc.${kind} ma.${kind}`;
      dd.textContent = "—";
      wrap.append(dt, dd);
      counts.append(wrap);
    }
    box.append(counts);
  }
  return { needle, label, number };
}

function setGauge(box, name, data) {
  const spec = GAUGES[name];
  const rating = data[spec.rating];
  const label = data[spec.label];
  const needle = $(".needle", box);
  const valid = typeof rating === "number" && rating >= -1 && rating <= 1;
  needle.classList.toggle("no-value", !valid);
  if (valid) needle.style.transform = `rotate(${((rating + 1) / 2) * 180}deg)`;
  const labelEl = $(".gauge-label", box);
  labelEl.textContent = LABELS[label] ?? "—";
  setClass(labelEl, "rec-", `rec-${labelClass(label)}`);
  labelEl.dataset.value = label ?? "";
  const numberEl = $(".gauge-value", box);
  numberEl.textContent = valid ? rating.toFixed(2) : "—";
  numberEl.dataset.value = typeof rating === "number" ? String(rating) : "";
  for (const kind of ["sell", "neutral", "buy"]) {
    const dd = $(`[data-testid="count-${name}-${kind}"]`, box);
    if (!dd) continue;
    let count;
    if (spec.counts) count = data[`${spec.counts}.${kind}`];
    else {
      const osc = data[`osc.${kind}`];
      const ma = data[`ma.${kind}`];
      count = typeof osc === "number" || typeof ma === "number" ? (osc ?? 0) + (ma ?? 0) : null;
    }
    dd.textContent = typeof count === "number" ? String(count) : "—";
    dd.dataset.value = typeof count === "number" ? String(count) : "";
  }
}

// ------------------------------------------------------------------ tables

function buildTable(table, rows) {
  const body = $("tbody", table);
  body.replaceChildren();
  for (const [name, column, label, title] of rows) {
    const tr = document.createElement("tr");
    tr.dataset.indicator = name;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = label;
    th.title = title;
    const value = document.createElement("td");
    value.className = "num";
    value.dataset.field = column;
    value.dataset.testid = `value-${name}`;
    value.textContent = "—";
    const action = document.createElement("td");
    action.className = "act act-none";
    action.dataset.field = `act.${name}`;
    action.dataset.testid = `act-${name}`;
    action.textContent = "—";
    tr.append(th, value, action);
    body.append(tr);
  }
}

function setTable(table, rows, data) {
  for (const [name, column] of rows) {
    const tr = $(`tr[data-indicator="${CSS.escape(name)}"]`, table);
    const value = data[column];
    const action = data[`act.${name}`];
    const valueCell = tr.children[1];
    valueCell.textContent = formatNumber(value);
    valueCell.dataset.value = typeof value === "number" ? String(value) : "";
    const actionCell = tr.children[2];
    actionCell.textContent = action ? action[0] + action.slice(1).toLowerCase() : "—";
    setClass(actionCell, "act-", `act-${action ? action.toLowerCase() : "none"}`);
    actionCell.dataset.value = action ?? "";
  }
}

// ------------------------------------------------------------------ board

class Board {
  constructor() {
    this.cards = [];
    this.template = $("#card-template");
    this.container = $('[data-testid="cards"]');
    this.connEl = $('[data-testid="connection-state"]');
    this.upstreamEl = $('[data-testid="upstream"]');
    this.fatalEl = $('[data-testid="fatal"]');
    this.tokenPanel = $('[data-testid="token-panel"]');
    this.formMessage = $('[data-testid="form-message"]');
    this.countdown = null;

    const token = takeToken();
    this.client = new QuartsigClient({ token });
    window.quartsigClient = this.client;
    window.quartsigBoard = this;
    Object.defineProperty(window, "quartsigAttempts", { get: () => this.client.attempts });
    this.listen();
    this.restore();
    if (token) this.client.connect();
    else this.showTokenPanel(true);
    this.renderConnection();
    this.bot = null;
    this.loadBot(token);
  }

  // ---- the bot: "Get a new link from @<bot>" (GET /bot.json; nulls without a bot)

  async loadBot(token) {
    try {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const answer = await fetch("/bot.json", { headers, cache: "no-store" });
      if (!answer.ok) return;
      const bot = await answer.json();
      if (!bot.username || !bot.link || !botLinkAllowed(new URL(bot.link))) return;
      this.bot = bot;
      document.body.dataset.bot = bot.username;
      for (const link of document.querySelectorAll(".bot-link")) {
        link.href = bot.link; // from the server: the board names no other origin itself
        link.textContent = `Get a new link from @${bot.username}`;
        link.hidden = false;
      }
      const notice = $('[data-testid="unreachable"]');
      notice.hidden = !bot.unreachable;
      notice.textContent = bot.unreachable
        ? `Telegram cannot reach you: alerts are paused until you write to @${bot.username} again.`
        : "";
    } catch {
      // No bot link then: the token form still works.
    }
  }

  listen() {
    const c = this.client;
    c.addEventListener("state", () => this.renderConnection());
    c.addEventListener("change", (e) => this.onChange(e.detail));
    c.addEventListener("status", () => this.renderUpstream());
    c.addEventListener("error", (e) => this.onError(e.detail));
    c.addEventListener("subscribed", (e) => this.onSubscribed(e.detail));
    c.addEventListener("fatal", (e) => this.onFatal(e.detail));
    c.addEventListener("authed", () => this.showFatal(null));

    $('[data-testid="add-form"]').addEventListener("submit", (e) => {
      e.preventDefault();
      const form = e.currentTarget;
      const symbol = form.elements.symbol.value.trim().toUpperCase();
      if (!symbol) return;
      this.add(symbol, form.elements.tf.value, form.elements.profile.value);
      form.elements.symbol.value = "";
    });
    $('[data-testid="token-form"]').addEventListener("submit", (e) => {
      e.preventDefault();
      const input = e.currentTarget.elements.token;
      const token = input.value.trim();
      if (!token) return;
      input.value = "";
      sessionStorage.setItem(TOKEN_STORAGE, token);
      this.showFatal(null);
      this.showTokenPanel(false);
      this.client.setToken(token);
      this.client.connect();
      this.loadBot(token);
    });
  }

  // ---- cards

  restore() {
    let saved = [];
    try {
      saved = JSON.parse(localStorage.getItem(CARDS_STORAGE) ?? "[]");
    } catch {
      saved = [];
    }
    if (!Array.isArray(saved)) saved = [];
    for (const item of saved) {
      if (item && typeof item.symbol === "string" && typeof item.tf === "string") {
        this.add(item.symbol, item.tf, typeof item.profile === "string" ? item.profile : "full", false);
      }
    }
    this.renderEmpty();
  }

  save() {
    const list = this.cards.map(({ symbol, tf, profile }) => ({ symbol, tf, profile }));
    localStorage.setItem(CARDS_STORAGE, JSON.stringify(list));
  }

  findDuplicate(symbol, tf, profile, except = null) {
    const key = keyOf(profile, symbol, tf);
    return this.cards.find((card) => card !== except && (card.key === key || keyOf(card.profile, card.symbol, card.tf) === key));
  }

  add(symbol, tf, profile, persist = true) {
    const existing = this.findDuplicate(symbol, tf, profile);
    if (existing) {
      this.message(`${existing.symbol} ${tf} (${profile}) is already on the board.`);
      flash(existing.el);
      return existing;
    }
    this.message(null);
    const card = { symbol, tf, profile, key: null, el: null, error: null };
    card.el = this.buildCard(card);
    this.cards.push(card);
    this.container.append(card.el);
    if (persist) this.save();
    this.renderEmpty();
    this.client.subscribe(symbol, tf, profile).then(
      (sub) => this.confirm(card, sub),
      (error) => this.showCardError(card, error.code, error.message),
    );
    return card;
  }

  confirm(card, sub) {
    if (!this.cards.includes(card)) return;
    const twin = this.cards.find((other) => other !== card && other.key === sub.key);
    if (twin) {
      // two spellings of one symbol: keep the first card
      this.removeCard(card, false);
      flash(twin.el);
      return;
    }
    card.key = sub.key;
    card.symbol = sub.symbol;
    card.el.dataset.key = sub.key;
    card.el.dataset.symbol = sub.symbol;
    $('[data-testid="card-symbol"]', card.el).textContent = sub.symbol;
    this.showCardError(card, null);
    this.save();
    const data = this.client.state.get(sub.key);
    if (data) this.renderCard(card, data, [], false);
  }

  removeCard(card, unsubscribe = true) {
    this.cards = this.cards.filter((other) => other !== card);
    card.el.remove();
    if (unsubscribe && !this.cards.some((other) => other.key && other.key === card.key)) {
      this.client.unsubscribe(card.symbol, card.tf, card.profile);
    }
    this.save();
    this.renderEmpty();
  }

  buildCard(card) {
    const el = this.template.content.firstElementChild.cloneNode(true);
    el.dataset.symbol = card.symbol;
    el.dataset.tf = card.tf;
    el.dataset.profile = card.profile;
    el.classList.add(`profile-${card.profile.replace(/[^a-z0-9_-]/gi, "")}`);
    $('[data-testid="card-symbol"]', el).textContent = card.symbol;
    $('[data-testid="card-tf"]', el).textContent = card.tf;
    $('[data-testid="card-profile"]', el).textContent = card.profile;
    $('[data-testid="card-remove"]', el).addEventListener("click", () => this.removeCard(card));
    const full = card.profile === "full";
    for (const box of el.querySelectorAll(".gauge-box")) {
      const name = box.dataset.gauge;
      if (name === "all" || full) buildGauge(box, name, card.profile);
      else box.remove();
    }
    if (full) {
      buildTable($('[data-testid="table-osc"]', el), OSCILLATORS);
      buildTable($('[data-testid="table-ma"]', el), MOVING_AVERAGES);
    } else {
      $(".tables", el).remove();
    }
    if (card.profile !== "full" && card.profile !== "summary") {
      const raw = document.createElement("dl");
      raw.className = "raw";
      raw.dataset.testid = "card-raw";
      $(".gauges", el).after(raw);
    }
    el.addEventListener("animationend", (e) => e.target.classList.remove("flash"));
    this.renderStatus(el);
    el.classList.toggle("stale", this.client.connectionState !== STATES.OPEN);
    return el;
  }

  renderCard(card, data, changed, highlight) {
    const el = card.el;
    for (const box of el.querySelectorAll(".gauge-box")) setGauge(box, box.dataset.gauge, data);
    if (card.profile === "full") {
      setTable($('[data-testid="table-osc"]', el), OSCILLATORS, data);
      setTable($('[data-testid="table-ma"]', el), MOVING_AVERAGES, data);
    }
    const raw = $('[data-testid="card-raw"]', el);
    if (raw) {
      raw.replaceChildren();
      for (const [name, value] of Object.entries(data)) {
        const dt = document.createElement("dt");
        dt.textContent = name;
        const dd = document.createElement("dd");
        dd.dataset.field = name;
        dd.textContent = typeof value === "number" ? formatNumber(value) : String(value ?? "—");
        raw.append(dt, dd);
      }
    }
    const meta = this.client.meta.get(card.key);
    const updated = $('[data-testid="card-updated"]', el);
    const ts = meta?.ts ?? meta?.received;
    if (ts) {
      updated.textContent = `Updated ${formatTime(ts)}`;
      updated.dataset.ts = String(ts);
      updated.title = new Date(ts).toISOString();
    }
    el.dataset.loaded = "true";
    if (highlight) {
      for (const name of changed) {
        for (const target of el.querySelectorAll(`[data-field="${CSS.escape(name)}"]`)) flash(target);
        for (const target of el.querySelectorAll(`[data-fields~="${CSS.escape(name)}"]`)) flash(target);
      }
    }
  }

  showCardError(card, code, message = "") {
    card.error = code;
    const box = $('[data-testid="card-error"]', card.el);
    if (!code) {
      box.hidden = true;
      box.textContent = "";
      delete card.el.dataset.error;
      return;
    }
    card.el.dataset.error = code;
    box.hidden = false;
    box.textContent = `${ERROR_TEXT[code] ?? "Error"}${message ? `: ${message}` : ""}`;
  }

  // ---- client events

  onChange({ key, data, changed, kind }) {
    for (const card of this.cards) {
      if (card.key === key) {
        if (card.error) this.showCardError(card, null);
        const first = card.el.dataset.loaded !== "true";
        this.renderCard(card, data, changed, !first && (kind === "update" || changed.length > 0));
      }
    }
  }

  onSubscribed({ key }) {
    for (const card of this.cards) if (card.key === key && card.error) this.showCardError(card, null);
  }

  onError(detail) {
    const card =
      (detail.key && this.cards.find((c) => c.key === detail.key)) ||
      (detail.request &&
        this.cards.find(
          (c) =>
            c.profile === detail.request.profile &&
            c.tf === detail.request.tf &&
            c.symbol.toUpperCase() === String(detail.request.symbol).toUpperCase(),
        ));
    if (card) {
      if (detail.code !== "rate_limited") this.showCardError(card, detail.code, detail.message);
    } else if (detail.code === "no_token") {
      this.showTokenPanel(true);
    } else if (detail.code && detail.code !== "rate_limited") {
      this.message(`${ERROR_TEXT[detail.code] ?? detail.code}${detail.message ? `: ${detail.message}` : ""}`);
    }
  }

  onFatal({ code, reason }) {
    sessionStorage.removeItem(TOKEN_STORAGE);
    this.showFatal({ code, reason });
    this.showTokenPanel(true);
  }

  // ---- chrome

  showFatal(info) {
    this.fatalEl.hidden = !info;
    document.body.classList.toggle("is-fatal", Boolean(info));
    if (info) {
      this.fatalEl.dataset.code = String(info.code);
      const why = info.code === 4403 ? "the account is unknown or disabled" : info.reason || "rejected";
      $('[data-testid="fatal-detail"]', this.fatalEl).textContent = `(${info.code}: ${why})`;
    }
  }

  showTokenPanel(show) {
    this.tokenPanel.hidden = !show;
  }

  message(text) {
    this.formMessage.hidden = !text;
    this.formMessage.textContent = text ?? "";
  }

  renderEmpty() {
    $('[data-testid="empty"]').hidden = this.cards.length > 0;
  }

  renderConnection() {
    const c = this.client;
    const state = c.connectionState;
    this.connEl.dataset.state = state;
    this.connEl.dataset.attempts = String(c.attempts);
    clearInterval(this.countdown);
    this.countdown = null;
    let text = CONNECTION_TEXT[state] ?? state;
    if (state === STATES.IDLE && !c.token) text = "No token";
    if (state === STATES.STOPPED && c.lastClose) text = `Disconnected (${c.lastClose.code})`;
    this.connEl.textContent = text;
    const why = state === STATES.WAITING && c.lastClose ? WAIT_TEXT[c.lastClose.code] : undefined;
    this.connEl.dataset.closeCode = why ? String(c.lastClose.code) : "";
    this.connEl.title = why ? c.lastClose.reason : "";
    if (why) text = `${why}: reconnecting…`;
    if (state === STATES.WAITING && c.nextAttemptAt) {
      const tick = () => {
        const left = Math.max(0, Math.ceil((c.nextAttemptAt - Date.now()) / 1000));
        const again = left > 0 ? `reconnecting in ${left}s…` : "reconnecting…";
        this.connEl.textContent = why ? `${why}: ${again}` : again[0].toUpperCase() + again.slice(1);
      };
      tick();
      this.countdown = setInterval(tick, 1000);
    }
    document.body.dataset.connection = state;
    for (const card of this.cards) card.el.classList.toggle("stale", state !== STATES.OPEN);
  }

  renderUpstream() {
    const { upstream, reason } = this.client.upstream;
    this.upstreamEl.dataset.upstream = upstream;
    this.upstreamEl.hidden = upstream === "ok";
    this.upstreamEl.textContent = upstream === "ok" ? "" : `Upstream ${upstream}`;
    this.upstreamEl.title = reason || "";
    for (const card of this.cards) this.renderStatus(card.el);
  }

  renderStatus(el) {
    const { upstream, reason } = this.client.upstream;
    const badge = $('[data-testid="status"]', el);
    el.dataset.status = upstream;
    badge.hidden = upstream === "ok";
    badge.dataset.status = upstream;
    badge.className = `badge status-badge status-${upstream}`;
    badge.textContent =
      upstream === "down"
        ? `Upstream down — showing last data${reason ? ` (${reason})` : ""}`
        : upstream === "degraded"
          ? `Upstream degraded — data may be late${reason ? ` (${reason})` : ""}`
          : "";
  }
}

// Swap the class starting with `prefix` for `name`, leaving the others (e.g. `flash`) alone.
function setClass(el, prefix, name) {
  for (const cls of [...el.classList]) if (cls.startsWith(prefix) && cls !== name) el.classList.remove(cls);
  el.classList.add(name);
}

function flash(el) {
  el.classList.remove("flash");
  void el.getBoundingClientRect(); // restart the animation
  el.classList.add("flash");
}

new Board();
