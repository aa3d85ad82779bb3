/* The finance dashboard (templates/admin/dashboard/): draws the charts of every section htmx swaps in.
 *
 * Chart data comes from json_script blocks built by monitoring/charts.py: amounts are exact decimal strings in
 * the currency's major unit and rates percent strings; here they are only plotted and formatted for display.
 * window.dashboardLoadedAt is set once per page load: the browser test checks it survives the polling. */
(function () {
  "use strict";
  window.dashboardLoadedAt = window.dashboardLoadedAt || Date.now();

  function formatter(spec) {
    if (spec.format === "percent") {
      return function (value) { return value === null ? "–" : Number(value).toFixed(1) + "%"; };
    }
    if (spec.format === "money") {
      var money = new Intl.NumberFormat(undefined, { style: "currency", currency: spec.currency });
      return function (value) { return money.format(value); };
    }
    var count = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
    return function (value) { return count.format(value); };
  }

  function options(spec) {
    var format = formatter(spec);
    var valueAxis = spec.horizontal ? "x" : "y";
    var scales = { x: { stacked: spec.stacked }, y: { stacked: spec.stacked } };
    scales[valueAxis].beginAtZero = true;
    scales[valueAxis].ticks = { callback: function (value) { return format(value); } };
    if (spec.format === "count") { scales[valueAxis].ticks.precision = 0; }
    return {
      animation: false,
      maintainAspectRatio: false,
      indexAxis: spec.horizontal ? "y" : "x",
      spanGaps: true,
      scales: scales,
      plugins: {
        legend: { position: "bottom" },
        tooltip: {
          callbacks: {
            label: function (item) {
              var value = spec.horizontal ? item.parsed.x : item.parsed.y;
              return item.dataset.label + ": " + format(value);
            },
          },
        },
      },
    };
  }

  function drawCharts(root) {
    if (typeof Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var source = document.getElementById(canvas.dataset.chart);
      if (!source) { return; }
      var spec = JSON.parse(source.textContent);
      var existing = Chart.getChart(canvas);
      if (existing) { existing.destroy(); }
      new Chart(canvas, {
        type: spec.type,
        data: { labels: spec.labels, datasets: spec.datasets },
        options: options(spec),
      });
    });
  }

  function destroyCharts(root) {
    if (typeof Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var chart = Chart.getChart(canvas);
      if (chart) { chart.destroy(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
    document.body.addEventListener("htmx:beforeSwap", function (event) { destroyCharts(event.detail.target); });
    document.body.addEventListener("htmx:afterSwap", function (event) {
      drawCharts(event.detail.target);
      var stamp = document.getElementById("dashboard-updated");
      if (stamp) { stamp.textContent = new Date().toLocaleTimeString(); }
    });
  });
})();
