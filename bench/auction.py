"""How fast the auction clears a large market, against a plain per-bid Python loop measured in the same run.

    .venv/bin/python bench/auction.py [--cars 1000000] [--bids 100000] [--repeats 5] [--baseline-scale 10]

A synthetic market over the four pools: every car offers INT8, a third also FP16, a tenth FP32, a twentieth FP8
(CH and asks drawn around the prices of a real round); bids spread over the pools with prices around the asks.
It times the real `marketplace.auction.clear` (median and max of `--repeats` runs, after a warm-up) and its peak
memory (tracemalloc, which sees NumPy's buffers). The baseline is `clear_reference`, the straightforward loop over
bids that the tests use as an oracle, run on a market `--baseline-scale` times smaller (the full size would take
minutes), together with `clear` on that same smaller market: the ratio is measured at equal size, not guessed.

Results: bench/results/auction.json. Tests never assert timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from marketplace import auction  # noqa: E402

RESERVE = np.array([1500, 2000, 1500, 1000], dtype=np.int64)  # m¢/CH, in POOLS order (fp8, fp32, fp16, int8)


def market(cars: int, bids: int, seed: int = 7) -> tuple[auction.Supply, auction.Demand]:
    rng = np.random.default_rng(seed)
    pool_of = {name: auction.POOLS.index(name) for name in auction.POOLS}
    rows_car, rows_pool = [np.arange(cars)], [np.full(cars, pool_of["int8"])]
    for name, share in (("fp16", 3), ("fp32", 10), ("fp8", 20)):
        chosen = np.arange(0, cars, share)
        rows_car.append(chosen)
        rows_pool.append(np.full(chosen.size, pool_of[name]))
    car = np.concatenate(rows_car).astype(np.int64)
    pool = np.concatenate(rows_pool).astype(np.int8)
    ch = rng.uniform(0.5, 8.0, car.size)
    ask = (RESERVE[pool] * rng.uniform(0.6, 3.0, car.size)).astype(np.int64)
    supply = auction.Supply(car=car, pool=pool, ch=ch, ask=ask, reliability=rng.uniform(0.8, 1.0, car.size))
    bid_pool = rng.choice(np.arange(4), size=bids, p=[0.05, 0.1, 0.25, 0.6]).astype(np.int8)
    demand = auction.Demand(
        bid=np.arange(bids, dtype=np.int64),
        pool=bid_pool,
        ch=rng.lognormal(2.5, 1.0, bids),
        price=(RESERVE[bid_pool] * rng.uniform(0.8, 4.0, bids)).astype(np.int64),
        placed=rng.permutation(bids).astype(np.int64),
    )
    return supply, demand


def timed(function, supply, demand, repeats: int) -> list[float]:
    function(supply, demand, RESERVE)  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(supply, demand, RESERVE)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cars", type=int, default=1_000_000)
    parser.add_argument("--bids", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-scale", type=int, default=10)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "auction.json")
    args = parser.parse_args()

    supply, demand = market(args.cars, args.bids)
    seconds = timed(auction.clear, supply, demand, args.repeats)
    tracemalloc.start()
    result = auction.clear(supply, demand, RESERVE)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    small_cars, small_bids = args.cars // args.baseline_scale, args.bids // args.baseline_scale
    small_supply, small_demand = market(small_cars, small_bids)
    fast_small = timed(auction.clear, small_supply, small_demand, args.repeats)
    loop_small = timed(auction.clear_reference, small_supply, small_demand, max(1, args.repeats // 2))
    ratio = statistics.median(loop_small) / statistics.median(fast_small)

    report = {
        "cars": args.cars,
        "bids": args.bids,
        "supply_rows": int(supply.car.size),
        "median_s": round(statistics.median(seconds), 4),
        "max_s": round(max(seconds), 4),
        "peak_mb": round(peak_mb, 1),  # allocated while clearing (tracemalloc)
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # market included
        "allocations": int(result.alloc_bid.size),
        "target": {"median_s": 0.5, "peak_mb": 1024},
        "baseline": {
            "what": "clear_reference (plain loop over bids) vs clear, on the same smaller market, in this run",
            "cars": small_cars,
            "bids": small_bids,
            "clear_median_s": round(statistics.median(fast_small), 4),
            "loop_median_s": round(statistics.median(loop_small), 4),
            "speedup": round(ratio, 1),
        },
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": _cpus(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"auction: {args.cars:,} cars ({report['supply_rows']:,} offers) x {args.bids:,} bids: median "
        f"{report['median_s']:.3f} s, max {report['max_s']:.3f} s, peak {report['peak_mb']:.0f} MB; "
        f"{report['baseline']['speedup']}x the plain loop at {small_cars:,} x {small_bids:,} "
        f"({report['baseline']['loop_median_s']:.3f} s vs {report['baseline']['clear_median_s']:.3f} s)"
    )


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    main()
