// quartsig browser client: one WebSocket, per-key state, reconnects, visibility handling.
//
// Implements the public contract in docs/protocol.md. No dependencies; import it as an ES module:
//
//   import { QuartsigClient } from "/board/quartsig.js";
//   const client = new QuartsigClient({ token });
//   client.addEventListener("change", (e) => console.log(e.detail.key, e.detail.changed));
//   client.connect();
//   const { key } = await client.subscribe("FX_IDC:EURUSD", "1h", "full");
//
// Events (CustomEvent, payload in `event.detail`):
//   state       {state, previous}               connection state changed (see STATES)
//   open        {attempt}                       the socket opened (auth is sent at once)
//   authed      {tg_id}                         the server accepted the token
//   subscribed  {key, symbol, tf, profile, request}
//   unsubscribed{key, symbol, tf, profile}
//   snapshot    {key, data, changed, ts}        a key's whole data object arrived
//   update      {key, data, changed, ts}        some of a key's values changed (`data` = the delta)
//   change      {key, kind, data, changed, ts}  after either: `data` is the merged state
//   status      {upstream, reason}              upstream health: ok | degraded | down
//   error       {code, message, id, key, request, symbol, tf, profile}
//   close       {code, reason, retry, delay}    the socket closed (retry: will reconnect)
//   fatal       {code, reason}                  4401/4403: stopped; a new token is needed
//                                               (4401 "token expired" also ends a live session)
//   pong        {id, rtt}

export const TIMEFRAMES = ["1m", "5m", "15m", "30m", "1h", "2h", "4h", "1d", "1W", "1M"];

/** Close codes after which a client must not reconnect on its own. Everything else, 4429 (the
 * account's connection cap) included, is retried with full-jitter backoff. */
export const FATAL_CODES = new Set([4401, 4403]);
export const STOP_CODES = new Set([4401, 4403, 1008, 1009]);

/** Connection states, in `client.connectionState`. */
export const STATES = Object.freeze({
  IDLE: "idle", // never connected, or close() was called
  CONNECTING: "connecting", // socket opening / auth sent
  OPEN: "open", // authed
  WAITING: "waiting", // backing off before the next attempt
  HIDDEN: "hidden", // closed because the tab is hidden
  STOPPED: "stopped", // 1008/1009: stopped, will not retry
  FATAL: "fatal", // 4401/4403: stopped, needs a new token
});

const MAX_BATCH = 64; // messages per client frame (protocol)
const MAX_FRAME_CHARS = 3800; // stay under QUARTSIG_MAX_FRAME_BYTES (4096)
const STABLE_MS = 5000; // a connection authed this long resets the backoff

/** The state key of a subscription: `profile|SYMBOL|tf`, with the server's normalised symbol. */
export function keyOf(profile, symbol, tf) {
  return `${profile}|${symbol}|${tf}`;
}

/** Split a key back into its parts. */
export function parseKey(key) {
  const [profile, symbol, tf] = key.split("|");
  return { profile, symbol, tf };
}

