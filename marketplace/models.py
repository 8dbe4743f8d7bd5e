from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce

from fleet.models import Precision, validate_region


class InferenceModel(models.Model):
    """A customer's ONNX model (or a catalogue model, owner empty), stored content-addressed by sha256."""

    class Kind(models.TextChoices):
        TEXT = "text", "Text (tokenized)"
        TENSOR = "tensor", "Tensor"

    class Status(models.TextChoices):
        VALIDATING = "validating", "Validating"
        READY = "ready", "Ready"
        REJECTED = "rejected", "Rejected"

    class Metric(models.TextChoices):
        COSINE = "cosine", "Cosine similarity (embeddings)"
        TOP1 = "top1", "Top-1 agreement (classifiers)"
        MAX_ABS = "max_abs", "Maximum absolute error"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="inference_models"
    )
    is_catalogue = models.BooleanField(default=False, help_text="Offered to every customer.")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TENSOR)
    onnx_sha256 = models.CharField(max_length=64)
    onnx_size = models.PositiveBigIntegerField()
    tokenizer_sha256 = models.CharField(max_length=64, blank=True)
    output_name = models.CharField(max_length=200, blank=True, help_text="Empty: the model's first output.")
    inputs = models.JSONField(default=list, blank=True)
    outputs = models.JSONField(default=list, blank=True)
    opset = models.PositiveIntegerField(null=True, blank=True)
    macs_per_item = models.PositiveBigIntegerField(null=True, blank=True)
    metric = models.CharField(max_length=16, choices=Metric.choices, default=Metric.COSINE)
    tolerance = models.FloatField(
        default=0.99,
        validators=[MinValueValidator(0.0)],
        help_text="Cosine or top-1: the least a variant must reach; max_abs: the most error allowed.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING, db_index=True)
    rejection_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(is_catalogue=True) | Q(owner__isnull=False), name="model_has_owner"),
        ]

    def __str__(self) -> str:
        return self.name


