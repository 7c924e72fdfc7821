// Fleet dashboard: the flexibility envelope from the page, live fleet power over the /ws/dashboard socket.
(function () {
  const flex = JSON.parse(document.getElementById("flex-data").textContent);
  const kw = (arr) => arr.map((w) => w / 1000);
  const t = flex.interval_starts;
  const baseline = kw(flex.baseline_w);
  Plotly.newPlot("flex-chart", [
    { x: t, y: kw(flex.max_w), name: "max (charge)", line: { width: 0 }, mode: "lines" },
    { x: t, y: kw(flex.min_w), name: "min (discharge)", fill: "tonexty", line: { width: 0 }, mode: "lines",
      fillcolor: "rgba(46,144,250,0.2)" },
    { x: t, y: baseline, name: "baseline", line: { dash: "dot", color: "#1d2430" } },
  ], { title: "Fleet flexibility envelope, next 24 h (kW, + charge / − discharge)", margin: { t: 40 } },
     { responsive: true });
  document.getElementById("up-now").textContent = (flex.up_w[0] / 1000).toFixed(1) + " kW";
  document.getElementById("down-now").textContent = (flex.down_w[0] / 1000).toFixed(1) + " kW";

  const stationPower = {};
  document.querySelectorAll("tr[id^=st-]").forEach((row) => {
    const txt = row.querySelector(".power").textContent.trim();
    if (txt) stationPower[row.id.slice(3)] = parseInt(txt, 10);
  });
  const total = () => Object.values(stationPower).reduce((a, b) => a + b, 0);
  Plotly.newPlot("power-chart", [{ x: [new Date()], y: [total() / 1000], name: "fleet power", mode: "lines" }],
    { title: "Fleet power, live (kW)", margin: { t: 40 } }, { responsive: true });

  function apply(update) {
    const row = document.getElementById("st-" + update.station_id);
    if (update.kind === "meter") {
      const v = update.values;
      if ("Power.Active.Import" in v || "Power.Active.Export" in v) {
        stationPower[update.station_id] = (v["Power.Active.Import"] || 0) - (v["Power.Active.Export"] || 0);
        if (row) row.querySelector(".power").textContent = stationPower[update.station_id] + " W";
      }
    } else if (update.kind === "connection" && row) {
      const cell = row.querySelector(".state");
      cell.textContent = update.status;
      cell.className = "state " + update.status;
      document.getElementById("online").textContent = document.querySelectorAll("td.state.online").length;
    }
    if (row) row.querySelector(".seen").textContent = update.timestamp.slice(0, 19).replace("T", " ");
  }

  let lastPlot = 0;
  function connect() {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/dashboard");
    ws.onmessage = (e) => {
      (JSON.parse(e.data).updates || []).forEach(apply);
      const now = Date.now();
      if (now - lastPlot > 1000) {  // at most one chart point a second, however many stations report
        lastPlot = now;
        document.getElementById("fleet-kw").textContent = Math.round(total() / 1000);
        Plotly.extendTraces("power-chart", { x: [[new Date()]], y: [[total() / 1000]] }, [0], 3600);
      }
    };
    ws.onclose = () => setTimeout(connect, 2000);
  }
  connect();
})();
