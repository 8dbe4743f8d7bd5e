// The market page's price chart, in dollars per CH: per pool, each round's clearing price as a point (none where
// nothing traded) and the smoothed price index as a line.
(function () {
  const data = JSON.parse(document.getElementById("price-history").textContent);
  const colours = { int8: "#1565c0", fp16: "#2e7d32", fp32: "#ef6c00", fp8: "#6a1b9a" };
  const dollars = (values) => values.map((v) => (v === null ? null : v / 100000));
  const datasets = [];
  for (const [pool, values] of Object.entries(data.series)) {
    datasets.push({
      label: `${pool.toUpperCase()} index`,
      data: dollars(values),
      borderColor: colours[pool],
      backgroundColor: colours[pool],
      pointRadius: 0,
      pointStyle: "line",
      spanGaps: true,
      tension: 0.2,
    });
    datasets.push({
      label: `${pool.toUpperCase()} clearing price`,
      data: dollars((data.prices || {})[pool] || []),
      borderColor: colours[pool],
      backgroundColor: colours[pool],
      showLine: false,
      pointRadius: 3,
      pointStyle: "circle",
    });
  }
  const labels = data.labels.map((iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  new Chart(document.getElementById("price-chart"), {
    type: "line",
    data: { labels, datasets },
    options: {
      scales: { y: { title: { display: true, text: "$ per CH" } } },
      animation: false,
      plugins: {
        legend: { labels: { usePointStyle: true } },
        tooltip: {
          callbacks: {
            title: (items) => (items.length ? new Date(data.labels[items[0].dataIndex]).toLocaleString() : ""),
          },
        },
      },
    },
  });
})();