/** Full-jitter exponential backoff: a random delay in [0, min(max, min * 2^failures)). */
export function backoffDelay(failures, { min = 500, max = 20000, random = Math.random } = {}) {
  const cap = Math.min(max, min * 2 ** Math.max(0, failures));
  return Math.max(min / 10, Math.floor(random() * cap));
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("QuartsigClient: no `url` given and no location to derive it from");
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws`;
}

// The key of a request as the caller typed it, before the server normalised the symbol.
function requestKey(symbol, tf, profile) {
  return keyOf(profile, String(symbol).trim().toUpperCase(), tf);
}

export class QuartsigClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.url]            ws(s)://host/ws; default: this page's host
   * @param {string} [options.token]          the bearer token, sent in the first frame
   * @param {boolean} [options.closeWhenHidden=true] close on `visibilitychange` hidden
   * @param {number} [options.backoffMin=500]  ms
   * @param {number} [options.backoffMax=20000] ms
   * @param {number} [options.opsPerSecond=15] client-side pacing under the server's 20/s
   * @param {number} [options.opsBurst=30]     and its burst of 40
   */
  constructor(options = {}) {
    super();
    this.url = options.url ?? defaultUrl();
    this.token = options.token ?? null;
    this.closeWhenHidden = options.closeWhenHidden ?? true;
    this.backoffMin = options.backoffMin ?? 500;
    this.backoffMax = options.backoffMax ?? 20000;
    this.opsPerSecond = options.opsPerSecond ?? 15;
    this.opsBurst = options.opsBurst ?? 30;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._random = options.random ?? Math.random;
    this._document = options.document ?? globalThis.document ?? null;

    /** @type {Map<string, object>} key -> the key's current data object */
    this.state = new Map();
    /** @type {Map<string, {ts: number|null, received: number|null}>} key -> when it last changed */
    this.meta = new Map();
    /** Upstream health from the last `status` frame. */
    this.upstream = { upstream: "ok", reason: "" };
    /** Number of WebSocket connection attempts made (tests watch this for retry storms). */
    this.attempts = 0;
    this.connectionState = STATES.IDLE;
    this.tgId = null;
    /** When the next reconnect attempt is due (ms since epoch), while WAITING. */
    this.nextAttemptAt = null;
    this.lastClose = null;

    this._ws = null;
    this._started = false; // connect() called and not close()d
    this._failures = 0;
    this._authedAt = 0;
    this._timer = null;
    this._nextId = 1;
    this._subs = new Map(); // key -> {symbol, tf, profile} confirmed by `subscribed`
    this._wanted = new Map(); // request key -> {symbol, tf, profile, waiters} not yet confirmed
    this._aliases = new Map(); // request key -> key
    this._inflight = new Map(); // message id -> {op, rk?, key?, sentAt}
    this._queue = []; // messages waiting for the pacing bucket
    this._tokens = this.opsBurst;
    this._refilledAt = Date.now();
    this._flushTimer = null;

    this._onVisibility = () => this._visibilityChanged();
    if (this._document && typeof this._document.addEventListener === "function") {
      this._document.addEventListener("visibilitychange", this._onVisibility);
    }
  }

  // ---------------------------------------------------------------- public API

  /** Open the connection (and keep it open, reconnecting as needed). */
  connect() {
    this._started = true;
    if (this.connectionState === STATES.FATAL || this.connectionState === STATES.STOPPED) {
      this._failures = 0;
    }
    if (this._ws) return this;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._isHidden()) {
      this._setState(STATES.HIDDEN);
      return this;
    }
    this._open();
    return this;
  }

  /** Close the connection for good (until connect() is called again). State is kept. */
  close(code = 1000, reason = "client closed") {
    this._started = false;
    clearTimeout(this._timer);
    this._timer = null;
    this.nextAttemptAt = null;
    this._dropSocket(code, reason);
    this._setState(STATES.IDLE);
    return this;
  }

  /** Replace the token (e.g. after `fatal`) and reconnect if connect() was called. */
  setToken(token) {
    this.token = token;
    if (this._ws) this._dropSocket(1000, "new token");
    if (this._started || this.connectionState === STATES.FATAL) {
      this._started = true;
      this._failures = 0;
      clearTimeout(this._timer);
      this._timer = null;
      this._setState(STATES.IDLE);
      this.connect();
    }
  }

  /** Stop listening to the document (call when throwing the client away). */
  dispose() {
    this.close();
    if (this._document && typeof this._document.removeEventListener === "function") {
      this._document.removeEventListener("visibilitychange", this._onVisibility);
    }
  }

  /**
   * Subscribe to (symbol, tf, profile). Kept across reconnects until unsubscribe().
   * Resolves with {key, symbol, tf, profile} once the server confirms (the symbol normalised);
   * rejects with an Error carrying `.code` if the server refuses it.
   */
  subscribe(symbol, tf, profile = "full") {
    const rk = requestKey(symbol, tf, profile);
    const known = this._aliases.get(rk) ?? (this._subs.has(rk) ? rk : null);
    if (known && this._subs.has(known)) {
      return Promise.resolve({ key: known, ...this._subs.get(known) });
    }
    let entry = this._wanted.get(rk);
    if (!entry) {
      entry = { symbol: String(symbol).trim(), tf, profile, waiters: [] };
      this._wanted.set(rk, entry);
      if (this.connectionState === STATES.OPEN) this._sendSubscribe(rk, entry);
    }
    return new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
  }

  /** Forget (symbol, tf, profile); the raw or the normalised symbol both work. */
  unsubscribe(symbol, tf, profile = "full") {
    const rk = requestKey(symbol, tf, profile);
    const pending = this._wanted.get(rk);
    if (pending) {
      this._wanted.delete(rk);
      this._rejectWaiters(pending, Object.assign(new Error("unsubscribed"), { code: "cancelled" }));
    }
    const key = this._aliases.get(rk) ?? (this._subs.has(rk) ? rk : null);
    const target = key ? this._subs.get(key) : pending && !key ? pending : null;
    if (key) this._forget(key);
    if (target && this.connectionState === STATES.OPEN) {
      this._enqueue({
        op: "unsubscribe",
        symbol: target.symbol,
        tf: target.tf,
        profile: target.profile,
        id: this._id("u"),
      });
    }
    return key;
  }

  /** The keys currently held (confirmed by the server). */
  subscriptions() {
    return [...this._subs.keys()];
  }

  /** Send a ping; resolves with the round-trip time in ms. */
  ping() {
    if (this.connectionState !== STATES.OPEN) return Promise.reject(new Error("not connected"));
    const id = this._id("p");
    return new Promise((resolve) => {
      this._inflight.set(id, { op: "ping", sentAt: performance.now(), resolve });
      this._sendNow([{ op: "ping", id }]);
    });
  }

  // ---------------------------------------------------------------- connection

  _open() {
    clearTimeout(this._timer);
    this._timer = null;
    this.nextAttemptAt = null;
    if (!this.token) {
      this._setState(STATES.IDLE);
      this._emit("error", { code: "no_token", message: "no token: open the link from the bot" });
      return;
    }
    this.attempts += 1;
    this._setState(STATES.CONNECTING);
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (error) {
      this._emit("error", { code: "connect_failed", message: String(error) });
      this._scheduleReconnect({ code: 1006, reason: String(error) });
      return;
    }
    this._ws = ws;
    this._inflight.clear();
    this._queue = [];
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._emit("open", { attempt: this.attempts });
      ws.send(JSON.stringify({ op: "auth", token: this.token, id: "auth" }));
    };
    ws.onmessage = (event) => {
      if (ws === this._ws) this._receive(event.data);
    };
    ws.onerror = () => {}; // always followed by close
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._closed(event.code, event.reason);
    };
  }

  _dropSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._flushTimer);
    this._flushTimer = null;
    this._queue = [];
    this._inflight.clear();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
      this._emit("close", { code, reason, retry: false, intentional: true });
    }
  }

  _closed(code, reason) {
    clearTimeout(this._flushTimer);
    this._flushTimer = null;
    this._queue = [];
    this.lastClose = { code, reason };
    if (this._authedAt && Date.now() - this._authedAt >= STABLE_MS) this._failures = 0;
    this._authedAt = 0;
    if (FATAL_CODES.has(code)) {
      this._started = false;
      this.acceptedToken = null;
      this._setState(STATES.FATAL);
      this._emit("close", { code, reason, retry: false });
      this._emit("fatal", { code, reason });
      return;
    }
    if (STOP_CODES.has(code) || !this._started) {
      this._started = false;
      this._setState(STATES.STOPPED);
      this._emit("close", { code, reason, retry: false });
      return;
    }
    this._scheduleReconnect({ code, reason });
  }

  _scheduleReconnect({ code, reason }) {
    if (this._closeWhenHiddenActive() && this._isHidden()) {
      this._setState(STATES.HIDDEN);
      this._emit("close", { code, reason, retry: false, hidden: true });
      return;
    }
    const delay = backoffDelay(this._failures, {
      min: this.backoffMin,
      max: this.backoffMax,
      random: this._random,
    });
    this._failures += 1;
    this.nextAttemptAt = Date.now() + delay;
    this._setState(STATES.WAITING);
    this._emit("close", { code, reason, retry: true, delay });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this._started && !this._ws) this._open();
    }, delay);
  }

  _closeWhenHiddenActive() {
    return this.closeWhenHidden && this._document !== null;
  }

  _isHidden() {
    return this._closeWhenHiddenActive() && this._document.visibilityState === "hidden";
  }

  _visibilityChanged() {
    if (!this._closeWhenHiddenActive() || !this._started) return;
    if (this._isHidden()) {
      clearTimeout(this._timer);
      this._timer = null;
      this.nextAttemptAt = null;
      this._dropSocket(1000, "tab hidden");
      this._setState(STATES.HIDDEN);
    } else if (!this._ws) {
      this._failures = 0;
      this._open();
    }
  }

  _setState(state) {
    if (state === this.connectionState) return;
    const previous = this.connectionState;
    this.connectionState = state;
    this._emit("state", { state, previous });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _id(prefix) {
    return `${prefix}${this._nextId++}`;
  }

  // ---------------------------------------------------------------- sending

  _sendSubscribe(rk, entry) {
    const id = this._id("s");
    this._inflight.set(id, { op: "subscribe", rk });
    this._enqueue({ op: "subscribe", symbol: entry.symbol, tf: entry.tf, profile: entry.profile, id });
  }

  _resubscribeAll() {
    for (const [key, sub] of this._subs) {
      const id = this._id("s");
      this._inflight.set(id, { op: "subscribe", key });
      this._enqueue({ op: "subscribe", symbol: sub.symbol, tf: sub.tf, profile: sub.profile, id });
    }
    for (const [rk, entry] of this._wanted) this._sendSubscribe(rk, entry);
  }

  _enqueue(message) {
    this._queue.push(message);
    this._flush();
  }

  // Send queued ops in frames of at most 64 messages / ~3.8 KB, paced by a token bucket that
  // stays under the server's rate limit (so a reconnect with 128 cards is not refused).
  _flush() {
    if (this._flushTimer || !this._ws || this._ws.readyState !== 1) return;
    const now = Date.now();
    this._tokens = Math.min(
      this.opsBurst,
      this._tokens + ((now - this._refilledAt) / 1000) * this.opsPerSecond,
    );
    this._refilledAt = now;
    while (this._queue.length && this._tokens >= 1) {
      const batch = [];
      let size = 2;
      while (this._queue.length && this._tokens >= 1 && batch.length < MAX_BATCH) {
        const text = JSON.stringify(this._queue[0]);
        if (batch.length && size + text.length + 1 > MAX_FRAME_CHARS) break;
        batch.push(this._queue.shift());
        size += text.length + 1;
        this._tokens -= 1;
      }
      this._sendNow(batch);
    }
    if (this._queue.length) {
      const wait = Math.ceil(((1 - this._tokens) / this.opsPerSecond) * 1000);
      this._flushTimer = setTimeout(() => {
        this._flushTimer = null;
        this._flush();
      }, Math.max(20, wait));
    }
  }

  _sendNow(messages) {
    if (!this._ws || this._ws.readyState !== 1 || !messages.length) return;
    this._ws.send(JSON.stringify(messages.length === 1 ? messages[0] : messages));
  }

  // ---------------------------------------------------------------- receiving

  _receive(text) {
    let value;
    try {
      value = JSON.parse(text);
    } catch {
      this._emit("error", { code: "bad_frame", message: "server sent a frame that is not JSON" });
      return;
    }
    for (const message of Array.isArray(value) ? value : [value]) {
      if (message && typeof message === "object") this._handle(message);
    }
  }

  _handle(message) {
    switch (message.type) {
      case "authed":
        return this._authed(message);
      case "subscribed":
        return this._subscribed(message);
      case "unsubscribed":
        this._inflight.delete(message.id);
        return this._emit("unsubscribed", {
          key: keyOf(message.profile, message.symbol, message.tf),
          symbol: message.symbol,
          tf: message.tf,
          profile: message.profile,
        });
      case "snapshot":
        return this._data(message, true);
      case "update":
        return this._data(message, false);
      case "status":
        this.upstream = { upstream: message.upstream, reason: message.reason ?? "" };
        return this._emit("status", { ...this.upstream });
      case "error":
        return this._error(message);
      case "pong": {
        const ping = this._inflight.get(message.id);
        this._inflight.delete(message.id);
        const rtt = ping?.sentAt !== undefined ? performance.now() - ping.sentAt : null;
        ping?.resolve?.(rtt);
        return this._emit("pong", { id: message.id, rtt });
      }
      default:
        return undefined; // unknown types are ignored (forward compatibility)
    }
  }

  _authed(message) {
    this.tgId = message.tg_id;
    this.acceptedToken = this.token; // what other callers (the alerts API) may present
    this._authedAt = Date.now();
    this._tokens = this.opsBurst;
    this._refilledAt = Date.now();
    this._setState(STATES.OPEN);
    this._emit("authed", { tg_id: message.tg_id });
    this._resubscribeAll();
  }

  _subscribed(message) {
    const key = keyOf(message.profile, message.symbol, message.tf);
    const sub = { symbol: message.symbol, tf: message.tf, profile: message.profile };
    const sent = this._inflight.get(message.id);
    this._inflight.delete(message.id);
    let entry = null;
    let rk = sent?.rk ?? null;
    if (rk) {
      entry = this._wanted.get(rk) ?? null;
      if (!entry && !sent.key) {
        // unsubscribed while the subscribe was in flight: undo it on the server too
        if (!this._subs.has(key)) this._enqueue({ op: "unsubscribe", ...sub, id: this._id("u") });
        return;
      }
      this._wanted.delete(rk);
      this._aliases.set(rk, key);
    } else if (sent?.key && !this._subs.has(sent.key)) {
      return; // a resubscribe for a key dropped meanwhile
    }
    this._subs.set(key, sub);
    const request = entry ? { symbol: entry.symbol, tf: entry.tf, profile: entry.profile } : sub;
    if (entry) for (const waiter of entry.waiters) waiter.resolve({ key, ...sub });
    this._emit("subscribed", { key, ...sub, request });
  }

  _data(message, whole) {
    const key = keyOf(message.profile, message.symbol, message.tf);
    if (!this._subs.has(key)) return; // data for a key dropped meanwhile
    const previous = this.state.get(key);
    const data = message.data ?? {};
    const next = whole ? { ...data } : { ...(previous ?? {}), ...data };
    const changed = [];
    const source = whole ? next : data;
    for (const name of Object.keys(source)) {
      if (!previous || !Object.is(previous[name], source[name])) changed.push(name);
    }
    if (whole && previous) {
      for (const name of Object.keys(previous)) if (!(name in next)) changed.push(name);
    }
    this.state.set(key, next);
    const ts = message.ts ?? null;
    this.meta.set(key, { ts, received: Date.now() });
    const detail = { key, data, changed, ts, symbol: message.symbol, tf: message.tf, profile: message.profile };
    this._emit(whole ? "snapshot" : "update", detail);
    this._emit("change", { ...detail, kind: whole ? "snapshot" : "update", data: next, delta: data });
  }

  _error(message) {
    const sent = message.id !== undefined ? this._inflight.get(message.id) : undefined;
    if (message.id !== undefined) this._inflight.delete(message.id);
    const detail = {
      code: message.code,
      message: message.message,
      id: message.id ?? null,
      key: null,
      request: null,
      symbol: message.symbol ?? null,
      tf: message.tf ?? null,
      profile: message.profile ?? null,
    };
    if (message.symbol && message.tf && message.profile) {
      // the server dropped this subscription (e.g. unknown_symbol): do not resubscribe it
      detail.key = keyOf(message.profile, message.symbol, message.tf);
      detail.request = { symbol: message.symbol, tf: message.tf, profile: message.profile };
      this._forget(detail.key);
    }
    if (sent?.op === "subscribe") {
      const entry = sent.rk ? this._wanted.get(sent.rk) : null;
      const sub = sent.key ? this._subs.get(sent.key) : null;
      if (message.code === "rate_limited") {
        // not obeyed: try again shortly, it stays wanted
        setTimeout(() => {
          if (this.connectionState !== STATES.OPEN) return;
          if (entry && this._wanted.get(sent.rk) === entry) this._sendSubscribe(sent.rk, entry);
          if (sub && this._subs.get(sent.key) === sub) {
            const id = this._id("s");
            this._inflight.set(id, { op: "subscribe", key: sent.key });
            this._enqueue({ op: "subscribe", ...sub, id });
          }
        }, 1000);
      } else {
        if (entry) {
          this._wanted.delete(sent.rk);
          this._rejectWaiters(entry, Object.assign(new Error(message.message), { code: message.code }));
          detail.request = { symbol: entry.symbol, tf: entry.tf, profile: entry.profile };
          detail.requestKey = sent.rk;
        }
        if (sent.key) {
          detail.key = sent.key;
          detail.request = detail.request ?? this._subs.get(sent.key) ?? null;
          this._forget(sent.key);
        }
      }
    }
    this._emit("error", detail);
  }

  _forget(key) {
    this._subs.delete(key);
    this.state.delete(key);
    this.meta.delete(key);
    for (const [rk, target] of this._aliases) if (target === key) this._aliases.delete(rk);
  }

  _rejectWaiters(entry, error) {
    for (const waiter of entry.waiters) waiter.reject(error);
    entry.waiters = [];
  }
}
