"""How fast the pages answer at scale: 10,000 cars, 1,000 bids, 1,000,000 ledger entries (bench/seed_scale.py).

    .venv/bin/python bench/seed_scale.py          # once (two to four minutes); --reset starts again
    .venv/bin/python bench/pages.py [--repeats 30]

Each page is requested `--repeats` times (after two warm-up requests) through Django's test Client, in this process,
as a logged-in user, against the bench database: the whole request (middleware, session, view, queries, template).
It reports p50, p95 and max in ms (wall), this process's CPU time (p50: the view, ORM and templates, what load on a
shared machine disturbs least), and the number and total time of the SQL queries of one request. The baseline is the
login page (a form and the session, no query of the data), requested right before each timed request so that both
see the same load: each page's ratio is its p50 over the baseline's. The target is p95 < 150 ms.

Pages: the owner dashboard (bench_owner's 50 cars), the customer's job page (a running bid with 200 work units and 60
rounds won), the public market page, every Django admin changelist, and the staff pages that read the whole ledger
or fleet (finance, fleet, dashboard), with the owner's earnings and the customer's billing pages. The staff finance
page reconciles the ledger with Stripe: Stripe's side is stubbed (empty lists) so that only our own work is timed.

The cars' live state in Redis is written afresh first (heartbeats 0–20 s old), as the seed's would be stale.
Results: bench/results/pages.json. Tests never assert timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import seed_scale  # noqa: E402 - sets the bench database and Redis in the environment before Django starts

TARGET_P95_MS = 150.0


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def _get(client, url: str, headers: dict) -> tuple[float, float]:
    """One request: its wall time and this process's CPU time (Python: view, ORM, template), in ms."""
    began, cpu = time.perf_counter(), time.process_time()
    response = client.get(url, headers=headers)
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    return (time.perf_counter() - began) * 1000, (time.process_time() - cpu) * 1000


