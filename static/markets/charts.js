// Draws the plotly.js figures the pages hand over with json_script (<script id="<chart id>-data">), the same way on
// every page: responsive, smaller titles and margins on a phone, a note when a chart has nothing to plot.
window.vppChart = function (id, emptyText) {
  const el = document.getElementById(id);
  const data = document.getElementById(id + "-data");
  if (!el || !data) return;
  const fig = JSON.parse(data.textContent);
  const narrow = el.clientWidth < 600;
  if (narrow) {
    fig.layout.title = Object.assign({}, fig.layout.title, {font: {size: 12}});
    fig.layout.margin = Object.assign({}, fig.layout.margin, {l: 45, r: fig.layout.yaxis2 && fig.layout.yaxis2.overlaying ? 45 : 10});
    fig.layout.font = {size: 10};
  }
  if (!fig.data.length && emptyText) {
    fig.layout.annotations = [{text: emptyText, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.6}];
  }
  Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false});
};
