/* GPU Proxy admin console. Plain JavaScript, no dependencies, works offline.
 *
 * Every read and action goes through the admin REST API with the admin's JWT (kept in
 * sessionStorage, never in a cookie); live updates come from /ws. Text from the server is
 * always inserted as text (textContent), never as HTML.
 */
(() => {
  "use strict";

  const TOKEN_KEY = "gpuproxy.admin.token";
  const WINDOWS = ["5MIN", "15MIN", "30MIN", "60MIN", "90MIN", "120MIN", "240MIN", "300MIN",
    "360MIN", "400MIN", "460MIN", "520MIN", "640MIN", "700MIN", "1440MIN", "48H", "72H"];
  const $ = (id) => document.getElementById(id);
  const state = { token: sessionStorage.getItem(TOKEN_KEY), me: null, view: null, socket: null,
    lastId: null, retry: 0, feed: [] };

  // ------------------------------------------------------------------ DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function fill(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  function table(columns, rows, options) {
    const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)));
    const body = h("tbody", {}, rows.map((row) => rowFor(columns, row, options)));
    return h("table", {}, h("thead", {}, head), body);
  }

  function rowFor(columns, row, options) {
    const tr = h("tr", { "data-id": options && options.key ? options.key(row) : null },
      columns.map((c) => {
        const value = c.render ? c.render(row) : row[c.key];
        return h("td", { class: c.num ? "num" : null }, value === null || value === undefined ? "—" : value);
      }));
    return tr;
  }

  function panel(title, ...children) {
    return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, ...children);
  }

  function toast(text, bad) {
    const item = h("div", { class: bad ? "bad" : null }, text);
    $("toast").append(item);
    setTimeout(() => item.remove(), 5000);
  }

  const usd = (value) => (value === null || value === undefined ? "—" : "$" + value);
  // Integer micro-USD (event data) as the server writes money: exactly six decimals, exact.
  const microsUsd = (m) => (m < 0 ? "-" : "") + Math.floor(Math.abs(m) / 1e6) + "." + String(Math.abs(m) % 1e6).padStart(6, "0");
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
  const short = (id) => (id ? String(id).slice(0, 8) : "—");
  const badge = (text, kind) => h("span", { class: "badge " + (kind || text || "") }, text);

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.error)) || "HTTP " + status);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body, headers) {
    const init = { method, headers: { Accept: "application/json", ...(headers || {}) } };
    if (state.token) init.headers.Authorization = "Bearer " + state.token;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      if (response.status === 401 && path !== "/api/v1/auth/login") logout("Your session ended; log in again.");
      if (response.status === 403) showDenied(data && data.detail);
      throw new ApiError(response.status, data);
    }
    return data;
  }

  async function act(button, work, done) {
    if (button) button.disabled = true;
    try {
      const result = await work();
      if (done) toast(done);
      return result;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 403)) toast(err.message, true);
      return null;
    } finally {
      if (button) button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ session

  function show(which) {
    for (const id of ["login-view", "denied-view", "app-view"]) $(id).hidden = id !== which;
    $("logout").hidden = which === "login-view";
  }

  function showDenied(detail) {
    closeSocket();
    $("denied-detail").textContent = detail ? "(" + detail + ")" : "";
    show("denied-view");
  }

  function logout(message) {
    if (state.token) api("POST", "/api/v1/auth/logout").catch(() => null);
    state.token = null;
    state.me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    closeSocket();
    $("who").textContent = "";
    $("login-error").textContent = message || "";
    show("login-view");
  }

  async function login(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    try {
      const result = await api("POST", "/api/v1/auth/login", {
        email: $("login-email").value, password: $("login-password").value });
      state.token = result.tokens.access_token;
      sessionStorage.setItem(TOKEN_KEY, state.token);
      $("login-password").value = "";
      await start();
    } catch (err) {
      $("login-error").textContent = err.message;
    }
  }

  async function start() {
    try {
      await api("GET", "/api/v1/admin/stats"); // the admin API decides: 403 for non-admins
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 403) $("login-error").textContent = err.message;
      return;
    }
    show("app-view");
    openSocket();
    route();
  }

  // ------------------------------------------------------------------ live updates

  function setLive(text, kind) {
    const pill = $("live");
    pill.textContent = text;
    pill.className = "pill " + kind;
  }

  function openSocket() {
    closeSocket();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // the JWT travels as a subprotocol, never in the URL (URLs end up in server logs)
    const socket = new WebSocket(scheme + "//" + location.host + "/ws", ["bearer", state.token]);
    state.socket = socket;
    socket.onopen = () => {
      const message = { type: "subscribe", all: true };
      if (state.lastId !== null) message.since = state.lastId;
      socket.send(JSON.stringify(message));
    };
    socket.onmessage = (frame) => {
      let msg;
      try { msg = JSON.parse(frame.data); } catch (_) { return; }
      if (msg.type === "ping") { socket.send(JSON.stringify({ type: "pong" })); track(msg.position); return; }
      if (msg.type === "subscribed") { state.retry = 0; track(msg.position); setLive("live", "on"); return; }
      if (msg.type === "error") { toast("stream: " + msg.error, true); return; }
      if (msg.type === "event") { track(msg.id); onEvent(msg); }
    };
    socket.onclose = (close) => {
      if (state.socket !== socket) return;
      state.socket = null;
      if (close.code === 4401) { logout("Your session ended; log in again."); return; }
      if (close.code === 4403) { showDenied("admin role revoked"); return; }
      setLive("reconnecting", "retry");
      const delay = Math.min(10000, 500 * 2 ** state.retry++);
      setTimeout(() => { if (state.token && !state.socket && !$("app-view").hidden) openSocket(); }, delay);
    };
  }

  function track(position) {
    if (typeof position === "number" && (state.lastId === null || position > state.lastId)) state.lastId = position;
  }

  function closeSocket() {
    const socket = state.socket;
    state.socket = null;
    if (socket) socket.close(1000, "bye");
    setLive("offline", "off");
  }

  function onEvent(msg) {
    state.feed.unshift(msg);
    state.feed.length = Math.min(state.feed.length, 100);
    if (state.view && state.view.onEvent) state.view.onEvent(msg);
  }

  function describe(msg) {
    const d = msg.data || {};
    const amount = typeof d.amount === "number" ? " $" + microsUsd(d.amount) : "";
    return "#" + msg.id + " " + msg.event + amount + " · " + short(msg.user_id);
  }

  // ------------------------------------------------------------------ router

  const views = {};

  function route() {
    if ($("app-view").hidden) return;
    const [name, arg] = (location.hash.slice(1) || "overview").split("/");
    const factory = views[name] || views.overview;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + (name === "user" ? "users" : name));
    const main = $("main");
    fill(main);
    state.view = factory(main, arg ? decodeURIComponent(arg) : null) || null;
  }

  function debounce(fn, ms) {
    let timer = null;
    return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  // ------------------------------------------------------------------ overview

  views.overview = (main) => {
    const cards = h("div", { class: "cards" });
    const lag = h("div");
    const feed = h("div", { class: "feed", id: "event-feed" });
    main.append(panel("Ledger", cards), h("div", { class: "grid" }, panel("Projections", lag), panel("Live events", feed)));
    async function load() {
      const [stats, proj] = await Promise.all([api("GET", "/api/v1/admin/stats"), api("GET", "/api/v1/admin/projections")]);
      fill(cards, ...[
        ["Users", stats.users], ["Events", stats.events], ["Balances", usd(stats.balance_total)],
        ["Held", usd(stats.held_total)], ["Granted", usd(stats.granted_total)], ["Charged", usd(stats.charged_total)],
      ].map(([label, value]) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value))));
      fill(lag, 
        h("p", { class: "muted" }, "Log head #" + proj.head + " · stream cursor #" + proj.streams.cursor + " · " + proj.streams.connections + " live connection(s)"),
        table([{ label: "Projection", key: "name" }, { label: "Position", key: "position", num: true }, { label: "Lag", key: "lag", num: true }],
          Object.keys(proj.positions).map((name) => ({ name, position: proj.positions[name], lag: proj.lag[name] }))),
        proj.last_error ? h("p", { class: "error" }, proj.last_error) : null);
    }
    function drawFeed() { fill(feed, ...state.feed.map((m) => h("div", {}, describe(m)))); }
    load().catch((err) => toast(err.message, true));
    drawFeed();
    const reload = debounce(() => load().catch(() => null), 1500);
    return { onEvent: () => { drawFeed(); reload(); } };
  };

  // ------------------------------------------------------------------ users

  views.users = (main) => {
    const input = h("input", { id: "user-search", type: "search", placeholder: "email or name", autocomplete: "off" });
    const results = h("div", { id: "user-results" });
    main.append(panel("Users", h("label", {}, "Search", input), results));
    async function search() {
      const data = await api("GET", "/api/v1/admin/search/users?q=" + encodeURIComponent(input.value.trim()));
      fill(results, table([
        { label: "Email", render: (u) => h("a", { href: "#user/" + encodeURIComponent(u.id), class: "user-link" }, u.email) },
        { label: "Name", key: "name" },
        { label: "Role", render: (u) => (u.is_admin ? badge("admin") : "user") },
        { label: "Balance", render: (u) => usd(u.credits_remaining), num: true },
        { label: "Held", render: (u) => usd(u.credits_held), num: true },
      ], data.users));
    }
    input.addEventListener("input", debounce(() => search().catch((err) => toast(err.message, true)), 250));
    search().catch((err) => toast(err.message, true));
    input.focus();
    return null;
  };

  views.user = (main, userId) => {
    const base = "/api/v1/admin/users/" + encodeURIComponent(userId);
    const title = h("h2", {}, "User");
    const roleButton = h("button", { type: "button", class: "secondary", id: "role-toggle" }, "…");
    const credits = h("div", { class: "cards", id: "credits" });
    const chart = h("div", { id: "balance-chart" });
    const spending = h("div", { id: "spending" });
    const holds = h("div");
    const ledger = h("div", { id: "ledger" });
    const keys = h("div", { id: "api-keys" });
    const sessions = h("div", { id: "usage-sessions" });
    const audit = h("div", { id: "audit" });
    let points = [];
    let user = null;

    const grantForm = h("form", { class: "inline", id: "grant-form" },
      h("label", {}, "Amount (USD)", h("input", { name: "amount", id: "grant-amount", required: true, inputmode: "decimal", placeholder: "25.00" })),
      h("label", {}, "Reason", h("input", { name: "reason", id: "grant-reason", value: "admin grant", maxlength: 500 })),
      h("button", { type: "submit", id: "grant-submit" }, "Grant credits"));
    const limitForm = h("form", { class: "inline", id: "limit-form" },
      h("label", {}, "Window", h("select", { name: "window", id: "limit-window" }, WINDOWS.map((w) => h("option", { value: w }, w)))),
      h("label", {}, "Limit (USD; 0 = off, empty = default)", h("input", { name: "amount", id: "limit-amount", inputmode: "decimal" })),
      h("label", {}, "Reason", h("input", { name: "reason", id: "limit-reason", maxlength: 500 })),
      h("button", { type: "submit", id: "limit-submit" }, "Set limit"));
    const resetForm = h("form", { class: "inline", id: "reset-form" },
      h("label", {}, "Reset window (empty = all)", h("select", { name: "window" }, h("option", { value: "" }, "all"), WINDOWS.map((w) => h("option", { value: w }, w)))),
      h("label", {}, "Reason (recorded)", h("input", { name: "reason", required: true, maxlength: 500 })),
      h("button", { type: "submit", class: "secondary" }, "Reset spending"));
    const capForm = h("form", { class: "inline", id: "cap-form" },
      h("label", {}, "Overage cap (USD)", h("input", { name: "cap", required: true, inputmode: "decimal" })),
      h("label", {}, "Reason", h("input", { name: "reason", maxlength: 500 })),
      h("button", { type: "submit", class: "secondary" }, "Set cap"));

    main.append(
      panel(null, h("div", { class: "top-row" }, title, roleButton), credits),
      h("div", { class: "grid" },
        panel("Grant credits", grantForm),
        panel("Guard-rail limits", limitForm, resetForm, capForm)),
      h("div", { class: "grid" }, panel("Balance over time", chart), panel("Spend per window", spending)),
      h("div", { class: "grid" }, panel("Ledger", ledger), panel("Holds", holds)),
      h("div", { class: "grid" }, panel("API keys", keys), panel("Audit trail", audit)),
      panel("Usage sessions", sessions));

    function drawCredits(c) {
      if (!c) { fill(credits, h("p", { class: "muted" }, "No credit account yet.")); return; }
      fill(credits, ...[
        ["Balance", c.credits_remaining, "balance"], ["Available", c.credits_available, "available"],
        ["Held", c.credits_held, "held"], ["Granted (total)", c.credits_total, "granted"],
        ["Overage", c.credits_overage, "overage"], ["Cap", c.credits_cap, "cap"],
      ].map(([label, value, id]) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id: "credit-" + id }, usd(value)))));
    }

    function drawSpending(s) {
      if (!s) { fill(spending, h("p", { class: "muted" }, "—")); return; }
      const names = WINDOWS.filter((w) => w in s.limits || Number(s.window_spent[w] || 0) > 0);
      if (!names.length) { fill(spending, h("p", { class: "muted" }, "No limits in force and nothing spent.")); return; }
      fill(spending, table([
        { label: "Window", key: "w" },
        { label: "Spent", render: (r) => usd(r.spent), num: true },
        { label: "Limit", render: (r) => (r.limit === undefined ? "off" : usd(r.limit)), num: true },
        { label: "", render: (r) => {
          const ratio = r.limit ? Math.min(1, Number(r.spent) / Number(r.limit)) : 0;
          const fill = h("span");
          fill.style.width = (ratio * 100).toFixed(1) + "%";
          return h("div", { class: "bar" + (s.exceeded.includes(r.w) ? " over" : "") }, fill);
        } },
      ], names.map((w) => ({ w, spent: s.window_spent[w] || "0.000000", limit: s.limits[w] })), { key: (r) => r.w }));
    }

    function drawChart() { fill(chart, lineChart(points)); }

    function ledgerRow(t) { return { id: t.id, kind: t.kind, amount: t.amount, actor: t.actor, reason: t.reason, at: t.at }; }
    const ledgerColumns = [
      { label: "#", key: "id", num: true }, { label: "Kind", key: "kind" },
      { label: "Amount", render: (t) => usd(t.amount), num: true },
      { label: "Actor", key: "actor" }, { label: "Reason", key: "reason" }, { label: "At", render: (t) => when(t.at) },
    ];

    function drawSessions(list) {
      fill(sessions, list.length ? table([
        { label: "Started", render: (s) => when(s.started_at) }, { label: "Ended", render: (s) => when(s.ended_at) },
        { label: "Seconds", render: (s) => String(Math.round(s.duration_seconds)), num: true },
        { label: "Client", render: (s) => h("code", {}, s.credential + ":" + s.client_id) }, { label: "IP", key: "ip_address" },
        { label: "Requests", key: "requests", num: true },
        { label: "Proxy", render: (s) => usd(s.credits_spent.proxy_fees), num: true },
        { label: "Models", render: (s) => usd(s.credits_spent.model_predictions), num: true },
        { label: "GPU", render: (s) => usd(s.credits_spent.gpu_time), num: true },
        { label: "Total", render: (s) => usd(s.credits_spent.total), num: true }, { label: "User agent", key: "user_agent" },
      ], list, { key: (s) => s.id }) : h("p", { class: "muted" }, "No usage sessions yet."));
    }

    async function loadAll() {
      const [acct, tx, history, keyList, trail, usage] = await Promise.all([
        api("GET", base + "/account"), api("GET", base + "/transactions?limit=50"),
        api("GET", base + "/balance-history?limit=200"), api("GET", base + "/apikeys"), api("GET", base + "/audit?limit=50"),
        api("GET", "/api/v1/usage/sessions?limit=20&user_id=" + encodeURIComponent(userId)),
      ]);
      drawSessions(usage.sessions);
      user = acct.user;
      fill(title, user.email + " ", h("span", { class: "muted" }, user.name + " "), user.is_admin ? badge("admin") : null);
      roleButton.textContent = user.is_admin ? "Revoke admin" : "Make admin";
      drawCredits(acct.credits);
      drawSpending(acct.spending);
      fill(holds, (acct.holds || []).length ? table([
        { label: "Hold", render: (x) => h("code", {}, x.hold_id) }, { label: "Amount", render: (x) => usd(x.amount), num: true },
        { label: "Captured", render: (x) => usd(x.captured), num: true }, { label: "Expires", render: (x) => when(x.expires_at) },
      ], acct.holds) : h("p", { class: "muted" }, "No open holds."));
      fill(ledger, table(ledgerColumns, tx.transactions.map(ledgerRow), { key: (t) => t.id }));
      points = history.points.map((p) => ({ id: p.id, at: p.at, balance: Number(p.balance), text: p.balance }));
      drawChart();
      drawKeys(keyList.api_keys);
      fill(audit, table([
        { label: "At", render: (e) => when(e.at) }, { label: "Actor", key: "actor" }, { label: "What", key: "what" },
      ], [...trail.security.map((e) => ({ at: e.at, actor: e.actor, what: e.action + (e.detail ? " " + e.detail : "") })),
        ...trail.ledger.map((e) => ({ at: e.at, actor: e.actor, what: e.event + (e.reason ? " — " + e.reason : "") }))]
        .sort((a, b) => (a.at < b.at ? 1 : -1)).slice(0, 50)));
    }

    function drawKeys(list) {
      const active = list.filter((k) => !k.revoked_at);
      fill(keys, 
        list.length ? table([
          { label: "Key", render: (k) => h("code", {}, k.id) }, { label: "Name", key: "name" },
          { label: "Created", render: (k) => when(k.created_at) },
          { label: "Status", render: (k) => (k.revoked_at ? badge("revoked", "failed") : badge("active", "running")) },
          { label: "", render: (k) => (k.revoked_at ? "" : h("button", { type: "button", class: "danger small",
            onclick: (ev) => act(ev.target, () => api("DELETE", base + "/apikeys/" + encodeURIComponent(k.id)), "Key " + k.id + " revoked").then(refresh) }, "Revoke")) },
        ], list) : h("p", { class: "muted" }, "No API keys."),
        active.length > 1 ? h("button", { type: "button", class: "danger", onclick: (ev) => act(ev.target,
          () => api("DELETE", base + "/apikeys"), "All keys revoked").then(refresh) }, "Revoke all keys") : null);
    }

    const refresh = () => loadAll().catch((err) => toast(err.message, true));

    grantForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const form = new FormData(grantForm);
      act($("grant-submit"), () => api("POST", base + "/credits",
        { amount: String(form.get("amount")).trim(), reason: String(form.get("reason") || "admin grant") },
        { "Idempotency-Key": crypto.randomUUID() }), "Credits granted").then((r) => { if (r) grantForm.reset(); });
    });
    limitForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const form = new FormData(limitForm);
      const raw = String(form.get("amount")).trim();
      const limits = {}; limits[String(form.get("window"))] = raw === "" ? null : raw;
      act($("limit-submit"), () => api("PUT", base + "/limits", { limits, reason: String(form.get("reason") || "") }), "Limit set").then(refresh);
    });
    resetForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const form = new FormData(resetForm);
      const body = { reason: String(form.get("reason")) };
      if (form.get("window")) body.window = String(form.get("window"));
      act(ev.submitter, () => api("POST", base + "/guardrails/reset", body), "Spending reset").then(refresh);
    });
    capForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const form = new FormData(capForm);
      act(ev.submitter, () => api("PUT", base + "/cap", { cap: String(form.get("cap")).trim(), reason: String(form.get("reason") || "") }), "Cap set").then(refresh);
    });
    roleButton.addEventListener("click", () => {
      if (!user) return;
      act(roleButton, () => api("PUT", base + "/role", { is_admin: !user.is_admin }), "Role changed").then(refresh);
    });

    refresh();
    const refreshKeys = debounce(refresh, 800);
    return {
      onEvent(msg) {
        if (msg.user_id !== userId) return;
        if (msg.account) {
          drawCredits(msg.account);
          const balance = Number(msg.account.credits_remaining);
          const kind = msg.event.split(".")[1];
          if (["Granted", "Charged", "HoldCaptured", "Debited"].includes(kind)) {
            points.push({ id: msg.id, at: msg.at, balance, text: msg.account.credits_remaining });
            drawChart();
          }
        }
        if (msg.spending) drawSpending(msg.spending);
        if (msg.event.startsWith("CreditAccount.")) {
          const kinds = { Granted: "grant", Charged: "charge", HoldPlaced: "hold", HoldCaptured: "capture",
            HoldReleased: "release", HoldExpired: "expire", Debited: "debit", AutoRenewTriggered: "auto_renew" };
          const kind = kinds[msg.event.split(".")[1]];
          const tbody = ledger.querySelector("tbody");
          if (kind && tbody && !tbody.querySelector('tr[data-id="' + msg.id + '"]')) {
            const d = msg.data || {};
            const tr = rowFor(ledgerColumns, { id: msg.id, kind, amount: typeof d.amount === "number" ? microsUsd(d.amount) : null,
              actor: d.actor || "", reason: d.reason || "", at: msg.at }, { key: (t) => t.id });
            tr.className = "fresh";
            tbody.prepend(tr);
          }
          if (!["Granted", "Charged", "HoldCaptured", "Debited"].includes(msg.event.split(".")[1])) refreshKeys();
        }
      },
    };
  };

  // ------------------------------------------------------------------ chart

  function lineChart(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("viewBox", "0 0 600 180");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const add = (tag, attrs, text) => {
      const el = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
      if (text !== undefined) el.textContent = text;
      svg.append(el);
      return el;
    };
    if (!points.length) {
      svg.setAttribute("aria-label", "no balance history");
      add("text", { x: 10, y: 90 }, "No balance movements yet.");
      return svg;
    }
    const left = 84, right = 590, top = 12, bottom = 160; // room for "$1000.000000"
    const values = points.map((p) => p.balance);
    let lo = Math.min(0, ...values), hi = Math.max(...values);
    if (hi === lo) hi = lo + 1;
    const x = (i) => (points.length === 1 ? (left + right) / 2 : left + (i * (right - left)) / (points.length - 1));
    const y = (v) => bottom - ((v - lo) * (bottom - top)) / (hi - lo);
    add("line", { x1: left, y1: bottom, x2: right, y2: bottom, class: "axis" });
    add("line", { x1: left, y1: top, x2: left, y2: bottom, class: "axis" });
    add("text", { x: 4, y: top + 4 }, "$" + hi.toFixed(6));
    add("text", { x: 4, y: bottom }, "$" + lo.toFixed(6));
    const path = points.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(p.balance).toFixed(1)).join(" ");
    add("path", { d: path + " L" + x(points.length - 1).toFixed(1) + " " + bottom + " L" + x(0).toFixed(1) + " " + bottom + " Z", class: "area" });
    add("path", { d: path, class: "line" });
    const last = points[points.length - 1];
    add("circle", { cx: x(points.length - 1), cy: y(last.balance), r: 3.5, fill: "#2f6fde" });
    const labelY = y(last.balance) < top + 24 ? y(last.balance) + 18 : y(last.balance) - 8;
    add("text", { x: Math.max(left + 4, x(points.length - 1) - 64), y: labelY, id: "chart-last" }, "$" + last.text);
    svg.setAttribute("aria-label", "balance over time, latest $" + last.text);
    return svg;
  }

  // ------------------------------------------------------------------ lists

  function listView(main, title, load, columns, options) {
    const holder = h("div");
    const refresh = h("button", { type: "button", class: "secondary small" }, "Refresh");
    main.append(panel(null, h("h2", {}, title + " ", refresh), holder));
    const draw = () => load().then((rows) => fill(holder, rows.length ? table(columns, rows, options) : h("p", { class: "muted" }, "Nothing yet."))).catch((err) => toast(err.message, true));
    refresh.addEventListener("click", draw);
    draw();
    const later = debounce(draw, 1200);
    return { draw, later };
  }

  views.instances = (main) => {
    const rows = new Map();
    const columns = [
      { label: "Instance", render: (i) => h("code", {}, short(i.id)) }, { label: "Owner", render: (i) => i.owner_email || short(i.owner) },
      { label: "Provider", key: "provider" }, { label: "GPU", render: (i) => i.num_gpus + "× " + i.gpu_model },
      { label: "State", render: (i) => badge(i.state) }, { label: "Price/h", render: (i) => usd(i.price_per_hour), num: true },
      { label: "Cost so far", render: (i) => usd(i.cost_so_far), num: true }, { label: "Started", render: (i) => when(i.started_at) },
    ];
    const list = listView(main, "Instances", async () => {
      const data = await api("GET", "/api/v1/admin/instances?limit=200");
      rows.clear();
      for (const i of data.instances) rows.set(i.id, i);
      return data.instances;
    }, columns, { key: (i) => i.id });
    return { onEvent(msg) { if (msg.topics.includes("instances")) list.later(); } };
  };

  views.reservations = (main) => {
    const list = listView(main, "Reservations", async () => (await api("GET", "/api/v1/admin/reservations?limit=100")).reservations, [
      { label: "Reservation", render: (r) => h("code", {}, short(r.id)) }, { label: "Owner", render: (r) => short(r.owner) },
      { label: "State", render: (r) => badge(r.state) }, { label: "GPUs", key: "count", num: true },
      { label: "Provider", key: "provider" }, { label: "Members", render: (r) => (r.instances || []).length, num: true },
      { label: "Held", render: (r) => usd(r.held), num: true }, { label: "Reason", key: "reason" },
    ]);
    return { onEvent(msg) { if (msg.topics.includes("reservations")) list.later(); } };
  };

  views.load = (main) => {
    const list = listView(main, "Load per instance", async () => (await api("GET", "/api/v1/admin/load")).instances, [
      { label: "Instance", render: (i) => h("code", {}, short(i.instance_id)) }, { label: "Owner", render: (i) => i.owner_email || short(i.owner) },
      { label: "Provider", key: "provider" }, { label: "State", render: (i) => (i.state ? badge(i.state) : "—") },
      { label: "Requests", key: "requests", num: true }, { label: "Errors", key: "errors", num: true },
      { label: "Mean latency (ms)", key: "mean_latency_ms", num: true }, { label: "Active here", key: "active_connections", num: true },
      { label: "Last", render: (i) => when(i.last_at) },
    ]);
    return { onEvent(msg) { if (msg.topics.includes("load") || msg.topics.includes("instances")) list.later(); } };
  };

  views.payments = (main) => {
    const list = listView(main, "Payments", async () => (await api("GET", "/api/v1/admin/payments?limit=200")).payments, [
      { label: "Payment", render: (p) => h("code", {}, short(p.id)) }, { label: "Owner", render: (p) => p.owner_email || short(p.owner) },
      { label: "Status", render: (p) => badge(p.status) }, { label: "Amount", render: (p) => usd(p.amount), num: true },
      { label: "Provider", key: "provider" }, { label: "Credited", render: (p) => usd(p.credited), num: true },
      { label: "Refunded", render: (p) => usd(p.refunded), num: true }, { label: "Created", render: (p) => when(p.created_at) },
    ]);
    return { onEvent(msg) { if (msg.event.startsWith("Payment.")) list.later(); } };
  };

  views.providers = (main) => {
    listView(main, "Providers", async () => (await api("GET", "/api/v1/admin/providers")).providers, [
      { label: "Provider", key: "name" },
      { label: "Health", render: (p) => (p.healthy ? badge("healthy") : badge("unhealthy")) },
      { label: "Probe (ms)", key: "latency_ms", num: true },
      { label: "Instances", render: (p) => Object.entries(p.instances).map(([s, n]) => s + ": " + n).join(", ") || "none" },
      { label: "Error", render: (p) => p.error || "" },
    ]);
    return null;
  };

  // ------------------------------------------------------------------ boot

  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("denied-logout").addEventListener("click", () => logout());
  window.addEventListener("hashchange", route);
  if (state.token) start().then(() => { if ($("app-view").hidden && $("denied-view").hidden) show("login-view"); });
  else show("login-view");
})();