def _measure(client, url: str, repeats: int, baseline: tuple, headers: dict | None = None) -> dict:
    """Time the page `repeats` times, each time right after a request of the baseline page, so that both see the
    same load on a shared machine; the ratio is of their medians."""
    from django.db import connection

    headers = headers or {}
    for _ in range(2):
        _get(client, url, headers)
    queries: list[float] = []  # ms of each query of one request

    def timed(execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append((time.perf_counter() - began) * 1000)

    with connection.execute_wrapper(timed):
        _get(client, url, headers)
    base_client, base_url = baseline
    times, cpu, base_times = [], [], []
    for _ in range(repeats):
        base_times.append(_get(base_client, base_url, {})[0])
        wall, used = _get(client, url, headers)
        times.append(wall)
        cpu.append(used)
    return {
        "url": url,
        "queries": len(queries),
        "query_ms": round(sum(queries), 2),
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(_percentile(times, 95), 2),
        "max_ms": round(max(times), 2),
        "cpu_p50_ms": round(statistics.median(cpu), 2),
        "baseline_p50_ms": round(statistics.median(base_times), 2),
        "ratio_p50_to_baseline": round(statistics.median(times) / statistics.median(base_times), 2),
    }


def _pages():
    """(name, user, url, headers) for every page measured."""
    from django.contrib import admin
    from django.urls import reverse

    from marketplace.models import Bid

    job = Bid.objects.filter(customer__username="bench_customer").order_by("pk").first()
    pages = [
        ("owner dashboard", "bench_owner", reverse("fleet:dashboard"), None),
        ("owner dashboard (htmx table)", "bench_owner", reverse("fleet:fleet-live"), {"HX-Request": "true"}),
        ("customer job page", "bench_customer", reverse("marketplace:bid", args=[job.pk]), None),
        ("customer job (htmx progress)", "bench_customer", reverse("marketplace:bid", args=[job.pk]),
         {"HX-Request": "true"}),
        ("market", "bench_customer", reverse("market"), None),
        ("owner earnings", "bench_owner", reverse("billing:owner-earnings"), None),
        ("customer billing", "bench_customer", reverse("billing:customer-billing"), None),
        ("staff finance", "bench_staff", reverse("billing:staff-finance"), None),
        ("staff fleet", "bench_staff", reverse("fleet:staff-fleet"), None),
        ("staff dashboard", "bench_staff", reverse("ops:dashboard"), None),
        ("admin index", "bench_staff", reverse("admin:index"), None),
    ]  # fmt: skip
    for model in sorted(admin.site._registry, key=lambda m: (m._meta.app_label, m._meta.model_name)):
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        pages.append((f"admin {model._meta.app_label}.{model._meta.model_name}", "bench_staff", url, None))
    return pages


def _stub_stripe() -> None:
    """Reconciliation reads every Stripe object: timed here is our side only (Stripe is not part of this bench)."""
    from billing import stripe_gateway

    for name in ("payment_intents", "refunds", "transfers"):
        setattr(stripe_gateway, name, lambda *args, **kwargs: [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", help="measure only the pages whose name contains this")
    args = parser.parse_args()

    import django

    django.setup()
    from django.test import Client
    from django.test.utils import setup_test_environment

    from accounts.models import User
    from billing.models import LedgerEntry
    from fleet.models import Vehicle
    from marketplace.models import Bid

    load_at_start = os.getloadavg()
    setup_test_environment()  # the test Client's host, and mail kept in memory
    _stub_stripe()
    sizes = {
        "vehicles": Vehicle.objects.count(),
        "bids": Bid.objects.count(),
        "ledger_entries": LedgerEntry.objects.count(),
    }
    if sizes["vehicles"] < 10_000:
        sys.exit("The bench database is not seeded: run .venv/bin/python bench/seed_scale.py first.")
    print(f"bench database: {sizes}; live states written: {seed_scale.live_states_write()}")
    clients = {}
    baseline = (Client(), "/login/")
    for _ in range(5):
        _get(*baseline, {})
    results = []
    # The fleet overview (market, staff fleet and staff dashboard) reads every car: pages take it from the cache,
    # and one request per OVERVIEW_FRESH_S computes it. Timed here on its own, as that request pays it.
    from fleet.selectors import OVERVIEW_FRESH_S, fleet_overview

    overview_ms = []
    for _ in range(3):
        began = time.perf_counter()
        fleet_overview()
        overview_ms.append((time.perf_counter() - began) * 1000)
    overview = {"median_ms": round(statistics.median(overview_ms), 1), "every_s": OVERVIEW_FRESH_S}
    print(f"fleet overview of {sizes['vehicles']} cars computed in {overview['median_ms']:.0f} ms (once per "
          f"{OVERVIEW_FRESH_S} s, by one request)")  # fmt: skip
    # The garbage collector as each gunicorn worker has it (config/gunicorn.conf.py): everything loaded so far frozen
    # out of its way, full collections rarer; without that a full collection puts 50-100 ms on one page in ten.
    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 10, 1000)
    print(f"{'page':40} {'queries':>7} {'db ms':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'cpu ms':>7} "
          f"{'login':>6} {'ratio':>6}")  # fmt: skip
    for name, username, url, headers in _pages():
        if args.only and args.only not in name:
            continue
        if username not in clients:
            clients[username] = Client()
            clients[username].force_login(User.objects.get(username=username))
        row = {"page": name, **_measure(clients[username], url, args.repeats, baseline, headers)}
        row["meets_target"] = row["p95_ms"] < TARGET_P95_MS
        results.append(row)
        flag = "" if row["meets_target"] else "  > target"
        print(f"{name:40} {row['queries']:>7} {row['query_ms']:>6.1f} {row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f} "
              f"{row['max_ms']:>7.1f} {row['cpu_p50_ms']:>7.1f} {row['baseline_p50_ms']:>6.1f} "
              f"{row['ratio_p50_to_baseline']:>6.1f}{flag}", flush=True)  # fmt: skip
    out = {
        "what": "page response times at scale through the test Client (bench/pages.py)",
        "sizes": sizes,
        "repeats": args.repeats,
        "target_p95_ms": TARGET_P95_MS,
        "baseline": "the login page, requested right before each timed request (baseline_p50_ms per page)",
        "pages": results,
        "fleet_overview_uncached": overview,
        "all_meet_target": all(r["meets_target"] for r in results),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(),
            "load_avg_at_start": load_at_start,
        },
    }
    if not args.only:
        path = ROOT / "bench" / "results" / "pages.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
