// The sales page's three charts (Chart.js, vendored), from the JSON the page carries.
(function () {
  var data = document.getElementById("chart-data");
  if (!data || !window.Chart) return;
  var charts = JSON.parse(data.textContent);
  var rupiah = function (v) { return "Rp " + Number(v).toLocaleString("id-ID"); };
  window.consoleCharts = {};
  Object.keys(charts).forEach(function (name) {
    var canvas = document.getElementById("chart-" + name);
    if (!canvas) return;
    var c = charts[name];
    window.consoleCharts[name] = new Chart(canvas, {
      type: name === "by_day" ? "line" : "bar",
      data: {
        labels: c.labels,
        datasets: [
          {label: "Takings", data: c.takings, yAxisID: "y", backgroundColor: "#0b6e4f", borderColor: "#0b6e4f"},
          {label: "Drinks", data: c.count, yAxisID: "y1", backgroundColor: "#f0a202", borderColor: "#f0a202"}
        ]
      },
      options: {
        animation: false, maintainAspectRatio: false,
        scales: {
          y: {beginAtZero: true, position: "left", ticks: {callback: rupiah}},
          y1: {beginAtZero: true, position: "right", grid: {drawOnChartArea: false}, ticks: {precision: 0}}
        },
        plugins: {tooltip: {callbacks: {label: function (ctx) {
          return ctx.dataset.yAxisID === "y" ? rupiah(ctx.parsed.y) : ctx.parsed.y + " drinks";
        }}}}
      }
    });
  });
})();
