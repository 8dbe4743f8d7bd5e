"""Gunicorn settings for production: `gunicorn -c config/gunicorn.conf.py config.wsgi`.

Every value can be changed from the environment (GUNICORN_CMD_ARGS overrides all of them, as gunicorn documents).

Why gthread: cars keep their connection open between requests (the agent's HTTP client keeps it alive) and a request
spends part of its time waiting on Redis and PostgreSQL; threads let one process overlap those waits and keep
connections alive, which the sync worker cannot (it closes the connection after every response). bench/heartbeats.py
measures both and how throughput scales with the number of workers.
"""

import gc
import multiprocessing
import os

# The reverse proxy on the same host forwards to this address (set GUNICORN_BIND for a proxy elsewhere).
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# One process per core is what the CPU can run at once; a second per core covers the waits that threads do not.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", 4))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 30))
# Connections beyond workers × threads wait in the accept queue instead of being refused.
backlog = int(os.environ.get("GUNICORN_BACKLOG", 2048))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 30))
# Restart a worker now and then (with jitter, so not all at once) to bound the effect of any slow leak.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 100_000))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", 10_000))
# Import the app once in the master: workers fork with Django loaded (faster start, shared memory).
preload_app = os.environ.get("GUNICORN_PRELOAD", "true").lower() in ("1", "true", "yes")
# The proxy logs requests; gunicorn logs errors only, unless GUNICORN_ACCESSLOG names a file (or "-" for stdout).
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Trust X-Forwarded-* only from the proxy on this host (gunicorn's default).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


# The workers' garbage collector never walks the objects the master loaded (Django, the apps, their libraries: some
# hundreds of thousands): touching them would copy the master's shared memory into every worker. As the gc module's
# documentation advises: no collection in the master while it loads, freeze what it holds before each fork, collect
# again in the worker. And full collections (of every object that lived long: compiled templates, caches) run a
# hundred times less often than Python's default: each took 50-100 ms, one admin page in ten paid it
# (bench/pages.py), while young garbage is still collected as usual and max_requests recycles a worker anyway.
GC_THRESHOLDS = (700, 10, 1000)  # Python's default is (700, 10, 10)


def on_starting(server):
    gc.disable()


def pre_fork(server, worker):
    gc.freeze()


def post_fork(server, worker):
    gc.set_threshold(*GC_THRESHOLDS)
    gc.enable()
