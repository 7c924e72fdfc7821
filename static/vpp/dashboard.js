// Fleet dashboard. Live over /ws/dashboard: committed telemetry (station power and state), and, once subscribed,
// the regulation series every 2 s and the whole overview every 15 s. A dropped socket shows the offline banner;
// on reconnecting the page re-reads the overview and subscribes again (resynchronised, no reload).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let overview = JSON.parse($("overview-data").textContent);
  const recent = JSON.parse($("recent-power").textContent);
  const KW = { title: { text: "power (kW, + charge / − discharge)" }, zeroline: true };
  const TIME = { title: { text: "time (UTC)" }, type: "date" };
  const CONFIG = { responsive: true, displaylogo: false };
  const LEGEND = { orientation: "h", y: -0.25 };
  const MARGIN = { t: 40, r: 60, l: 60, b: 70 };

  // --- flexibility envelope ----------------------------------------------------------------------------------------
  function drawFlex(flex) {
    const kw = (arr) => arr.map((w) => w / 1000);
    const t = flex.interval_starts;
    Plotly.react("flex-chart", [
      { x: t, y: kw(flex.max_w), name: "most charging (kW)", line: { width: 0 }, mode: "lines" },
      { x: t, y: kw(flex.min_w), name: "most discharging (kW)", fill: "tonexty", line: { width: 0 }, mode: "lines",
        fillcolor: "rgba(46,144,250,0.2)" },
      { x: t, y: kw(flex.baseline_w), name: "baseline (kW)", mode: "lines", line: { dash: "dot", color: "#1d2430" } },
    ], { title: { text: "Fleet flexibility envelope, next 24 h" }, xaxis: TIME, yaxis: KW, legend: LEGEND,
         margin: MARGIN }, CONFIG);
    $("up-now").textContent = flex.up_w.length ? (flex.up_w[0] / 1000).toFixed(1) + " kW" : "—";
    $("down-now").textContent = flex.down_w.length ? (flex.down_w[0] / 1000).toFixed(1) + " kW" : "—";
  }

  // --- live fleet power: stations online only ----------------------------------------------------------------------
  const stations = {}; // station id -> {online, power}
  function loadStations(rows) {
    rows.forEach((s) => { stations[s.station_id] = { online: s.online, power: s.power_w || 0 }; });
  }
  const total = () => Object.values(stations).reduce((a, s) => a + (s.online ? s.power : 0), 0);
  let powerRange = overview.power_range_kw.slice();
  function powerLayout() {
    return { title: { text: "Fleet power, live (stations online)" }, xaxis: TIME,
             yaxis: Object.assign({}, KW, { range: powerRange }), legend: LEGEND, margin: MARGIN, showlegend: true };
  }
  function seedPower(seed) {
    const x = seed.times.map((t) => new Date(t));
    Plotly.newPlot("power-chart", [{ x: x, y: seed.kw.slice(), name: "fleet power (kW)", mode: "lines",
      line: { color: "#2e90fa" } }], powerLayout(), CONFIG);
  }
  function widen(kw) { // a fixed range; widened only when a real value falls outside it, never narrowed to noise
    if (kw < powerRange[0] || kw > powerRange[1]) {
      powerRange = [Math.min(powerRange[0], kw * 1.2), Math.max(powerRange[1], kw * 1.2)];
      Plotly.relayout("power-chart", { "yaxis.range": powerRange });
    }
  }

  // --- regulation now ------------------------------------------------------------------------------------------------
  const reg = { key: null, signal: { t: [], v: [] }, setpoint: { t: [], v: [] }, measured: { t: [], v: [] } };
  const KEEP_MS = 10 * 60 * 1000;
  function merge(into, add) {
    const last = into.t.length ? into.t[into.t.length - 1] : "";
    add.t.forEach((t, i) => { if (t > last) { into.t.push(t); into.v.push(add.v[i]); } });
    const cutoff = new Date(Date.now() - KEEP_MS).toISOString();
    while (into.t.length && into.t[0] < cutoff) { into.t.shift(); into.v.shift(); }
  }
  function drawRegulation(portfolios, incremental) {
    const p = portfolios[0];
    if (!p) {
      reg.key = null;
      $("running-score").textContent = "No regulation awarded to your fleets right now.";
      $("regulation-label").textContent = "";
      Plotly.react("regulation-chart", [], regulationLayout(10), CONFIG);
      return;
    }
    const key = p.product + "/" + p.portfolio;
    if (!incremental || key !== reg.key) {
      reg.key = key;
      ["signal", "setpoint", "measured"].forEach((k) => { reg[k] = { t: [], v: [] }; });
    }
    merge(reg.signal, p.signal);
    merge(reg.setpoint, p.setpoint_kw);
    merge(reg.measured, p.measured_kw);
    $("regulation-label").textContent = p.product + ", " + p.portfolio + ", " + p.capacity_kw + " kW awarded" +
      (portfolios.length > 1 ? " (+" + (portfolios.length - 1) + " more portfolios)" : "");
    if (p.running_score) {
      const s = p.running_score;
      $("running-score").textContent = s.available
        ? "Running score, this hour from " + s.from.slice(11, 16) + " UTC (" + s.rows + " rows of 10 s): composite " + s.composite.toFixed(3) + " (accuracy " +
          s.accuracy.toFixed(3) + ", delay " + s.delay.toFixed(3) + ", precision " + s.precision.toFixed(3) + ") — " +
          (s.passed ? "passing" : "below the pass mark") + " " + s.pass_mark
        : "Running score: " + s.why;
    }
    const dates = (a) => a.map((t) => new Date(t));
    Plotly.react("regulation-chart", [
      { x: dates(reg.setpoint.t), y: reg.setpoint.v, name: "fleet setpoint (kW)", mode: "lines",
        line: { shape: "hv", color: "#f79009" } },
      { x: dates(reg.measured.t), y: reg.measured.v, name: "measured fleet power (kW)", mode: "lines",
        line: { color: "#2e90fa" } },
      { x: dates(reg.signal.t), y: reg.signal.v, name: "regulation signal (−1…1, right axis)", mode: "lines",
        yaxis: "y2", line: { shape: "hv", color: "#98a2b3", width: 1 } },
    ], regulationLayout(p.capacity_kw), CONFIG);
  }
  function regulationLayout(capacityKw) {
    const span = Math.max(Math.abs(powerRange[0]), Math.abs(powerRange[1]), capacityKw * 2.5);
    return { title: { text: "Regulation: signal, fleet setpoint and measured response" }, xaxis: TIME,
             yaxis: Object.assign({}, KW, { range: [-span, span] }),
             yaxis2: { title: { text: "signal (normalised)" }, overlaying: "y", side: "right", range: [-1.05, 1.05] },
             legend: LEGEND, margin: MARGIN, showlegend: true };
  }

  // --- history (one selector makes the chart and its CSV) ------------------------------------------------------------
  let span = "day";
  function drawHistory() {
    fetch("/dashboard/history.json?span=" + span, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((h) => {
        const x = h.times.map((t) => new Date(t));
        Plotly.react("history-chart", [
          { x: x, y: h.measured_kw, name: "measured (kW, mean per " + h.bucket_s / 60 + " min)", mode: "lines",
            connectgaps: false, line: { color: "#2e90fa" } },
          { x: x, y: h.simulated_kw, name: "simulated history (kW)", mode: "lines", connectgaps: false,
            line: { color: "#98a2b3", dash: "dot" } },
        ], { title: { text: "Fleet power, last " + span }, xaxis: TIME, yaxis: Object.assign({}, KW),
             legend: LEGEND, margin: MARGIN, showlegend: true }, CONFIG);
      });
    $("history-csv").href = "/dashboard/history.csv?span=" + span;
  }
  document.querySelectorAll("#history-spans button").forEach((b) => b.addEventListener("click", () => {
    span = b.dataset.span;
    document.querySelectorAll("#history-spans button").forEach((o) => o.classList.toggle("on", o === b));
    drawHistory();
  }));

  // --- revenue by product: one bar per product (the legend names them), today and this month ----------------------
  function drawRevenueProducts(revenue) {
    const products = revenue.by_product || [];
    Plotly.react("revenue-product-chart", products.map((p) => ({
      type: "bar", name: p.product + " (" + revenue.currency + ")", x: ["today", "this month"],
      y: [Number(p.today), Number(p.month)],
    })), { title: { text: "Net revenue by product (" + revenue.currency + ")" }, barmode: "group",
           yaxis: { title: { text: "net revenue (" + revenue.currency + ")" }, zeroline: true }, legend: LEGEND,
           margin: MARGIN }, CONFIG);
    const body = $("revenue-by-product").querySelector("tbody");
    body.replaceChildren();
    products.forEach((p) => {
      const tr = el("tr");
      tr.append(el("td", {}, p.product), el("td", {}, p.today_text), el("td", {}, p.month_text),
        el("td", {}, p.simulated_text));
      body.append(tr);
    });
  }

  // --- overview: cards, vehicles, alerts, revenue ------------------------------------------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return d.toISOString().slice(0, 16).replace("T", " ");
  }
  function applyOverview(o) {
    overview = o;
    loadStations(o.stations);
    $("online").textContent = o.stations_online;
    $("vehicles-count").textContent = o.vehicles.length;
    $("fleet-kw").textContent = Math.round(o.fleet_power_w / 1000);
    $("revenue-today").textContent = o.revenue.today.net_text;
    $("revenue-month").textContent = o.revenue.month.net_text;
    drawFlex(o.flexibility);
    drawRevenueProducts(o.revenue);
    o.stations.forEach((s) => {
      const row = $("st-" + s.station_id);
      if (!row) return;
      const cell = row.querySelector(".state");
      cell.textContent = s.online ? "online" : "offline";
      cell.className = "state " + (s.online ? "online" : "offline");
      row.querySelector(".power").textContent = s.power_w === null ? "" : s.power_w + " W";
    });
    // Vehicles: update the rows in place (the forms keep what the user is typing).
    o.vehicles.forEach((v) => {
      const row = document.querySelector('tr[data-vehicle="' + v.vehicle_id + '"]');
      if (!row) return;
      row.classList.toggle("risk", v.at_risk);
      const bar = row.querySelector(".soc");
      bar.querySelector("i").style.width = v.soc_pct + "%";
      bar.querySelector("b").style.left = v.floor_pct + "%";
      bar.querySelector("u").style.left = v.target_pct + "%";
      row.querySelector(".soc-pct").textContent = v.soc_pct + " %";
      const projected = row.querySelector(".projected");
      projected.textContent = v.projected_pct + " % of " + v.target_pct + " %";
      if (v.at_risk) projected.append(" ", el("strong", { class: "warn", "data-testid": "target-at-risk" }, "target at risk"));
    });
    const list = $("alerts");
    list.replaceChildren();
    if (!o.alerts.length) list.append(el("li", { class: "none" }, "No alerts in the last 24 h."));
    o.alerts.forEach((a) => {
      const li = el("li", { class: a.open ? "open" : "cleared", "data-kind": a.kind });
      li.append(el("strong", {}, a.label), ": " + a.message + " ",
        el("span", { class: "muted" }, "raised " + fmtTime(a.raised_at) + (a.cleared_at ? ", cleared " + fmtTime(a.cleared_at) : "")));
      list.append(li);
    });
    const body = $("revenue-by-vehicle").querySelector("tbody");
    body.replaceChildren();
    if (!o.revenue.by_vehicle.length) {
      const empty = el("td", { colspan: "3" }, "No settled revenue this month yet.");
      body.append(el("tr"));
      body.lastChild.append(empty);
    }
    o.revenue.by_vehicle.forEach((r) => {
      const tr = el("tr");
      const name = el("td", {}, r.vehicle);
      if (r.simulated) name.append(" ", el("span", { class: "sim" }, "simulated"));
      tr.append(name, el("td", {}, r.today_text), el("td", {}, r.month_text));
      body.append(tr);
    });
    if (o.vehicles.length !== document.querySelectorAll("tr[data-vehicle]").length) {
      $("command-result").textContent = "Vehicles plugged in changed: reload the page to command the new ones.";
    }
  }
  function resync() {
    return fetch("/dashboard/overview.json", { credentials: "same-origin" }).then((r) => r.json()).then(applyOverview);
  }

  // --- commands ----------------------------------------------------------------------------------------------------
  const csrf = () => (document.querySelector("input[name=csrfmiddlewaretoken]") || {}).value || "";
  document.querySelectorAll("form.cmd").forEach((form) => form.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = Object.fromEntries(new FormData(form).entries());
    delete body.csrfmiddlewaretoken;
    Object.keys(body).forEach((k) => { body[k] = Number(body[k]); });
    fetch(form.action, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf(), Accept: "application/json" },
      body: JSON.stringify(body) })
      .then((r) => r.json().then((data) => ({ ok: r.ok, data: data })))
      .then(({ ok, data }) => {
        const out = $("command-result");
        out.textContent = ok ? data.message : "Refused: " + data.detail;
        out.className = ok ? "ok" : "error";
        if (ok) resync();
      });
  }));

  // --- the socket ----------------------------------------------------------------------------------------------------
  function applyUpdate(update) {
    const row = $("st-" + update.station_id);
    const station = stations[update.station_id] || (stations[update.station_id] = { online: true, power: 0 });
    if (update.kind === "meter") {
      const v = update.values;
      if ("Power.Active.Import" in v || "Power.Active.Export" in v) {
        station.power = (v["Power.Active.Import"] || 0) - (v["Power.Active.Export"] || 0);
        if (row) row.querySelector(".power").textContent = station.power + " W";
      }
    } else if (update.kind === "connection") {
      station.online = update.status === "online";
      if (row) {
        const cell = row.querySelector(".state");
        cell.textContent = update.status;
        cell.className = "state " + update.status;
      }
      $("online").textContent = Object.values(stations).filter((s) => s.online).length;
    }
    if (row && update.timestamp) row.querySelector(".seen").textContent = update.timestamp.slice(0, 19).replace("T", " ");
  }

  let lastPlot = 0;
  let everConnected = false;
  let retry = 1000;
  function connect() {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/dashboard");
    ws.onopen = () => {
      $("offline-banner").hidden = true;
      retry = 1000;
      ws.send(JSON.stringify({ subscribe: ["regulation", "overview"] }));
      if (everConnected) resync(); // what changed while the socket was down
      everConnected = true;
    };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      (msg.updates || []).forEach(applyUpdate);
      if (msg.overview) applyOverview(msg.overview);
      if (msg.regulation) drawRegulation(msg.regulation, msg.incremental);
      const now = Date.now();
      if (msg.updates && now - lastPlot > 1000) { // at most one chart point a second, however many stations report
        lastPlot = now;
        const kw = total() / 1000;
        $("fleet-kw").textContent = Math.round(kw);
        widen(kw);
        Plotly.extendTraces("power-chart", { x: [[new Date()]], y: [[kw]] }, [0], 3600);
      }
    };
    ws.onclose = () => {
      $("offline-banner").hidden = false;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }

  loadStations(overview.stations);
  drawFlex(overview.flexibility);
  drawRevenueProducts(overview.revenue);
  seedPower(recent);
  drawRegulation([], false);
  drawHistory();
  fetch("/dashboard/regulation.json", { credentials: "same-origin" }).then((r) => r.json())
    .then((d) => drawRegulation(d.portfolios, false));
  connect();
})();