class Dataset(models.Model):
    """Items to run through a model: JSONL texts for text models, .npy/.npz arrays for tensor models."""

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSON lines"
        NPY = "npy", "NumPy .npy"
        NPZ = "npz", "NumPy .npz"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="datasets"
    )
    inference_model = models.ForeignKey(InferenceModel, on_delete=models.PROTECT, related_name="datasets")
    name = models.CharField(max_length=120)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    format = models.CharField(max_length=8, choices=Format.choices)
    item_count = models.PositiveIntegerField(default=0)
    holdout_count = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=InferenceModel.Status.choices, default=InferenceModel.Status.VALIDATING
    )
    rejection_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class PrecisionVariant(models.Model):
    """One build of a model at one precision: its file, its cost per item and its accuracy against FP32.

    A build is never changed once it has a file: a rebuild is a new row, and the build it replaces is retired (kept,
    with its file, for the bids and work units that run it). So a bid stays on the files it was placed with.

    Its scope: a model's shared builds (`dataset` empty) are judged on its owner's datasets (the platform's sample, for
    a catalogue model). Another customer's dataset for a catalogue model gets builds of its own (`dataset` set),
    calibrated and judged on its items, which nobody else sees or is gated on."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        BUILDING = "building", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    inference_model = models.ForeignKey(InferenceModel, on_delete=models.CASCADE, related_name="variants")
    precision = models.CharField(max_length=8, choices=Precision.choices)
    method = models.CharField(max_length=200, blank=True, help_text="How it was made, e.g. dynamic per-channel INT8.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    ch_per_item = models.FloatField(null=True, blank=True, help_text="Compute-hours per item: fixed at build.")
    emulated = models.BooleanField(default=False, help_text="FP8 emulated on hardware without FP8.")
    metrics = models.JSONField(default=dict, blank=True)
    evaluated_on = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    dataset = models.ForeignKey(
        Dataset,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="own_variants",
        help_text="Built for this customer's dataset of a catalogue model; empty: the model's shared build.",
    )
    retired_at = models.DateTimeField(
        null=True, blank=True, help_text="Replaced by a newer build; kept for the bids and units that run it."
    )
    items_per_s = models.FloatField(null=True, blank=True, help_text="Measured on the platform's CPU.")
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["inference_model", "precision"]
        constraints = [
            # Per model, precision and scope: one build in force (ready or failed) and one on its way.
            models.UniqueConstraint(
                "inference_model", "precision", Coalesce("dataset", Value(0)),
                condition=Q(retired_at__isnull=True, status__in=["ready", "failed"]), name="one_build_in_force",
            ),
            models.UniqueConstraint(
                "inference_model", "precision", Coalesce("dataset", Value(0)),
                condition=Q(retired_at__isnull=True, status__in=["queued", "building"]), name="one_build_pending",
            ),
        ]  # fmt: skip

    def __str__(self) -> str:
        return f"{self.inference_model} {self.get_precision_display()}"

    @property
    def pending(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.BUILDING)


class Bid(models.Model):
    """A customer's order: run a dataset through a model variant, paying at most `max_price` per CH.

    Prices are integer milli-cents per CH (1 ¢ = 1000 m¢), because a CH costs a few cents; a budget is whole cents (it
    is reserved from the balance, or held on a card); billing meters the work in n¢ (core/money.py).
    """

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting for capacity"
        RUNNING = "running", "Running"
        VALIDATING = "validating", "Validating"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"
        AUTHORIZING = "authorizing", "Authorizing the card"
        DECLINED = "declined", "Card declined"
        PAUSED = "paused", "Paused: waiting for funds"

    class Funding(models.TextChoices):
        BALANCE = "balance", "Prepaid balance"
        CARD = "card", "Hold on the card"

    OPEN_STATUSES = (Status.WAITING, Status.RUNNING)

    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="bids")
    inference_model = models.ForeignKey(InferenceModel, on_delete=models.PROTECT, related_name="bids")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="bids")
    variant = models.ForeignKey(PrecisionVariant, on_delete=models.PROTECT, related_name="bids")
    precision_requested = models.CharField(max_length=8, help_text="A precision, or 'auto'.")
    pool = models.CharField(max_length=8, choices=Precision.choices)
    max_price_mcents_per_ch = models.PositiveBigIntegerField("maximum price (m¢/CH)")
    budget_cents = models.PositiveBigIntegerField()
    funding = models.CharField(
        max_length=8, choices=Funding.choices, default=Funding.BALANCE,
        help_text="Where the budget is set aside: reserved from the prepaid balance, or held on the card.",
    )  # fmt: skip
    currency = models.CharField(max_length=3, default="usd")
    deadline = models.DateTimeField()
    all_or_none = models.BooleanField(default=False)
    region = models.CharField(
        max_length=16, blank=True, default="", validators=[validate_region],
        help_text="The only market region whose cars may run it (data residency), e.g. DE. Blank: any region.",
    )  # fmt: skip
    items = models.PositiveIntegerField()
    ch_total = models.FloatField(help_text="items × the variant's CH per item, fixed when the bid is placed.")
    ch_allocated = models.FloatField(default=0.0)
    items_unitised = models.PositiveIntegerField(default=0, help_text="Items already cut into work units.")
    result_sha256 = models.CharField(max_length=64, blank=True, help_text="The assembled outputs, in item order.")
    result_version = models.PositiveIntegerField(
        default=1, help_text="Goes up each time an audit replaces results in the assembled file (ResultAudit)."
    )
    # Indexed with the pool (Meta): a round raises 100,000 bids at once, and each index is written for each.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "pool"])]

    def __str__(self) -> str:
        return f"Bid {self.pk} on {self.inference_model}"

    @property
    def ch_remaining(self) -> float:
        return max(self.ch_total - self.ch_allocated, 0.0)


class Round(models.Model):
    """One auction round of one market region. `slot` is the round's start rounded down to the interval: a second
    beat, or a retried task, for the same slot and region finds the row and does nothing."""

    slot = models.DateTimeField()
    region = models.CharField(
        max_length=16, blank=True, default="", help_text="The market region: its cars, and the bids it may serve."
    )
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cars_offered = models.PositiveIntegerField(default=0)
    bids_considered = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(null=True, blank=True, help_text="Time to snapshot, clear and store.")
    platform_fee_pct = models.DecimalField(
        max_digits=5, decimal_places=2, default=15, help_text="The fee in force for what this round sold."
    )

    class Meta:
        ordering = ["-slot", "region"]
        constraints = [models.UniqueConstraint(fields=["slot", "region"], name="one_round_per_slot_per_region")]
        indexes = [models.Index(fields=["region", "-slot"])]

    def __str__(self) -> str:
        return f"Round {self.slot:%Y-%m-%d %H:%M}{f' {self.region}' if self.region else ''}"


class PoolClearing(models.Model):
    """What a round published for one precision pool: the uniform price, the volume, and what went unfilled."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="pools")
    pool = models.CharField(max_length=8, choices=Precision.choices)
    clearing_price_mcents = models.PositiveBigIntegerField(null=True, blank=True, help_text="Null: nothing traded.")
    reserve_mcents = models.PositiveBigIntegerField()
    volume_ch = models.FloatField(default=0.0)
    unfilled_demand_ch = models.FloatField(default=0.0)
    supply_ch = models.FloatField(default=0.0)
    index_mcents = models.FloatField(null=True, blank=True, help_text="Smoothed price index for the chart.")
    # The pool's last trade, carried forward round to round as the index is (rounds._store), so that the market shows
    # it from the last round's rows in O(1): found by a search back through the history instead, a pool that never
    # traded would read every round (seconds at a year of rounds).
    last_trade_mcents = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The clearing price of the newest round up to this one where the pool traded."
    )
    last_trade_at = models.DateTimeField(null=True, blank=True, help_text="That round's slot. Null: never traded.")

    class Meta:
        ordering = ["round", "pool"]
        constraints = [models.UniqueConstraint(fields=["round", "pool"], name="one_clearing_per_pool_per_round")]

    def __str__(self) -> str:
        return f"{self.round} {self.pool}"


