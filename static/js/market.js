// The market page's price chart: one line per pool, in dollars per CH.
(function () {
  const data = JSON.parse(document.getElementById("price-history").textContent);
  const colours = { int8: "#1565c0", fp16: "#2e7d32", fp32: "#ef6c00", fp8: "#6a1b9a" };
  const datasets = Object.entries(data.series).map(([pool, values]) => ({
    label: pool.toUpperCase(),
    data: values.map((v) => (v === null ? null : v / 100000)),
    borderColor: colours[pool],
    spanGaps: true,
    tension: 0.2,
  }));
  const labels = data.labels.map((iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  new Chart(document.getElementById("price-chart"), {
    type: "line",
    data: { labels, datasets },
    options: { scales: { y: { title: { display: true, text: "$ per CH" } } }, animation: false },
  });
})();
