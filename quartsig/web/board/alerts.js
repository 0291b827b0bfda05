// Alerts on the board: a bell on each card (create, mute, delete; the card shows its rules and
// their last firing) and a panel with the history. It talks to /api/alerts with the board's
// own token and leaves board.js alone: cards are found as they appear (a MutationObserver),
// and the token is the client's (window.quartsigClient).

const PRESETS = {
  strong_buy: { label: "goes to STRONG_BUY", condition: { kind: "label", to: ["STRONG_BUY"] } },
  buy: { label: "goes to BUY or STRONG_BUY", condition: { kind: "label", to: ["BUY", "STRONG_BUY"] } },
  sell: { label: "goes to SELL or STRONG_SELL", condition: { kind: "label", to: ["SELL", "STRONG_SELL"] } },
  any: { label: "any label change", condition: { kind: "label" } },
};
const FREQUENCIES = {
  every_time: "every time",
  once_per_bar: "once per bar",
  once_per_bar_close: "once per bar close",
  only_once: "only once",
};
const REFRESH_MS = 10000;

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "testid") node.dataset.testid = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function bellIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const icon = document.createElementNS(ns, "svg");
  icon.setAttribute("viewBox", "0 0 24 24");
  icon.setAttribute("width", "18");
  icon.setAttribute("height", "18");
  icon.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1z");
  path.setAttribute("fill", "currentColor");
  icon.append(path);
  return icon;
}

function describe(rule) {
  const c = rule.condition;
  if (c.kind === "cross") return `${c.output} crosses ${c.direction} ${c.level}`;
  const to = c.to && c.to.length ? `goes to ${c.to.join(" or ")}` : "changes";
  return `${c.output} ${to}`;
}

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

class Alerts {
  constructor() {
    this.rules = [];
    this.triggers = [];
    this.panel = $('[data-testid="alerts-panel"]');
    this.list = $('[data-testid="alerts-history"]');
    this.channelList = $('[data-testid="alerts-channels"]');
    this.secretEl = $('[data-testid="channel-secret"]');
    $('[data-testid="channel-form"]').addEventListener("submit", (event) => this.addChannel(event));
    this.timer = null;
    const cards = $('[data-testid="cards"]');
    // New cards (children of the list), and cards confirmed (their data-key set). Nothing
    // this module changes inside a card is observed, so decorating cannot loop.
    const decorate = () => this.decorateAll(false);
    new MutationObserver(decorate).observe(cards, { childList: true });
    new MutationObserver(decorate).observe(cards, {
      subtree: true, attributes: true, attributeFilter: ["data-key"],
    });
    document.addEventListener("visibilitychange", () => this.schedule());
    this.decorateAll(false);
    // The API takes the token only once /ws accepted it: look as soon as it has.
    window.quartsigClient?.addEventListener("authed", () => this.schedule());
    this.schedule();
  }

  get token() {
    // Only a token /ws accepted: a refused or expired one would only earn 401s here.
    const client = window.quartsigClient;
    return client && client.acceptedToken === client.token ? client.token : null;
  }

