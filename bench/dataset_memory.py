"""Memory of the largest dataset the default caps accept: the web process that takes the upload, and a worker that
parses it and builds the model's variants on it.

    .venv/bin/python bench/dataset_memory.py [--redis-db 12] [--port 16571] [--json bench/results/dataset_memory.json]

The dataset: the digits classifier's largest, MAX_DATASET_ITEMS (1,000,000) digit images as float32, 256 MB once
parsed (just under MAX_DATASET_INFLATED_BYTES, 268 MB), sent as a compressed .npz under MAX_DATASET_UPLOAD_BYTES.
The baseline, in the same run: 200 digit images sent the same way, through the same processes.

Web: the upload goes through the real path, `POST /api/v1/models/<id>/datasets/` with a token, to gunicorn with the
production settings (one sync worker, so one process takes it), started afresh for each dataset; its peak RSS is the
worker's VmHWM. Worker: a fresh Python process runs the `variant_build` task of each variant the upload queued (what
a Celery worker of the `validation` queue runs, one task after another, its dataset cache warm after the first), and
its peak RSS is its VmHWM. The database `idlefleet_bench_datasets` is created (dropped first if it exists) and migrated;
the artifacts go to a temporary folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

import numpy as np  # noqa: E402

PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgres://postgres@127.0.0.1:5432")
DB_NAME = "idlefleet_bench_datasets"
BASELINE_ITEMS = 200


def configure(redis_url: str, media_root: str) -> None:
    """A production deployment's environment, on this machine: the benchmark's own database, Redis db and files."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        SECRET_KEY=os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"{PG_SERVER}/{DB_NAME}",
        REDIS_URL=redis_url,
        MEDIA_ROOT=media_root,
        SECURE_SSL_REDIRECT="false",
        NUM_PROXIES="0",
        LOG_LEVEL="WARNING",
    )
    os.environ["BENCH_SECRET_KEY"] = os.environ["SECRET_KEY"]  # the same for the processes started below


def peak_rss(pid: int | str = "self") -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def digits_npz(items: int) -> bytes:
    from marketplace.inference.catalogue import digits_items

    array = np.ascontiguousarray(np.resize(digits_items(1797), (items, 64)), dtype=np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, items=array)
    return buffer.getvalue()


# --- Setup, in this process ---------------------------------------------------------------------------------------


