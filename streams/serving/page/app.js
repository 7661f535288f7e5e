// The live page: polls the worker's read API every second and redraws. Plain JS, no build step.
// Data from the API is text for the page, never markup: it goes in with textContent only.
"use strict";
(() => {
  const REFRESH_MS = 1000;
  const RULE_MODELS = ["last_click", "first_click", "linear", "time_decay", "position_based"];
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
    "#475569", "#ea580c"];
  // key, header, format, optional (shown only when some message carries it): the KPIs of CONTRACT.md 4 and 7
  const COLUMNS = [
    ["spend", "Spend", "money"], ["revenue", "Revenue", "money"], ["gross_profit", "Profit", "money", true],
    ["romi", "ROMI", "signed"], ["roas", "ROAS", "times"], ["roi", "ROI", "signed"],
    ["cpl", "CPL", "money"], ["cpa", "CPA", "money"], ["cac", "CAC", "money"], ["cpc", "CPC", "money"],
    ["cpm", "CPM", "money"], ["ctr", "CTR", "percent"], ["conversion_rate", "Conv", "percent"],
    ["aov", "AOV", "money"], ["impressions", "Impr", "count"], ["clicks", "Clicks", "count"],
    ["leads", "Leads", "credit"], ["orders", "Orders", "credit"]];
  const state = {
    info: null, kpis: [], signals: [], trends: [], ltv: [], ltvOff: false, models: null, health: null,
    window: "current", sortKey: "spend", sortDir: -1, trendChannel: "", eventsHistory: [[], []],
  };
  const charts = {};
  const page = { startedAt: performance.now(), firstDataMs: null, renders: 0, errors: 0, charts };
  window.__page = page;

  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  };
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  // --- formats (as `attribution top` shows them) ---------------------------------------------------------
  let money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  let moneyAxis = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  const whole = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const FORMATS = {
    count: (v) => whole.format(v),
    credit: (v) => (Math.abs(v - Math.round(v)) < 0.05 ? whole.format(v) : oneDecimal.format(v)),
    money: (v) => money.format(v),
    percent: (v) => (v * 100).toFixed(2) + "%",
    times: (v) => v.toFixed(2) + "x",
    signed: (v) => (v >= 0 ? "+" : "") + whole.format(v * 100) + "%",
  };
  const fmt = (kind, v) => (isNum(v) ? FORMATS[kind](v) : "—");
  const colorOf = (channel, channels) => PALETTE[Math.max(0, channels.indexOf(channel)) % PALETTE.length];
  const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour12: false });

  // --- reading the API ---------------------------------------------------------------------------------
  async function getJSON(path, allow404) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.assign("/login?next=/");
      throw new Error("not logged in");
    }
    if (allow404 && response.status === 404) return null;
    if (!response.ok) throw new Error(`${path} answered ${response.status}`);
    return response.json();
  }

  async function poll() {
    const [kpis, signals, trends, ltv, models, health] = await Promise.all([
      getJSON("/api/v1/kpis"), getJSON("/api/v1/signals"), getJSON("/api/v1/trends"),
      getJSON("/api/v1/ltv", true), getJSON("/api/v1/models"), getJSON("/api/v1/health"),
    ]);
    Object.assign(state, { kpis, signals, trends, ltv: ltv || [], ltvOff: ltv === null, models, health });
  }

  // --- the channel table -------------------------------------------------------------------------------
  // The channels' sum, its KPIs from the sums (the formulas of streams/core/kpis.py, as `attribution top` shows).
  const ADDITIVE = ["impressions", "clicks", "leads", "orders", "new_customers", "revenue", "spend", "gross_profit"];
  function totalRow(rows) {
    const sum = (k) => rows.reduce((total, r) => total + (isNum(r[k]) ? r[k] : 0), 0);
    const t = Object.fromEntries(ADDITIVE.map((k) => [k, sum(k)]));
    const ratio = (n, d, scale = 1) => (d === 0 ? null : (scale * n) / d);
    return {
      channel: "total", ...t,
      ctr: ratio(t.clicks, t.impressions), cpc: ratio(t.spend, t.clicks), cpm: ratio(t.spend, t.impressions, 1000),
      cpl: ratio(t.spend, t.leads), cpa: ratio(t.spend, t.orders), cac: ratio(t.spend, t.new_customers),
      conversion_rate: ratio(t.orders, t.clicks), aov: ratio(t.revenue, t.orders), roas: ratio(t.revenue, t.spend),
      roi: ratio(t.revenue - t.spend, t.spend), romi: ratio(t.gross_profit - t.spend, t.spend),
    };
  }

  function figureCells(tr, r, columns) {
    for (const [key, , kind] of columns) {
      const td = el("td", fmt(kind, r[key]), "num");
      td.dataset.key = key;
      td.dataset.value = isNum(r[key]) ? String(r[key]) : "";
      tr.append(td);
    }
  }

  function windowsOf(kpis) {
    const starts = [...new Set(kpis.map((m) => m.window_start))].sort((a, b) => b - a);
    return { current: starts[0], last: starts[1] };
  }

  function visibleColumns(rows) {
    return COLUMNS.filter(([key, , , optional]) => !optional || rows.some((r) => key in r));
  }

  function signalOf(channel) {
    return state.signals.find((s) => s.channel === channel && !s.campaign) || null;
  }

  function sortRows(rows) {
    const { sortKey, sortDir } = state;
    return rows.slice().sort((a, b) => {
      if (sortKey === "channel") return sortDir * a.channel.localeCompare(b.channel);
      if (sortKey === "signal") {
        const rank = (r) => ({ pause: 0, keep: 1, scale: 2 })[(signalOf(r.channel) || {}).action] ?? 3;
        return sortDir * (rank(a) - rank(b)) || a.channel.localeCompare(b.channel);
      }
      const x = a[sortKey], y = b[sortKey];
      if (!isNum(x) || !isNum(y)) return isNum(x) ? -1 : isNum(y) ? 1 : a.channel.localeCompare(b.channel);
      return sortDir * (x - y) || a.channel.localeCompare(b.channel);
    });
  }

  // The header is built again only when the columns change, so that a click never lands on a replaced cell.
  function renderHead(table, columns) {
    const all = [["channel", "Channel"], ["signal", "Signal"], ...columns];
    const key = all.map(([k]) => k).join("|");
    if (table.dataset.columns !== key) {
      table.dataset.columns = key;
      const row = el("tr");
      for (const [k, header, kind] of all) {
        const th = el("th", header, kind ? "num sortable" : "sortable");
        th.dataset.key = k;
        row.append(th);
      }
      table.tHead.replaceChildren(row);
    }
    for (const th of table.tHead.rows[0].cells) {
      th.classList.toggle("desc", state.sortKey === th.dataset.key && state.sortDir < 0);
      th.classList.toggle("asc", state.sortKey === th.dataset.key && state.sortDir > 0);
    }
  }

  function sortBy(key) {
    state.sortDir = state.sortKey === key ? -state.sortDir : key === "channel" || key === "signal" ? 1 : -1;
    state.sortKey = key;
    renderTable();
  }

  function renderTable() {
    const table = $("kpi-table");
    const windows = windowsOf(state.kpis);
    const start = windows[state.window];
    const rows = state.kpis.filter((m) => m.window_start === start);
    $("kpi-empty").hidden = rows.length > 0;
    table.hidden = rows.length === 0;
    table.dataset.windowStart = start ?? "";
    const columns = visibleColumns(rows);
    renderHead(table, columns);
    const body = document.createDocumentFragment();
    for (const r of sortRows(rows)) {
      const signal = signalOf(r.channel);
      const tr = el("tr", null, signal ? `action-${signal.action}` : "");
      tr.dataset.channel = r.channel;
      tr.append(el("td", r.channel, "channel"));
      const cell = el("td", null, "signal");
      if (signal) {
        cell.append(el("span", signal.action, `badge ${signal.action}`), el("span", signal.reason, "reason"));
        cell.title = signal.reason;
      } else {
        cell.append(el("span", "—", "reason"));
      }
      tr.append(cell);
      figureCells(tr, r, columns);
      body.append(tr);
    }
    table.tBodies[0].replaceChildren(body);
    const total = el("tr", null, "total");
    total.append(el("td", "total", "channel"), el("td"));
    figureCells(total, totalRow(rows), columns);
    table.tFoot.replaceChildren(...(rows.length > 1 ? [total] : []));
    const sample = rows[0];
    $("window-note").textContent = sample
      ? `${clock(sample.window_start)}–${clock(sample.window_end)}${rows.every((r) => r.final) ? " (final)" : ""}`
      : "";
  }

  // --- trend charts -------------------------------------------------------------------------------------
  function chart(id, series, data, valueFmt, height = 170) {
    const target = $(id);
    const key = series.map((s) => s.label).join("|");
    const existing = charts[id];
    if (existing && existing.key === key) {
      existing.plot.setData(data);
      return;
    }
    if (existing) existing.plot.destroy();
    const width = Math.max(200, target.clientWidth);
    const axisValues = (u, values) => values.map((v) => (isNum(v) ? valueFmt(v) : ""));
    const opts = {
      width, height, legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      series: [{}, ...series.map((s) => ({ spanGaps: true, width: 2, points: { show: false }, ...s }))],
      axes: [{ stroke: "#64748b", grid: { stroke: "#eef2f7" }, space: 70,
        values: (u, splits) => splits.map((seconds) => clock(seconds * 1000)) },
        { stroke: "#64748b", grid: { stroke: "#eef2f7" }, size: 62, values: axisValues }],
    };
    charts[id] = { key, plot: new uPlot(opts, data, target) };
  }

  function trendData() {
    const channels = [...new Set(state.trends.map((m) => m.channel))].sort();
    const starts = [...new Set(state.trends.map((m) => m.window_start))].sort((a, b) => a - b);
    const at = new Map(state.trends.map((m) => [`${m.channel}|${m.window_start}`, m]));
    const column = (channel, key) => starts.map((s) => {
      const m = at.get(`${channel}|${s}`);
      return m && isNum(m[key]) ? m[key] : null;
    });
    const sum = (key) => starts.map((s) => {
      const picked = state.trendChannel ? [state.trendChannel] : channels;
      return picked.reduce((total, c) => total + ((at.get(`${c}|${s}`) || {})[key] || 0), 0);
    });
    return { channels, xs: starts.map((s) => s / 1000), column, sum };
  }

  function renderTrends() {
    const { channels, xs, column, sum } = trendData();
    const select = $("trend-channel");
    const options = ["", ...channels];
    if ([...select.options].map((o) => o.value).join("|") !== options.join("|")) {
      select.replaceChildren(...options.map((c) => {
        const option = el("option", c || "all channels");
        option.value = c;
        return option;
      }));
      select.value = channels.includes(state.trendChannel) ? state.trendChannel : "";
    }
    const moneyFmt = (v) => moneyAxis.format(v);
    chart("chart-money", [{ label: "spend", stroke: "#dc2626" }, { label: "revenue", stroke: "#16a34a" }],
      [xs, sum("spend"), sum("revenue")], moneyFmt);
    const perChannel = (key) => channels.map((c) => ({ label: c, stroke: colorOf(c, channels) }));
    chart("chart-romi", perChannel("romi"), [xs, ...channels.map((c) => column(c, "romi"))],
      (v) => whole.format(v * 100) + "%");
    chart("chart-cpl", perChannel("cpl"), [xs, ...channels.map((c) => column(c, "cpl"))], moneyFmt);
    $("trend-note").textContent = xs.length ? `last ${xs.length} windows` : "";
  }

  // --- lifetime value -----------------------------------------------------------------------------------
  function renderLtv() {
    const rows = state.ltv.slice().sort((a, b) => (b.ltv_cac ?? -1) - (a.ltv_cac ?? -1));
    $("ltv-empty").hidden = rows.length > 0;
    $("ltv-empty").textContent = state.ltvOff ? "Lifetime value is off on this worker (LTV_STAGE=off)."
      : "No customer with a first order yet.";
    const top = Math.max(1e-9, ...rows.flatMap((r) => [r.clv, r.cac].filter(isNum)));
    const body = document.createDocumentFragment();
    for (const r of rows) {
      const tr = el("tr");
      tr.dataset.channel = r.channel;
      const ratio = isNum(r.ltv_cac) ? (r.ltv_cac >= 3 ? "good" : r.ltv_cac < 1 ? "bad" : "") : "";
      tr.append(el("td", r.channel, "channel"), el("td", fmt("credit", r.customers), "num"),
        el("td", fmt("money", r.clv), "num"), el("td", fmt("money", r.cac), "num"),
        el("td", fmt("times", r.ltv_cac), `num ${ratio}`));
      const bars = el("td", null, "bars");
      for (const [key, cls] of [["clv", "clv"], ["cac", "cac"]]) {
        const bar = el("div", null, `bar ${cls}`);
        bar.style.width = `${isNum(r[key]) ? Math.max(1, (100 * r[key]) / top) : 0}%`;
        bar.title = `${key.toUpperCase()} ${fmt("money", r[key])}`;
        bars.append(bar);
      }
      tr.append(bars);
      body.append(tr);
    }
    $("ltv-table").tBodies[0].replaceChildren(body);
  }

  // --- models side by side ------------------------------------------------------------------------------
  function orderedModels(names) {
    return [...RULE_MODELS.filter((m) => names.includes(m)), ...names.filter((m) => !RULE_MODELS.includes(m)).sort()];
  }

  function renderModels() {
    const view = state.models || { models: [], rows: [] };
    const models = orderedModels(view.models);
    const channels = [...new Set(view.rows.map((r) => r.channel))].sort();
    const cell = new Map(view.rows.map((r) => [`${r.model}|${r.channel}`, r.conversions]));
    const table = $("models-table");
    $("models-empty").hidden = view.rows.length > 0;
    const head = el("tr");
    head.append(el("th", "Channel"));
    for (const m of models) {
      const th = el("th", m.replace(/_/g, " "), "num");
      th.dataset.model = m;
      if (m === view.attribution_model) th.title = "drives the metrics";
      head.append(th);
    }
    table.tHead.replaceChildren(head);
    const body = document.createDocumentFragment();
    for (const c of channels) {
      const tr = el("tr");
      tr.dataset.channel = c;
      tr.append(el("td", c, "channel"));
      const base = cell.get(`last_click|${c}`) || 0;
      for (const m of models) {
        const v = cell.get(`${m}|${c}`) || 0;
        const diff = m === "last_click" ? 0 : v - base;
        const cls = Math.abs(diff) < 0.05 ? "" : diff > 0 ? "more" : "less";
        const td = el("td", fmt("credit", v), `num ${cls}`);
        td.dataset.model = m;
        td.dataset.value = String(v);
        if (m !== "last_click") td.title = `${diff >= 0 ? "+" : ""}${diff.toFixed(1)} vs last click`;
        tr.append(td);
      }
      body.append(tr);
    }
    table.tBodies[0].replaceChildren(body);
    $("models-note").textContent = view.span_start
      ? `conversions credited per channel, ${clock(view.span_start)}–${clock(view.span_end)}`
      : "conversions credited per channel";
  }

  // --- pipeline health ----------------------------------------------------------------------------------
  function renderHealth() {
    const h = state.health || {};
    const num = (v, digits) => (isNum(v) ? v.toLocaleString("en-US", { maximumFractionDigits: digits }) : "—");
    $("h-events").textContent = num(h.events_per_s, 0);
    $("h-dlq").textContent = num(h.dead_letter_per_s, 2);
    $("h-dlq-share").textContent = isNum(h.dead_letter_share) ? (h.dead_letter_share * 100).toFixed(2) + "%" : "—";
    $("h-lag").textContent = isNum(h.event_lag_s) ? h.event_lag_s.toFixed(2) + " s" : "—";
    $("h-consumer-lag").textContent = num(h.consumer_lag, 0);
    $("h-pending").textContent = num(h.pending_conversions, 0);
    $("h-dlq").parentElement.classList.toggle("bad", isNum(h.dead_letter_share) && h.dead_letter_share > 0.05);
    $("health-note").textContent = `rates over the last ${num(h.span_s, 0)} s; ${num(h.journeys, 0)} journeys`;
    if (isNum(h.events_per_s)) {
      const [xs, ys] = state.eventsHistory;
      xs.push(Date.now() / 1000);
      ys.push(h.events_per_s);
      if (xs.length > 300) { xs.shift(); ys.shift(); }
    }
    chart("chart-events", [{ label: "events/s", stroke: "#2563eb", fill: "rgba(37,99,235,0.08)" }],
      state.eventsHistory, (v) => whole.format(v), 120);
  }

  // --- the loop -----------------------------------------------------------------------------------------
  function render() {
    renderTable();
    renderTrends();
    renderLtv();
    renderModels();
    renderHealth();
    page.renders += 1;
    if (page.firstDataMs === null && state.kpis.length) page.firstDataMs = performance.now();
    $("status").textContent = `updated ${clock(Date.now())}`;
    $("status").classList.remove("error");
  }

  async function tick() {
    try {
      await poll();
      render();
    } catch (error) {
      page.errors += 1;
      $("status").textContent = `no answer from the worker (${error.message}): retrying`;
      $("status").classList.add("error");
    } finally {
      setTimeout(tick, REFRESH_MS);
    }
  }

  page.chartPoints = () => Object.fromEntries(Object.entries(charts).map(([id, c]) => [
    id, c.plot.data.slice(1).reduce((n, ys) => n + ys.filter(isNum).length, 0)]));

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function loadInfo() {
    for (;;) {
      try {
        return await getJSON("/api/v1/info");
      } catch (error) {
        $("status").textContent = `no answer from the worker (${error.message}): retrying`;
        $("status").classList.add("error");
        await sleep(2000);
      }
    }
  }

  async function start() {
    state.info = await loadInfo();
    const info = state.info;
    money = new Intl.NumberFormat("en-US", { style: "currency", currency: info.reporting_currency });
    moneyAxis = new Intl.NumberFormat("en-US", { style: "currency", currency: info.reporting_currency,
      notation: "compact", maximumFractionDigits: 1 });
    $("meta").textContent = `money in ${info.reporting_currency} · model ${info.attribution_model} · ` +
      `windows of ${info.metrics_window_ms / 1000} s · signals over ${info.signal_window_ms / 1000} s ` +
      `(pause under ROMI ${info.romi_floor}, scale from ${info.romi_scale})`;
    $("logout").hidden = !info.login;
    for (const button of document.querySelectorAll(".tabs button")) {
      button.addEventListener("click", () => {
        state.window = button.dataset.window;
        document.querySelectorAll(".tabs button").forEach((b) => b.classList.toggle("active", b === button));
        renderTable();
      });
    }
    $("kpi-table").tHead.addEventListener("click", (event) => {
      const th = event.target.closest("th[data-key]");
      if (th) sortBy(th.dataset.key);
    });
    $("trend-channel").addEventListener("change", (event) => {
      state.trendChannel = event.target.value;
      renderTrends();
    });
    window.addEventListener("resize", () => {
      for (const [id, c] of Object.entries(charts)) c.plot.setSize({ width: $(id).clientWidth, height: c.plot.height });
    });
    await tick();
  }

  start().catch((error) => {
    $("status").textContent = `could not start: ${error.message}`;
    $("status").classList.add("error");
  });
})();