  async call(method, path, body) {
    if (!this.token) throw new Error("not connected");
    const response = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 204) return null;
    const data = await response.json();
    if (!response.ok) throw Object.assign(new Error(data.message), { code: data.error });
    return data;
  }

  schedule() {
    clearTimeout(this.timer);
    if (document.hidden) return;
    this.refresh().finally(() => {
      this.timer = setTimeout(() => this.schedule(), REFRESH_MS);
    });
  }

  async refresh() {
    if (!this.token) return;
    try {
      const [listed, history] = await Promise.all([
        this.call("GET", "/api/alerts"),
        this.call("GET", "/api/alerts/history?limit=100"),
      ]);
      this.rules = listed.rules;
      this.channels = listed.channels;
      this.triggers = history.triggers;
      this.panel.hidden = false;
      this.renderHistory();
      this.renderChannels();
      this.decorateAll();
    } catch (error) {
      this.panel.hidden = true;
    }
  }

  keyOfCard(card) {
    return [card.dataset.profile, card.dataset.symbol, card.dataset.tf];
  }

  rulesOf(card) {
    const [profile, symbol, tf] = this.keyOfCard(card);
    return this.rules.filter((rule) => rule.keys.some(
      ([p, s, t]) => p === profile && s === symbol && t === tf));
  }

  decorateAll(render = true) {
    for (const card of document.querySelectorAll('[data-testid="card"]')) this.decorate(card, render);
  }

  decorate(card, render) {
    let bell = $('[data-testid="card-bell"]', card);
    if (!bell) {
      bell = el("button", {
        type: "button", class: "card-bell", testid: "card-bell", title: "Alerts",
        "aria-label": "Alerts", "aria-expanded": "false",
        onclick: () => this.toggle(card),
      }, bellIcon());
      $(".card-remove", card).before(bell);
    }
    const rules = this.rulesOf(card);
    bell.classList.toggle("armed", rules.some((rule) => !rule.muted));
    bell.dataset.count = String(rules.length);
    const box = $('[data-testid="card-alerts"]', card);
    if (box && render) this.renderBox(card, box);
  }

  toggle(card) {
    const bell = $('[data-testid="card-bell"]', card);
    let box = $('[data-testid="card-alerts"]', card);
    if (box) {
      box.remove();
      bell.setAttribute("aria-expanded", "false");
      return;
    }
    box = el("section", { class: "card-alerts", testid: "card-alerts" });
    $(".card-head", card).after(box);
    bell.setAttribute("aria-expanded", "true");
    this.renderBox(card, box);
  }

  renderBox(card, box) {
    box.replaceChildren();
    const form = el("form", { class: "alert-form", testid: "alert-form" });
    const preset = el("select", { name: "preset", testid: "alert-preset" },
      ...Object.entries(PRESETS).map(([value, p]) => el("option", { value }, p.label)));
    const frequency = el("select", { name: "frequency", testid: "alert-frequency" },
      ...Object.entries(FREQUENCIES).map(([value, label]) => el("option", { value }, label)));
    const message = el("p", { class: "alert-message", testid: "alert-message", role: "status" });
    form.append(preset, frequency, el("button", { type: "submit", testid: "alert-create" }, "Create alert"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const [profile, symbol, tf] = this.keyOfCard(card);
      try {
        await this.call("POST", "/api/alerts", {
          keys: [[profile, symbol, tf]],
          condition: PRESETS[preset.value].condition,
          frequency: frequency.value,
        });
        message.textContent = "Alert created.";
      } catch (error) {
        message.textContent = error.message;
      }
      await this.refresh();
    });
    const rules = el("ul", { class: "alert-rules", testid: "alert-rules" });
    for (const rule of this.rulesOf(card)) {
      const last = this.triggers.find((t) => t.rule_id === rule.id);
      rules.append(el("li", { testid: "alert-rule", "data-rule": String(rule.id) },
        el("span", { class: "alert-what" }, `${describe(rule)}, ${FREQUENCIES[rule.frequency]}`),
        el("span", { class: "alert-last", testid: "alert-last" },
          last ? `last: ${last.before} → ${last.after}, ${when(last.created_at)}` : "not fired yet"),
        el("button", {
          type: "button", testid: "alert-mute",
          onclick: () => this.change("PATCH", rule, { muted: !rule.muted }),
        }, rule.muted ? "Unmute" : "Mute"),
        el("button", {
          type: "button", testid: "alert-delete",
          onclick: () => this.change("DELETE", rule),
        }, "Delete")));
    }
    box.append(form, message, rules);
  }

  async change(method, rule, body) {
    try {
      await this.call(method, `/api/alerts/${rule.id}`, body);
    } finally {
      await this.refresh();
    }
  }

  async addChannel(event) {
    event.preventDefault();
    const form = event.currentTarget;
    try {
      const made = await this.call("POST", "/api/alerts/channels", { kind: "webhook", url: form.elements.url.value.trim() });
      // The secret is shown once: the receiver needs it to check each request's signature.
      this.secretEl.textContent = `Webhook added. Its signing secret (shown once): ${made.secret}`;
      this.secretEl.dataset.secret = made.secret;
      form.elements.url.value = "";
    } catch (error) {
      this.secretEl.textContent = error.message;
      delete this.secretEl.dataset.secret;
    }
    this.secretEl.hidden = false;
    await this.refresh();
  }

  renderChannels() {
    this.channelList.replaceChildren();
    for (const channel of this.channels || []) {
      const state = channel.state === "active" ? "active" : `${channel.state}: ${channel.reason}`;
      this.channelList.append(el("li", { testid: "alerts-channel", "data-state": channel.state },
        el("span", {}, channel.kind === "telegram" ? "Telegram (your chat with the bot)" : `${channel.kind} ${channel.target}`),
        el("span", { class: "alerts-channel-state" }, state),
        el("button", {
          type: "button", testid: "channel-delete",
          onclick: async () => {
            try {
              await this.call("DELETE", `/api/alerts/channels/${channel.id}`);
            } finally {
              await this.refresh();
            }
          },
        }, "Remove")));
    }
  }

  renderHistory() {
    this.list.replaceChildren();
    if (!this.triggers.length) {
      this.list.append(el("li", { class: "alerts-empty" }, "No alert has fired yet."));
      return;
    }
    for (const t of this.triggers) {
      const outcome = t.deliveries.length
        ? t.deliveries.map((d) => (d.status === "failed" ? `failed: ${d.error}` : d.status)).join(", ")
        : "no channel";
      const ticker = t.symbol.split(":").pop();
      this.list.append(el("li", { testid: "alerts-entry", "data-status": t.deliveries.map((d) => d.status).join(" ") },
        el("time", {}, when(t.created_at)),
        el("span", { class: "alerts-key" }, `${ticker} ${t.tf}`),
        el("span", { class: "alerts-move" }, `${t.before} → ${t.after}`),
        el("span", { class: "alerts-outcome", testid: "alerts-outcome" }, outcome)));
    }
  }
}

function start() {
  window.quartsigAlerts = new Alerts();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