def setup() -> tuple[int, str]:
    """alice, her checked digits classifier and an API token: (model id, token)."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    import django

    django.setup()
    from django.core.management import call_command
    from knox.models import AuthToken

    from accounts.models import Role, User
    from core.redis import client
    from marketplace import services, storage
    from marketplace.inference.catalogue import DIGITS_OUTPUT, build_digits_classifier
    from marketplace.models import InferenceModel

    call_command("migrate", verbosity=0)
    client().flushdb()
    alice = User.objects.create_user(username="alice", password=secrets.token_urlsafe(), role=Role.CUSTOMER)
    onnx = build_digits_classifier()
    model = InferenceModel.objects.create(
        owner=alice, name="digits", onnx_sha256=storage.artifact_save(onnx), onnx_size=len(onnx),
        output_name=DIGITS_OUTPUT, metric="top1", tolerance=0.9,
    )  # fmt: skip
    model = services.inference_model_validate(model=model)
    if model.status != InferenceModel.Status.READY:
        raise SystemExit(f"the digits classifier was not accepted: {model.rejection_reason}")
    return model.pk, AuthToken.objects.create(user=alice)[1]


# --- Web: gunicorn takes the upload --------------------------------------------------------------------------------


def web_upload(data: bytes, *, model_id: int, token: str, port: int) -> dict:
    """Start gunicorn (one sync worker), upload `data`, and return the worker's memory and the answer."""
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1", "GUNICORN_WORKER_CLASS": "sync",
           "GUNICORN_TIMEOUT": "600", "GUNICORN_LOGLEVEL": "warning"}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "config.wsgi"], cwd=ROOT, env=env
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/healthz/", timeout=2).read()  # noqa: S310 - our own server
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            raise SystemExit("gunicorn did not start")
        (worker,) = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        idle = peak_rss(worker)
        boundary = secrets.token_hex(16)
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digits.npz"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(  # noqa: S310 - our own server
            f"{base}/api/v1/models/{model_id}/datasets/", data=body, method="POST",
            headers={"Authorization": f"Token {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )  # fmt: skip
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - our own server
            answer = json.loads(response.read())
        seconds = time.perf_counter() - started
        return {"dataset_id": answer["id"], "items": answer["item_count"], "seconds": round(seconds, 2),
                "idle_rss": idle["VmRSS"], "peak_rss": peak_rss(worker)["VmHWM"]}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- Worker: parse and build, in a fresh process -------------------------------------------------------------------


def worker_run(dataset_id: int) -> dict:
    done = subprocess.run(  # noqa: S603 - this script
        [sys.executable, __file__, "--worker", str(dataset_id)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_main(dataset_id: int) -> None:
    import django

    django.setup()
    from marketplace.models import Dataset, PrecisionVariant
    from marketplace.storage import dataset_cache, dataset_items
    from marketplace.tasks import variant_build

    idle = peak_rss()["VmRSS"]
    dataset = Dataset.objects.select_related("inference_model").get(pk=dataset_id)
    started = time.perf_counter()
    for variant in PrecisionVariant.objects.filter(evaluated_on=dataset).order_by("pk"):
        variant_build(variant.pk)  # the task itself, as a worker runs it
    seconds = time.perf_counter() - started
    dataset_items(dataset)  # a lease's read: from the cache
    statuses = sorted(PrecisionVariant.objects.filter(evaluated_on=dataset).values_list("precision", "status"))
    memory = peak_rss()
    print(json.dumps({"seconds": round(seconds, 2), "idle_rss": idle, "peak_rss": memory["VmHWM"],
                      "rss_after": memory["VmRSS"], "cache_bytes": dataset_cache().currsize,
                      "variants": dict(statuses)}))  # fmt: skip


# --- Main ----------------------------------------------------------------------------------------------------------


def mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("BENCH_REDIS_DB", 12)))
    parser.add_argument("--redis-server", default=os.environ.get("BENCH_REDIS_SERVER", "redis://127.0.0.1:6379"))
    parser.add_argument("--port", type=int, default=16571)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dataset_memory.json")
    args = parser.parse_args()
    if args.worker is not None:
        return worker_main(args.worker)

    media = tempfile.mkdtemp(prefix="idlefleet-bench-datasets-")
    try:
        run(args, media)
    finally:
        shutil.rmtree(media, ignore_errors=True)


def run(args, media: str) -> None:
    configure(f"{args.redis_server}/{args.redis_db}", media)
    print(f"database {DB_NAME}: creating and migrating", flush=True)
    model_id, token = setup()
    from django.conf import settings

    results = {}
    for name, items in (("baseline", BASELINE_ITEMS), ("largest", settings.MAX_DATASET_ITEMS)):
        data = digits_npz(items)
        web = web_upload(data, model_id=model_id, token=token, port=args.port)
        worker = worker_run(web["dataset_id"])
        results[name] = {"items": items, "upload_bytes": len(data), "inflated_bytes": items * 64 * 4, "web": web,
                         "worker": worker}  # fmt: skip
        print(
            f"{name}: {items:,} items, {mb(len(data))} upload, {mb(items * 256)} parsed | web peak "
            f"{mb(web['peak_rss'])} (idle {mb(web['idle_rss'])}, {web['seconds']} s) | worker peak "
            f"{mb(worker['peak_rss'])} (idle {mb(worker['idle_rss'])}, after {mb(worker['rss_after'])}, build "
            f"{worker['seconds']} s) | variants {worker['variants']}",
            flush=True,
        )
    base, big = results["baseline"], results["largest"]
    results["ratios"] = {
        "web_peak": round(big["web"]["peak_rss"] / base["web"]["peak_rss"], 2),
        "worker_peak": round(big["worker"]["peak_rss"] / base["worker"]["peak_rss"], 2),
    }
    caps = ("MAX_DATASET_UPLOAD_BYTES", "MAX_DATASET_ITEMS", "MAX_DATASET_INFLATED_BYTES", "DATASET_CACHE_BYTES")
    results["caps"] = {name: getattr(settings, name) for name in caps}
    print(f"ratios against the baseline: web peak {results['ratios']['web_peak']}×, worker peak "
          f"{results['ratios']['worker_peak']}×", flush=True)  # fmt: skip
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    from core.redis import client

    client().flushdb()  # the build tasks the uploads queued: this script ran them itself


if __name__ == "__main__":
    main()