class Allocation(models.Model):
    """CH of one car sold to one bid in one round, at the pool's clearing price. The car is busy until `ends_at`."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="allocations")
    bid = models.ForeignKey(Bid, on_delete=models.PROTECT, related_name="allocations")
    # Indexed with ends_at (Meta): the cars' allocations are read by car and time.
    vehicle = models.ForeignKey("fleet.Vehicle", on_delete=models.PROTECT, related_name="allocations", db_index=False)
    pool = models.CharField(max_length=8, choices=Precision.choices)
    ch = models.FloatField()
    price_mcents_per_ch = models.PositiveBigIntegerField()
    ends_at = models.DateTimeField(help_text="When the car's sold time runs out.")
    for_verification = models.BooleanField(
        default=False, help_text="Bought by the platform to check results (rounds.verification_allocate), not won by "
        "the customer: left out of the customer's rounds won.",
    )  # fmt: skip
    # What sizing the car's work units needs (dispatch.units_cut), as the round saw the car: a big round's units are
    # cut after it, by the dispatch queue, so the round's own time grows with what it sold, not with the units.
    car = models.JSONField(default=dict, blank=True)
    units_cut = models.BooleanField(default=True, help_text="False until dispatch has cut this allocation's units.")

    class Meta:
        ordering = ["round", "bid"]
        # ends_at alone: each round reads the allocations still running (rounds.busy_cars), a sliver of the history.
        indexes = [models.Index(fields=["vehicle", "ends_at"]), models.Index(fields=["ends_at"])]

    def __str__(self) -> str:
        return f"{self.ch:.4g} CH of {self.vehicle} to bid {self.bid_id}"


class RoundSale(models.Model):
    """What a scheduled round sold to a batch of its bids (up to dispatch.CUT_BIDS_PER_TASK of them, in a range of
    bid ids), packed: one row of dispatch.SALE_ROW per (bid, car) sold. A round stores what it sold this way, in a
    few rows whatever it sold: a round that sells a million cars would otherwise spend most of its interval inserting,
    indexing and checking a million Allocation rows. The dispatch queue's cutting task turns a batch into Allocation
    rows, raises their bids (Bid.ch_allocated, status RUNNING) and cuts their units, in one transaction
    (dispatch.allocations_cut). Until then the next round counts its cars as busy (rounds.busy_cars) and its CH as
    sold (rounds.demand_snapshot)."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="sales")
    bid_min = models.BigIntegerField(help_text="The lowest bid id in the batch.")
    bid_max = models.BigIntegerField(help_text="The highest bid id in the batch.")
    allocations = models.PositiveIntegerField(help_text="How many (bid, car) sales the batch holds.")
    ends_max = models.DateTimeField(help_text="When the last of its cars' sold time runs out.")
    rows = models.BinaryField(help_text="The sales, packed (dispatch.SALE_ROW); emptied once they are stored.")
    stored = models.BooleanField(default=False, help_text="True once they are Allocation rows, cut into units.")

    class Meta:
        ordering = ["pk"]
        indexes = [models.Index(fields=["bid_min", "bid_max"], condition=Q(stored=False), name="sale_waiting")]

    def __str__(self) -> str:
        return f"{self.allocations} sales to bids {self.bid_min}–{self.bid_max} in {self.round}"


