"""The whole auction round of one market on PostgreSQL and Redis, at fleet scale: read the supply book, read the bids,
clear, store what it sold. Compared with the clearing alone, in the same run.

    .venv/bin/python bench/round.py [--cars 100000,1000000] [--bids 100000] [--repeats 3]

For each fleet size it creates its own database (`idlefleet_bench_round` on the PostgreSQL of BENCH_PG, default the
local server) and uses Redis db 10 of BENCH_REDIS, and seeds that many parked cars over four hardware classes, each
with an owner's policy, an open parking session and a heartbeat, their offers in the supply book as the heartbeat path
leaves them (fleet.book.vehicles_refresh_now: the profile built from the database, the offer from the state), and
`--bids` waiting bids over the four pools. Then, in a fresh process (so its memory peak is the round's, not the
seeding's), it times the real `marketplace.rounds.auction_round_run` as the scheduled round runs it (its sales packed,
then stored as allocations and cut into units by the dispatch queue), each repeat inside a transaction rolled back
afterwards; the time includes the foreign-key checks its commit would run (`SET CONSTRAINTS ALL IMMEDIATE`). Two
scenarios:

- "catalogue": the catalogue's MiniLM at its real cost per item, so demand is a sliver of supply (today's market);
- "contested": bids wanting two thirds of each pool's CH, so most cars are sold and many share a bid.

It reports the round's median and its phases (supply from the book, the demand, the clearing, storing), the clearing
alone on the same arrays (the baseline: the round is that many times the clearing), the memory peak of the measuring
process, and, with `--cut`, what the dispatch queue then spends storing that round's allocations and cutting their
units, foreign-key checks included (not part of the round).

Results: bench/results/round.json (`runs`: one per fleet size, with `cars`, `bids`, `median_s`, `peak_mb`). Tests never
assert timings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB_NAME = "idlefleet_bench_round"
os.environ["DATABASE_URL"] = f"{PG}/{DB_NAME}"
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379") + "/10"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from fleet.agent.precisions import FP8, FP16, FP32, INT8  # noqa: E402

CHUNK = 20_000  # cars seeded per batch
RESERVE = {"int8": 1000, "fp16": 1500, "fp32": 2000, "fp8": 1500}


def database_recreate() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


class Rollback(Exception):
    pass


def seed_cars(cars: int, rng: np.random.Generator, now) -> float:
    """`cars` parked cars, their policies, stays and heartbeats, and their offers in the book. Returns the seconds the
    book took to build (the heartbeat path's work, in bulk)."""

    from accounts.models import Role, User
    from fleet import book, state_store
    from fleet.models import HardwareProfile, OptInPolicy, ParkingSession, Vehicle

    owners = User.objects.bulk_create(
        [User(username=f"owner{i}", email=f"owner{i}@bench.test", role=Role.OWNER) for i in range(max(cars // 100, 1))],
        batch_size=5000,
    )
    hardware = list(HardwareProfile.objects.order_by("name"))
    book_s = 0.0
    for start in range(0, cars, CHUNK):
        count = min(CHUNK, cars - start)
        vehicles = Vehicle.objects.bulk_create(
            [
                Vehicle(
                    owner=owners[(start + i) % len(owners)],
                    display_name=f"Car {start + i}",
                    hardware=hardware[(start + i) % len(hardware)],
                    energy_price_cents_per_kwh=round(float(rng.uniform(10, 40)), 2),
                    valid_streak=100,
                    results_valid=int(rng.integers(0, 200)),
                )
                for i in range(count)
            ],
            batch_size=5000,
        )
        OptInPolicy.objects.bulk_create(
            [
                OptInPolicy(vehicle=v, battery_floor_pct=40, min_price_mcents_per_ch=int(rng.integers(0, 4)) * 1000)
                for v in vehicles
            ],
            batch_size=5000,
        )
        ParkingSession.objects.bulk_create(
            [
                ParkingSession(vehicle=v, arrived_at=now - timedelta(minutes=int(rng.integers(5, 300))))
                for v in vehicles
            ],
            batch_size=5000,
        )
        pipe = state_store.client().pipeline(transaction=False)
        for v in vehicles:
            state = {
                "observed_at": now.isoformat(), "received_at": now.isoformat(), "clock_rate": 1.0, "parked": True,
                "plugged_in": bool(rng.random() < 0.5), "charge_power_w": 0.0,
                "battery_pct": float(rng.uniform(50, 95)), "battery_capacity_kwh": 75.0, "network": "wifi",
                "bandwidth_down_mbps": 200.0, "bandwidth_up_mbps": 20.0, "latency_ms": 20.0,
                "runtime_version": "1.20.1", "models_cached": [], "computing": False, "compute_power_w": 0.0,
                "energy_used_today_wh": 0.0,
            }  # fmt: skip
            pipe.set(state_store.state_key(v.pk), json.dumps(state))
            pipe.zadd(state_store.SEEN_KEY, {str(v.pk): now.timestamp()})
        pipe.execute()
        t0 = time.perf_counter()
        book.vehicles_refresh_now([v.pk for v in vehicles])
        book_s += time.perf_counter() - t0
        print(f"  {start + count:,} cars seeded", flush=True)
    return book_s


def seed_catalogue() -> dict:
    from accounts.models import Role, User
    from marketplace.models import Dataset, InferenceModel, PrecisionVariant

    customers = User.objects.bulk_create(
        [User(username=f"customer{i}", email=f"customer{i}@bench.test", role=Role.CUSTOMER) for i in range(200)]
    )
    model = InferenceModel.objects.create(
        name="MiniLM-L3 sentence embeddings", is_catalogue=True, kind=InferenceModel.Kind.TENSOR,
        onnx_sha256="0" * 64, onnx_size=70_000_000, status=InferenceModel.Status.READY,
    )  # fmt: skip
    dataset = Dataset.objects.create(
        owner=customers[0], inference_model=model, name="documents", sha256="1" * 64, size_bytes=4_000_000_000,
        format=Dataset.Format.JSONL, item_count=2_000_000, status="ready",
    )  # fmt: skip
    variants = {
        precision: PrecisionVariant.objects.create(
            inference_model=model,
            precision=precision,
            status=PrecisionVariant.Status.READY,
            sha256=precision * 8,
            size_bytes=20_000_000,
            ch_per_item=1.4e-8,
        )
        for precision in (INT8, FP16, FP32, FP8)
    }
    return {"customers": [c.pk for c in customers], "model": model.pk, "dataset": dataset.pk,
            "variants": {p: v.pk for p, v in variants.items()}}  # fmt: skip


def bids_seed(context: dict, bids: int, scenario: str, ch_supply: dict[str, float], rng: np.random.Generator) -> dict:
    """`bids` waiting bids over the four pools, with prices around the asks and datasets of 1,000 to 2,000,000 items
    (median 50,000): at the catalogue MiniLM's real cost per item, or heavy enough to want two thirds of each pool."""
    from django.utils import timezone

    from marketplace.models import Bid, PrecisionVariant

    pools = [INT8, FP16, FP32, FP8]
    chosen = rng.choice(len(pools), size=bids, p=[0.6, 0.25, 0.1, 0.05])
    items = np.clip(rng.lognormal(np.log(50_000), 1.2, bids), 1_000, 2_000_000).astype(int)
    per_item = {}
    for i, pool in enumerate(pools):
        wanted = max(int(items[chosen == i].sum()), 1)
        per_item[pool] = 1.4e-8 if scenario == "catalogue" else ch_supply[pool] * 2 / 3 / wanted
    for pool, variant_id in context["variants"].items():
        PrecisionVariant.objects.filter(pk=variant_id).update(ch_per_item=per_item[pool])
    deadline = timezone.now() + timedelta(hours=6)
    rows = [
        Bid(
            customer_id=context["customers"][i % len(context["customers"])],
            inference_model_id=context["model"],
            dataset_id=context["dataset"],
            variant_id=context["variants"][pools[chosen[i]]],
            precision_requested=pools[chosen[i]],
            pool=pools[chosen[i]],
            max_price_mcents_per_ch=int(RESERVE[pools[chosen[i]]] * rng.uniform(1.0, 6.0)),
            budget_cents=10_000,
            deadline=deadline,
            items=int(items[i]),
            ch_total=int(items[i]) * per_item[pools[chosen[i]]],
            status=Bid.Status.WAITING,
        )
        for i in range(bids)
    ]
    Bid.objects.bulk_create(rows, batch_size=5000)
    return {pool: round(float(sum(r.ch_total for r in rows if r.pool == pool)), 1) for pool in pools}


def reused_context(cars: int) -> dict:
    """What `seed_catalogue` returned, read back from the database the last run seeded, and when its heartbeats were."""
    from datetime import datetime as dt

    from accounts.models import User
    from fleet import state_store
    from fleet.models import Vehicle
    from marketplace.models import Dataset, InferenceModel, PrecisionVariant

    seeded = Vehicle.objects.count()
    if seeded != cars:
        raise SystemExit(f"--reuse: the last run seeded {seeded:,} cars, not {cars:,}")
    first = Vehicle.objects.order_by("pk").values_list("pk", flat=True).first()
    return {
        "customers": list(User.objects.filter(username__startswith="customer").values_list("pk", flat=True)),
        "model": InferenceModel.objects.get().pk,
        "dataset": Dataset.objects.get().pk,
        "variants": dict(PrecisionVariant.objects.values_list("precision", "pk")),
        "now": dt.fromisoformat(state_store.state_get(first)["received_at"]).isoformat(),
    }


def measure(args) -> dict:
    """In this (fresh) process: the round's repeats for each scenario, the clearing alone, the cutting after. Progress
    goes to stderr as it happens; the result to stdout, for the parent."""
    sys.stdout = sys.stderr
    import django

    django.setup()
    from django.db import connection, transaction

    from marketplace import auction, dispatch, rounds
    from marketplace.models import Bid, RoundSale, WorkUnit

    rng = np.random.default_rng(12)
    context = json.loads(args.context)
    now = datetime.fromisoformat(context["now"]) + timedelta(seconds=1)
    supply, _ = rounds.supply_snapshot(now=now)
    ch_supply = {p: float(supply.ch[supply.pool == i].sum()) for i, p in enumerate(auction.POOLS)}
    print("  CH offered per pool: " + ", ".join(f"{p} {ch:,.0f}" for p, ch in ch_supply.items()), flush=True)

    spent: dict[str, float] = {}
    originals = {}
    for name in ("supply_snapshot", "demand_snapshot", "clear_all_or_none", "_store", "verification_allocate"):
        original = originals[name] = getattr(rounds, name)

        def timed(*a, _original=original, _name=name, **kw):
            t0 = time.perf_counter()
            try:
                return _original(*a, **kw)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0

        setattr(rounds, name, timed)

    scenarios = {}
    for scenario in args.scenarios.split(","):
        # The scenario's bids are committed, as a market's are when its round runs (a transaction pays more to update
        # rows it wrote itself: their foreign keys are checked again), and deleted when it ends.
        Bid.objects.all().delete()  # what a run stopped half-way left
        demand_ch = bids_seed(context, args.bids, scenario, ch_supply, rng)
        try:
            print(f"  {scenario}: {args.bids:,} bids wanting CH "
                  + ", ".join(f"{p} {c:,}" for p, c in demand_ch.items()), flush=True)  # fmt: skip
            runs, phases, clears, outcome, cut = [], [], [], {}, {}
            for repeat in range(args.repeats + 1):  # the first is a warm-up
                # The clearing alone, on the arrays this round is about to clear (read untimed).
                s, _ = originals["supply_snapshot"](now=now + timedelta(seconds=repeat))
                d = originals["demand_snapshot"](now=now + timedelta(seconds=repeat))
                reserve = np.array([RESERVE[p] for p in auction.POOLS], dtype=np.int64)
                c0 = time.perf_counter()
                auction.clear(supply=s, demand=d, reserve=reserve)
                clears.append(time.perf_counter() - c0)
                del s, d
                spent.clear()
                t0 = time.perf_counter()
                try:
                    with transaction.atomic():
                        round_ = rounds.auction_round_run(
                            now=now + timedelta(seconds=repeat), region="", cut_units=False
                        )
                        # What its commit would do: check the foreign keys of every row it wrote.
                        connection.cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")
                        elapsed = time.perf_counter() - t0
                        connection.cursor().execute("SET CONSTRAINTS ALL DEFERRED")
                        sales = [dispatch.sales_rows(s) for s in RoundSale.objects.filter(round=round_)]
                        sold = np.concatenate(sales) if sales else np.empty(0, dtype=dispatch.SALE_ROW)
                        outcome = {
                            "cars_offered": round_.cars_offered, "bids_considered": round_.bids_considered,
                            "allocations": len(sold), "sale_batches": len(sales),
                            "cars_sold": len(np.unique(sold["car"])), "bids_sold": len(np.unique(sold["bid"])),
                            "pools": {p.pool: {"price_mcents": p.clearing_price_mcents,
                                               "volume_ch": round(p.volume_ch, 1)} for p in round_.pools.all()},
                        }  # fmt: skip
                        if args.cut and repeat == args.repeats:  # what the dispatch queue then does
                            bid_ids = np.unique(sold["bid"]).tolist()
                            c0 = time.perf_counter()
                            for start in range(0, len(bid_ids), dispatch.CUT_BIDS_PER_TASK):
                                dispatch.allocations_cut(bid_ids=bid_ids[start : start + dispatch.CUT_BIDS_PER_TASK])
                            connection.cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")
                            cut_s = time.perf_counter() - c0
                            units = WorkUnit.objects.filter(allocation__round=round_).count()
                            cut = {"units": units, "seconds": round(cut_s, 2),
                                   "units_per_s": round(units / cut_s) if cut_s else None}  # fmt: skip
                        raise Rollback
                except Rollback:
                    pass
                if repeat:
                    runs.append(elapsed)
                    phases.append(dict(spent))
                print(f"    round {repeat}{' (warm-up)' if not repeat else ''}: {elapsed:.2f} s  "
                      + "  ".join(f"{k.strip('_')} {v:.2f}" for k, v in spent.items()), flush=True)  # fmt: skip
            median, clear = statistics.median(runs), statistics.median(clears[1:] or clears)
            scenarios[scenario] = {
                "ch_wanted": demand_ch,
                "median_s": round(median, 3),
                "max_s": round(max(runs), 3),
                "phases_median_s": {k.strip("_"): round(statistics.median(p[k] for p in phases), 3) for k in phases[0]},
                "clearing_alone_s": round(clear, 3),
                "ratio_to_clearing": round(median / clear, 1),
                "outcome": outcome,
                "cutting_after_the_round": cut,
            }
        finally:
            Bid.objects.all().delete()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"scenarios": scenarios, "peak_mb": round(peak_mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cars", default="100000,1000000", help="fleet sizes, comma-separated")
    parser.add_argument("--bids", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", default="catalogue,contested")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "round.json"))
    parser.add_argument(
        "--reuse", action="store_true",
        help="measure on the fleet the last run seeded (one size in --cars), without seeding it again",
    )  # fmt: skip
    parser.add_argument(
        "--cut", action="store_true", help="also time cutting the last round's units, as the dispatch queue would"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--context", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args)), file=sys.__stdout__, flush=True)
        return

    runs = []
    for cars in [int(c) for c in args.cars.split(",")]:
        import django

        if not args.reuse:
            database_recreate()
        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from fleet import state_store

        print(f"{cars:,} cars, {args.bids:,} bids", flush=True)
        started = time.perf_counter()
        if args.reuse:
            context, book_s = reused_context(cars), None
        else:
            call_command("migrate", verbosity=0)
            state_store.client().flushdb(asynchronous=True)  # a million cars: freed in the background
            rng = np.random.default_rng(11)
            # Every car's last heartbeat at `now`, and the rounds run a second or so after it: a live fleet, however
            # long seeding takes.
            from django.utils import timezone

            now = timezone.now()
            book_s = seed_cars(cars, rng, now)
            context = {**seed_catalogue(), "now": now.isoformat()}
        seeded_s = time.perf_counter() - started
        info = state_store.client().info("memory")
        connections.close_all()
        measured = subprocess.run(  # noqa: S603 - this script, run again
            [sys.executable, __file__, "--measure", "--bids", str(args.bids), "--repeats", str(args.repeats),
             *(["--cut"] if args.cut else []),
             "--scenarios", args.scenarios, "--context", json.dumps(context)],
            stdout=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        print(measured.stdout.rsplit("RESULT ", 1)[0], end="", flush=True)
        if measured.returncode:
            raise SystemExit(measured.returncode)
        result = json.loads(measured.stdout.rsplit("RESULT ", 1)[1])
        median = max(s["median_s"] for s in result["scenarios"].values())
        run = {
            "cars": cars,
            "bids": args.bids,
            "median_s": median,
            "peak_mb": result["peak_mb"],
            "scenarios": result["scenarios"],
            "seeding_s": None if args.reuse else round(seeded_s, 1),
            "book_build_s_per_1000_cars": None if book_s is None else round(book_s / cars * 1000, 3),
            "redis_used_mb": round(info["used_memory"] / 2**20),
        }
        runs.append(run)
        print(
            f"{cars:,} cars: the round's median {median:.2f} s (the slower scenario), memory peak "
            f"{run['peak_mb']:,} MB; "
            + "; ".join(f"{k}: {v['ratio_to_clearing']}x the clearing alone" for k, v in result["scenarios"].items())
            + "\n",
            flush=True,
        )
    result = {
        "what": "the scheduled auction round of one market (book, bids, clearing, its sales stored packed, the "
        "foreign-key checks of its commit), PostgreSQL and Redis on this machine; the sales are stored as allocations "
        "and cut into units afterwards by the dispatch queue (reported apart, with --cut)",
        "repeats": args.repeats,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
