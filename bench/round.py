"""The whole auction round on PostgreSQL and Redis: snapshot supply and demand, clear, store allocations and units.

    .venv/bin/python bench/round.py [--cars 10000] [--bids 2000] [--repeats 5]

It creates its own database (`idlefleet_bench_round` on the PostgreSQL of BENCH_PG, default the local server) and
uses Redis db 10 of BENCH_REDIS, seeds `--cars` parked cars over four hardware classes, their live heartbeats in Redis
and an open parking session each, and `--bids` waiting bids over the four pools (sized so the market is about two
thirds sold), then times the real `marketplace.rounds.auction_round_run` — each repeat inside a transaction that is
rolled back, so every repeat runs the same round. The phases (supply snapshot, demand snapshot, clearing, storing the
allocations and cutting work units, placing replicas) are timed separately.

The baseline, measured in the same run, is the least any round must do: read the car, policy and bid rows from
PostgreSQL and the cars' live state from Redis. The ratio says how much the round costs on top of reading its input.

Results: bench/results/round.json. Tests never assert timings.
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
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from fleet.agent.precisions import FP8, FP16, FP32, INT8  # noqa: E402


def database_recreate() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


class Rollback(Exception):
    pass


def seed(cars: int, bids: int, rng: np.random.Generator) -> dict:
    from django.utils import timezone

    from accounts.models import Role, User
    from fleet import state_store
    from fleet.models import HardwareProfile, OptInPolicy, ParkingSession, Vehicle
    from marketplace.models import Dataset, InferenceModel, PrecisionVariant

    now = timezone.now()
    owners = User.objects.bulk_create(
        [User(username=f"owner{i}", email=f"owner{i}@bench.test", role=Role.OWNER) for i in range(max(cars // 10, 1))]
    )
    customers = User.objects.bulk_create(
        [User(username=f"customer{i}", email=f"customer{i}@bench.test", role=Role.CUSTOMER) for i in range(200)]
    )
    hardware = list(HardwareProfile.objects.order_by("name"))
    vehicles = Vehicle.objects.bulk_create(
        [
            Vehicle(
                owner=owners[i % len(owners)],
                display_name=f"Car {i}",
                hardware=hardware[i % len(hardware)],
                energy_price_cents_per_kwh=round(float(rng.uniform(10, 40)), 2),
                valid_streak=100,
            )
            for i in range(cars)
        ],
        batch_size=2000,
    )
    OptInPolicy.objects.bulk_create(
        [
            OptInPolicy(vehicle=v, battery_floor_pct=40, min_price_mcents_per_ch=int(rng.integers(0, 4)) * 1000)
            for v in vehicles
        ],
        batch_size=2000,
    )
    ParkingSession.objects.bulk_create(
        [ParkingSession(vehicle=v, arrived_at=now - timedelta(minutes=int(rng.integers(5, 300)))) for v in vehicles],
        batch_size=2000,
    )
    pipe = state_store.client().pipeline(transaction=False)
    for v in vehicles:
        state = {
            "observed_at": now.isoformat(),
            "received_at": now.isoformat(),
            "clock_rate": 1.0,
            "parked": True,
            "plugged_in": bool(rng.random() < 0.5),
            "charge_power_w": 0.0,
            "battery_pct": float(rng.uniform(50, 95)),
            "battery_capacity_kwh": 75.0,
            "network": "wifi",
            "bandwidth_down_mbps": 200.0,
            "bandwidth_up_mbps": 20.0,
            "latency_ms": 20.0,
            "runtime_version": "1.20.1",
            "models_cached": [],
            "computing": False,
            "compute_power_w": 0.0,
            "energy_used_today_wh": 0.0,
        }
        pipe.set(state_store._key(v.pk), json.dumps(state))
        pipe.zadd(state_store.SEEN_KEY, {str(v.pk): now.timestamp()})
    pipe.execute()

    model = InferenceModel.objects.create(
        name="MiniLM-L3 sentence embeddings", is_catalogue=True, kind=InferenceModel.Kind.TENSOR,
        onnx_sha256="0" * 64, onnx_size=70_000_000, status=InferenceModel.Status.READY,
    )  # fmt: skip
    dataset = Dataset.objects.create(
        owner=customers[0], inference_model=model, name="documents", sha256="1" * 64, size_bytes=4_000_000_000,
        format=Dataset.Format.JSONL, item_count=2_000_000, status="ready",
    )  # fmt: skip
    variants = {}
    for precision in (INT8, FP16, FP32, FP8):
        variants[precision] = PrecisionVariant.objects.create(
            inference_model=model, precision=precision, status=PrecisionVariant.Status.READY, sha256=precision * 8,
            size_bytes=20_000_000, ch_per_item=1.4e-8,
        )  # fmt: skip
    return {"now": now, "customers": customers, "model": model, "dataset": dataset, "variants": variants}


def bids_seed(context: dict, bids: int, scenario: str, ch_supply: dict[str, float], rng: np.random.Generator) -> dict:
    """`bids` waiting bids over the four pools, with prices around the asks and datasets of 1,000 to 2,000,000 items
    (median 50,000). "catalogue": the catalogue's MiniLM at its real cost per item (the 50 µs floor of
    marketplace/inference/costing.py), so demand is a sliver of supply, as in today's market. "contested": a model
    heavy enough that the bids want two thirds of each pool's CH, so most cars are sold and many share a bid."""
    from marketplace.models import Bid

    reserve = {"int8": 1000, "fp16": 1500, "fp32": 2000, "fp8": 1500}
    pools = [INT8, FP16, FP32, FP8]  # in the order of the shares `p` below
    chosen = rng.choice(len(pools), size=bids, p=[0.6, 0.25, 0.1, 0.05])
    items = np.clip(rng.lognormal(np.log(50_000), 1.2, bids), 1_000, 2_000_000).astype(int)
    per_item = {}
    for i, pool in enumerate(pools):
        if scenario == "catalogue":
            per_item[pool] = 1.4e-8
        else:
            per_item[pool] = ch_supply[pool] * 2 / 3 / max(int(items[chosen == i].sum()), 1)
    for pool, variant in context["variants"].items():
        variant.ch_per_item = per_item[pool]
        variant.save(update_fields=["ch_per_item"])
    rows = []
    for i in range(bids):
        pool = pools[chosen[i]]
        rows.append(
            Bid(
                customer=context["customers"][i % len(context["customers"])],
                inference_model=context["model"],
                dataset=context["dataset"],
                variant=context["variants"][pool],
                precision_requested=pool,
                pool=pool,
                max_price_mcents_per_ch=int(reserve[pool] * rng.uniform(1.0, 6.0)),
                budget_cents=10_000,
                deadline=context["now"] + timedelta(hours=6),
                items=int(items[i]),
                ch_total=int(items[i]) * per_item[pool],
                status=Bid.Status.WAITING,
            )
        )
    Bid.objects.bulk_create(rows, batch_size=2000)
    return {pool: round(float(sum(r.ch_total for r in rows if r.pool == pool)), 1) for pool in pools}


