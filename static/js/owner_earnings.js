// The earnings page's chart: what each car earned per day, stacked, in dollars (the data comes in integer n¢:
// 1 $ = 1e11 n¢, core/money.py). Amounts read as on the page: whole cents from a cent up, else 3 significant digits.
(function () {
  const data = JSON.parse(document.getElementById("daily-earnings").textContent);
  const colours = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#c62828", "#5d4037", "#9e9d24"];
  const NC_PER_DOLLAR = 1e11;
  const dollars = (value) => {
    const amount = Math.abs(value);
    let text;
    if (amount === 0) text = "0.00";
    else if (amount >= 0.01) text = amount.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    else text = amount.toLocaleString("en-US", { maximumSignificantDigits: 3, maximumFractionDigits: 20 });
    return `${value < 0 ? "−" : ""}$${text}`;
  };
  const datasets = data.datasets.map((series, n) => ({
    label: series.label,
    data: series.data.map((nc) => nc / NC_PER_DOLLAR),
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
        y: { stacked: true, title: { display: true, text: "$ earned" }, ticks: { callback: (value) => dollars(value) } },
      },
      plugins: {
        tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${dollars(item.parsed.y)}` } },
      },
    },
  });
})();
