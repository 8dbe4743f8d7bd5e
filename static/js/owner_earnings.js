// The earnings page's chart: what each car earned per day, stacked, in dollars (the data comes in integer cents).
(function () {
  const data = JSON.parse(document.getElementById("daily-earnings").textContent);
  const colours = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#c62828", "#5d4037", "#9e9d24"];
  const dollars = (cents) => `$${(cents / 100).toFixed(2)}`;
  const datasets = data.datasets.map((series, n) => ({
    label: series.label,
    data: series.data.map((cents) => cents / 100),
    backgroundColor: colours[n % colours.length],
  }));
  // ISO dates are calendar days of the site: read them as local midnight, not as UTC.
  const labels = data.labels.map((iso) =>
    new Date(`${iso}T00:00:00`).toLocaleDateString([], { month: "short", day: "numeric" }),
  );
  new Chart(document.getElementById("earnings-chart"), {
    type: "bar",
    data: { labels, datasets },
    options: {
      animation: false,
      scales: {
        x: { stacked: true },
        y: { stacked: true, title: { display: true, text: "$ earned" } },
      },
      plugins: {
        tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${dollars(Math.round(item.parsed.y * 100))}` } },
      },
    },
  });
})();