def baseline_read() -> float:
    """What any round must read: every active car with its hardware and policy, their live state, the open bids."""
    from fleet import state_store
    from fleet.models import Vehicle
    from marketplace.models import Bid

    started = time.perf_counter()
    vehicles = list(Vehicle.objects.filter(status=Vehicle.Status.ACTIVE).select_related("hardware", "policy"))
    state_store.states_get(v.pk for v in vehicles)
    bids = Bid.objects.filter(status__in=Bid.OPEN_STATUSES)
    list(bids.values_list("pk", "pool", "ch_total", "max_price_mcents_per_ch"))
    return time.perf_counter() - started


def round_repeats(repeats: int, now, spent: dict[str, float]) -> dict:
    """Run the round `repeats` times after a warm-up, each in a transaction rolled back afterwards."""
    from django.db import transaction

    from marketplace import rounds
    from marketplace.models import Allocation, WorkUnit

    runs, cpus, baselines, phase_runs, outcome = [], [], [], [], {}
    for repeat in range(repeats + 1):  # the first is a warm-up
        baselines.append(baseline_read())
        spent.clear()
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            with transaction.atomic():
                round_ = rounds.auction_round_run(now=now + timedelta(seconds=repeat))
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                outcome = {
                    "cars_offered": round_.cars_offered,
                    "bids_considered": round_.bids_considered,
                    "allocations": Allocation.objects.filter(round=round_).count(),
                    "cars_sold": Allocation.objects.filter(round=round_).values("vehicle").distinct().count(),
                    "work_units": WorkUnit.objects.filter(allocation__round=round_).count(),
                    "pools": {
                        p.pool: {"price_mcents": p.clearing_price_mcents, "volume_ch": round(p.volume_ch, 1)}
                        for p in round_.pools.all()
                    },
                }
                raise Rollback
        except Rollback:
            pass
        if repeat:
            runs.append(elapsed)
            cpus.append(cpu)
            phase_runs.append(dict(spent))
        print(f"  round {repeat}{' (warm-up)' if not repeat else ''}: {elapsed:.3f} s ({cpu:.3f} s CPU here)  "
              + "  ".join(f"{k.strip('_')} {v:.3f}" for k, v in spent.items()), flush=True)  # fmt: skip
    median, base = statistics.median(runs), statistics.median(baselines[1:])
    return {
        "median_s": round(median, 4),
        "max_s": round(max(runs), 4),
        "cpu_median_s": round(statistics.median(cpus), 4),
        "phases_median_s": {k.strip("_"): round(statistics.median(r[k] for r in phase_runs), 4) for k in phase_runs[0]},
        "baseline_read_s": round(base, 4),
        "ratio_to_baseline": round(median / base, 2),
        "outcome": outcome,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cars", type=int, default=10_000)
    parser.add_argument("--bids", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", default="catalogue,contested")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "round.json"))
    args = parser.parse_args()

    database_recreate()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from fleet import state_store
    from marketplace import auction, rounds

    call_command("migrate", verbosity=0)
    state_store.client().flushdb()
    rng = np.random.default_rng(11)
    started = time.perf_counter()
    context = seed(args.cars, args.bids, rng)
    supply, _ = rounds.supply_snapshot(now=context["now"])
    ch_supply = {p: float(supply.ch[supply.pool == i].sum()) for i, p in enumerate(auction.POOLS)}
    print(f"seeded {args.cars:,} cars in {time.perf_counter() - started:.1f} s; CH offered per pool: "
          + ", ".join(f"{p} {ch:,.0f}" for p, ch in ch_supply.items()), flush=True)  # fmt: skip

    # Each phase of auction_round_run, timed by wrapping the module functions it calls.
    spent: dict[str, float] = {}
    for name in ("bids_expire", "supply_snapshot", "demand_snapshot", "clear_all_or_none", "_store",
                 "verification_allocate"):  # fmt: skip
        original = getattr(rounds, name)

        def timed(*a, _original=original, _name=name, **kw):
            t0 = time.perf_counter()
            try:
                return _original(*a, **kw)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0

        setattr(rounds, name, timed)

    scenarios = {}
    for scenario in args.scenarios.split(","):
        try:
            with transaction.atomic():  # the scenario's bids go when it ends
                demand = bids_seed(context, args.bids, scenario, ch_supply, rng)
                wanted = ", ".join(f"{p} {c:,}" for p, c in demand.items())
                print(f"{scenario}: {args.bids:,} bids wanting CH {wanted}", flush=True)
                scenarios[scenario] = {"ch_wanted": demand, **round_repeats(args.repeats, context["now"], spent)}
                raise Rollback
        except Rollback:
            pass
        r = scenarios[scenario]
        o = r["outcome"]
        print(
            f"whole round, {scenario}: median {r['median_s']:.3f} s, max {r['max_s']:.3f} s (target <= 5 s), "
            f"{r['cpu_median_s']:.3f} s of it CPU in this process; "
            f"{o['allocations']:,} allocations to {o['cars_sold']:,} cars, {o['work_units']:,} work units; "
            f"baseline read {r['baseline_read_s']:.3f} s, the round is {r['ratio_to_baseline']:.1f}x that\n",
            flush=True,
        )
    result = {
        "cars": args.cars,
        "bids": args.bids,
        "database": connection.vendor,
        "repeats": args.repeats,
        "median_s": max(r["median_s"] for r in scenarios.values()),
        "scenarios": scenarios,
        "ch_offered": {p: round(c, 1) for p, c in ch_supply.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {Path(args.out).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