class WorkUnit(models.Model):
    """A slice of a bid's items [item_start, item_end) that one car runs under a lease. The database holds the
    truth: a sweeper re-derives what expired leases mean, the broker only wakes things up.

    Who saves which fields (one module each; the others read them):
    - the slice and its lease, marketplace/dispatch.py: bid, variant, index, item_start, item_end, ch (cutting and
      splitting), status, assigned_vehicle, allocation, lease_id, leased_at, lease_expires_at, predicted_seconds,
      probes, attempts, error, and excluded_vehicles after a wrong known answer. (A round assigns a waiting replica
      to a car, and moves an auto bid's queued units to another variant: marketplace/rounds.py.)
    - the result, marketplace/dispatch.py (unit_result, saved before it is judged): output_sha256, done_by,
      completed_at, seconds, energy_wh, emulated, runtime_version, and status DONE.
    - the verdict, marketplace/verdicts.py: quorum, verification, canonical; and, with them, the cars' records
      (Vehicle.valid_streak and results counts, ResultFault) that the verdicts change.
    - the replicas, marketplace/verdicts.py: it creates them (replica_of, requires_hardware, excluded_vehicles, and
      the car of the bid that takes one, if any); from then on dispatch leases them like any unit, and fails the copies
      that a verdict says are no longer needed (verdicts.Judgement).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        LEASED = "leased", "Leased"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Verification(models.TextChoices):
        """What verification made of a done unit's result (marketplace/verification.py)."""

        PENDING = "pending", "Waiting for another car's result"
        VALID = "valid", "Validated"
        INVALID = "invalid", "Rejected: disagrees with the other cars"

    bid = models.ForeignKey(Bid, on_delete=models.PROTECT, related_name="units")
    variant = models.ForeignKey(
        PrecisionVariant, on_delete=models.PROTECT, related_name="+",
        help_text="What the unit runs: the bid's variant when it was cut (an auto bid may move to another precision).",
    )  # fmt: skip
    replica_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="replicas",
        help_text="The same items run again on another car of the same hardware, to compare the results.",
    )  # fmt: skip
    quorum = models.PositiveSmallIntegerField(
        default=0, help_text="On a primary unit: how many agreeing results validate it (0 until the first result)."
    )
    verification = models.CharField(max_length=8, choices=Verification.choices, blank=True, db_index=True)
    canonical = models.BooleanField(default=False, help_text="The result the customer gets for these items.")
    requires_hardware = models.ForeignKey(
        "fleet.HardwareProfile", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="A replica runs on the same hardware class as the result it checks (homogeneous redundancy).",
    )  # fmt: skip
    excluded_vehicles = models.JSONField(
        default=list, blank=True, help_text="Cars that may not run these items: they ran them, or got one of their "
        "known answers wrong; a replica also never runs on another car of their owners.",
    )  # fmt: skip
    price_cap_mcents = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The price of the customer's allocation that first ran these items, when a "
        "failed known-answer check sent them to another car: the customer never pays more for them.",
    )  # fmt: skip
    probes = models.JSONField(
        default=list, blank=True,
        help_text="Known-answer items mixed into this lease: [[position in the lease, dataset item], ...].",
    )  # fmt: skip
    index = models.PositiveIntegerField()
    item_start = models.PositiveIntegerField()
    item_end = models.PositiveIntegerField()
    ch = models.FloatField(help_text="items × the variant's CH per item.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED, db_index=True)
    assigned_vehicle = models.ForeignKey(
        "fleet.Vehicle", null=True, blank=True, on_delete=models.SET_NULL, related_name="assigned_units",
        help_text="The car whose sold CH this unit uses; it leases the unit.",
    )  # fmt: skip
    allocation = models.ForeignKey(Allocation, null=True, blank=True, on_delete=models.SET_NULL, related_name="units")
    lease_id = models.CharField(max_length=36, blank=True)
    leased_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    predicted_seconds = models.FloatField(
        null=True, blank=True, help_text="The run time the lease was sized for (real seconds on the car)."
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    output_sha256 = models.CharField(max_length=64, blank=True)
    done_by = models.ForeignKey(
        "fleet.Vehicle", null=True, blank=True, on_delete=models.SET_NULL, related_name="units_done"
    )
    seconds = models.FloatField(null=True, blank=True)
    energy_wh = models.FloatField(null=True, blank=True)
    emulated = models.BooleanField(default=False)
    runtime_version = models.CharField(max_length=40, blank=True)
    error = models.TextField(blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["bid", "index"]
        constraints = [models.UniqueConstraint(fields=["bid", "index"], name="one_unit_per_index")]

    def __str__(self) -> str:
        return f"Unit {self.index} of bid {self.bid_id}"

    @property
    def items(self) -> int:
        return self.item_end - self.item_start

    @property
    def primary_id(self) -> int:
        return self.replica_of_id or self.pk


class ResultFault(models.Model):
    """Evidence against a car: a result outvoted by other cars, or a known answer it got wrong. Repeated faults in
    a window suspend the car (marketplace/verdicts.py)."""

    class Kind(models.TextChoices):
        OUTVOTED = "outvoted", "Disagreed with other cars"
        KNOWN_ANSWER = "known_answer", "Failed a known-answer check"

    vehicle = models.ForeignKey("fleet.Vehicle", on_delete=models.CASCADE, related_name="result_faults")
    unit = models.ForeignKey(WorkUnit, null=True, blank=True, on_delete=models.SET_NULL, related_name="faults")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} by {self.vehicle}"


class ResultAudit(models.Model):
    """Results of a caught car re-checked in one bid. When a car is caught returning a wrong result, every result it
    returned alone (no other car ran it) in the audit window is checked again (marketplace/verdicts.py: audit_open):
    a sample of its items computed by the platform, then, where that sample is wrong, other cars; wrong results are
    replaced in the customer's results, which get a new version, and billing corrects the charge and the owner's
    earnings (billing/services/corrections.py). The customer's job page shows each audit of their bid."""

    bid = models.ForeignKey(Bid, on_delete=models.PROTECT, related_name="audits")
    vehicle = models.ForeignKey("fleet.Vehicle", on_delete=models.PROTECT, related_name="audits")
    evidence = models.CharField(max_length=16, choices=ResultFault.Kind.choices, help_text="What caught the car.")
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    units = models.JSONField(default=list, help_text="The re-checked results: their work units' ids.")
    units_wrong = models.PositiveIntegerField(default=0, help_text="Re-checked results the other cars outvoted.")
    items_checked = models.PositiveIntegerField(default=0)
    sampled_right = models.PositiveIntegerField(
        default=0, help_text="Re-checked results whose sample of items the platform computed itself agreed: kept."
    )
    items_replaced = models.PositiveIntegerField(default=0, help_text="Items whose delivered output was replaced.")
    items_removed = models.PositiveIntegerField(
        default=0, help_text="Items no other car could settle: removed from the results (NaN) and not charged."
    )
    result_version = models.PositiveIntegerField(null=True, blank=True, help_text="The results file's version after.")

    class Meta:
        ordering = ["-opened_at", "-pk"]

    def __str__(self) -> str:
        return f"Audit of {self.vehicle} in bid {self.bid_id}"


class SelfTest(models.Model):
    """A car's first run of a variant: the held-out items of a customer's dataset, timed and compared with FP32.

    It measures where the work runs (PRODUCT.md: accuracy and speed are properties of (variant, hardware)): the car's
    speed on this variant (fleet.models.VehicleThroughput) and whether the variant meets the customer's tolerance on
    this car's hardware. A car that misses it gets none of that variant's work; its result also counts for its
    compute class (VariantAccuracy). Unpaid, like a host's benchmark on other marketplaces."""

    class Status(models.TextChoices):
        LEASED = "leased", "Running on the car"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Missed the tolerance"
        LOST = "lost", "Lost (expired or released)"

    vehicle = models.ForeignKey("fleet.Vehicle", on_delete=models.CASCADE, related_name="self_tests")
    variant = models.ForeignKey(PrecisionVariant, on_delete=models.CASCADE, related_name="self_tests")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    items = models.JSONField(default=list, help_text="The dataset's held-out items run, by index.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.LEASED, db_index=True)
    lease_id = models.CharField(max_length=36)
    leased_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    compute_class = models.CharField(max_length=24, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    energy_wh = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    runtime_version = models.CharField(max_length=40, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-leased_at"]
        indexes = [models.Index(fields=["vehicle", "variant", "status"])]

    def __str__(self) -> str:
        return f"Self-test of {self.variant} on {self.vehicle}: {self.get_status_display()}"

    @property
    def unit_id(self) -> str:
        """The id the car knows the self-test by (the work endpoints tell the two kinds apart by it)."""
        return f"{SELF_TEST_PREFIX}{self.pk}"


SELF_TEST_PREFIX = "selftest-"


class VariantAccuracy(models.Model):
    """A variant's accuracy against FP32 on one compute class: measured by the platform on its own CPU when the
    variant is built, then by every car of the class in its self-test (the worst seen is kept)."""

    variant = models.ForeignKey(PrecisionVariant, on_delete=models.CASCADE, related_name="accuracies")
    compute_class = models.CharField(max_length=24)
    metrics = models.JSONField(default=dict, help_text="The worst measured on this class (accuracy.py's metrics).")
    passes = models.BooleanField(help_text="Whether every measurement on this class met the model's tolerance.")
    cars_tested = models.PositiveIntegerField(default=0)
    cars_failed = models.PositiveIntegerField(default=0)
    platform = models.BooleanField(default=False, help_text="Also measured on the platform's own CPU.")
    measured_at = models.DateTimeField()

    class Meta:
        ordering = ["variant", "compute_class"]
        constraints = [
            models.UniqueConstraint(fields=["variant", "compute_class"], name="one_accuracy_per_variant_class"),
        ]

    def __str__(self) -> str:
        return f"{self.variant} on {self.compute_class}"


class PricingPolicy(models.Model):
    """The market's prices and rules, set by staff: the platform fee, the reserve price of each pool, the price
    ceiling and the auction interval. Append-only: every change is a new row (who, when, what), and the newest row is
    in force from the next auction round. Prices are milli-cents per CH (1 ¢ = 1000 m¢).

    The owners' side of the rules lives with what it governs: payouts in billing.PayoutPolicy, the default energy
    price in fleet.FleetPolicy (migration 0009 split the one policy these used to share, version by version)."""

    platform_fee_pct = models.DecimalField(
        "platform fee (%)", max_digits=5, decimal_places=2, validators=[MinValueValidator(0), MaxValueValidator(50)]
    )
    reserve_int8_mcents = models.PositiveIntegerField("INT8 reserve (m¢/CH)")
    reserve_fp8_mcents = models.PositiveIntegerField("FP8 reserve (m¢/CH)")
    reserve_fp16_mcents = models.PositiveIntegerField("FP16 reserve (m¢/CH)")
    reserve_fp32_mcents = models.PositiveIntegerField("FP32 reserve (m¢/CH)")
    price_ceiling_mcents = models.PositiveIntegerField("price ceiling (m¢/CH)", validators=[MinValueValidator(1)])
    auction_interval_seconds = models.PositiveIntegerField(
        "auction interval (s)", validators=[MinValueValidator(10), MaxValueValidator(3600)]
    )
    note = models.CharField(max_length=255, blank=True, help_text="Why this change (shown in the history).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "pricing policy"
        verbose_name_plural = "pricing policies (newest is in force)"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(price_ceiling_mcents__gte=models.F("reserve_int8_mcents"))
                & models.Q(price_ceiling_mcents__gte=models.F("reserve_fp8_mcents"))
                & models.Q(price_ceiling_mcents__gte=models.F("reserve_fp16_mcents"))
                & models.Q(price_ceiling_mcents__gte=models.F("reserve_fp32_mcents")),
                name="ceiling_above_reserves",
                violation_error_message="The price ceiling must be at least every reserve price.",
            )
        ]

    def __str__(self) -> str:
        return f"Pricing of {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def reserves(self) -> dict[str, int]:
        return {
            "int8": self.reserve_int8_mcents,
            "fp8": self.reserve_fp8_mcents,
            "fp16": self.reserve_fp16_mcents,
            "fp32": self.reserve_fp32_mcents,
        }
