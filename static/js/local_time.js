// Times in the viewer's own time zone. The server stores and sends instants in UTC (the pages' fallback without
// JavaScript); this script shows them in the browser's zone and tells the forms which zone a typed time is in.
//  - <input data-browser-time-zone> (hidden): the browser's zone, e.g. "Europe/Berlin", sent with the form.
//  - <span data-time-zone-name>: the zone's name, in help texts ("your local time (Europe/Berlin)").
//  - <input type="datetime-local" data-utc="2026-01-01T12:00:00+00:00">: the suggested instant, as local time.
//  - <input data-default-browser-time-zone list="...">: a time-zone picker, set to the browser's zone if it is listed.
//  - <time datetime="..." data-local>: the instant written in local time, with the zone's short name.
(function () {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const pad = (n) => String(n).padStart(2, "0");
  const localInput = (d) =>
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  const written = new Intl.DateTimeFormat(undefined, {
    day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short",
  });

  function localize(root) {
    root.querySelectorAll("input[data-browser-time-zone]").forEach((el) => { el.value = zone; });
    root.querySelectorAll("[data-time-zone-name]").forEach((el) => { el.textContent = zone; });
    root.querySelectorAll("input[data-utc]:not([data-localized])").forEach((el) => {
      const instant = new Date(el.dataset.utc);
      if (!Number.isNaN(instant.getTime())) el.value = localInput(instant);
      el.dataset.localized = ""; // once: a value the user typed is never converted
    });
    root.querySelectorAll("input[data-default-browser-time-zone]").forEach((el) => {
      const listed = el.list && [...el.list.options].some((option) => option.value === zone);
      if (listed) el.value = zone;
      el.removeAttribute("data-default-browser-time-zone");
    });
    root.querySelectorAll("time[datetime][data-local]").forEach((el) => {
      const instant = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(instant.getTime())) {
        el.textContent = written.format(instant);
        el.title = `${zone}; ${instant.toISOString().slice(0, 16).replace("T", " ")} UTC`;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => localize(document));
  document.addEventListener("htmx:afterSwap", (event) => localize(event.target));
})();
