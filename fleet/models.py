import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from .agent import precisions


class Precision(models.TextChoices):
    """The precisions (named in fleet.agent.precisions), cheapest first: the order customers choose from, in the bid
    form, the API's choices and the migrations' field choices, so it stays as it is (the pools' order is another)."""

    INT8 = precisions.INT8, "INT8"
    FP8 = precisions.FP8, "FP8"
    FP16 = precisions.FP16, "FP16"
    FP32 = precisions.FP32, "FP32"


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"'{value}' is not a time zone name such as Europe/Berlin or America/New_York.")


# A market region's code: letters, digits and hyphens, e.g. US-CA or DE (stored upper case: region_normalize). Each
# region is a market of its own (marketplace.rounds): its cars sell in its round, at its prices.
REGION_MAX_LENGTH = 16


def region_normalize(value: str) -> str:
    return (value or "").strip().upper()


def validate_region(value: str) -> None:
    if value and (
        len(value) > REGION_MAX_LENGTH
        or not value[0].isalnum()
        or not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in value)
        or value != value.upper()
    ):
        raise ValidationError(
            f"'{value}' is not a region code: up to {REGION_MAX_LENGTH} capital letters, digits and hyphens, e.g. "
            "US-CA or DE."
        )


class HardwareProfile(models.Model):
    """An in-car inference computer (HW3, HW4, ...). Every figure is editable by staff: HW5's are assumptions."""

    name = models.CharField(max_length=40, unique=True)
    int8_tops = models.FloatField("INT8 TOPS", validators=[MinValueValidator(0.1)], help_text="Dense INT8 TOPS.")
    factor_int8 = models.FloatField(
        "INT8 factor", default=1.0, validators=[MinValueValidator(0.0)], help_text="Throughput relative to INT8."
    )
    factor_fp8 = models.FloatField(
        "FP8 factor", null=True, blank=True, validators=[MinValueValidator(0.0)], help_text="Empty: FP8 unsupported."
    )
    factor_fp16 = models.FloatField(
        "FP16 factor", null=True, blank=True, validators=[MinValueValidator(0.0)], help_text="Empty: unsupported."
    )
    factor_fp32 = models.FloatField(
        "FP32 factor", null=True, blank=True, validators=[MinValueValidator(0.0)], help_text="Empty: unsupported."
    )
    typical_power_w = models.PositiveIntegerField(
        "typical power (W)", help_text="Draw while computing at full throughput."
    )
    max_power_w = models.PositiveIntegerField("maximum power (W)", validators=[MaxValueValidator(20_000)])
    runtime_version = models.CharField(max_length=40, help_text="ONNX Runtime version on board.")
    is_assumed = models.BooleanField(default=False, help_text="Figures are estimates (e.g. HW5 before release).")
    notes = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name}{' (assumed)' if self.is_assumed else ''}"

    def clean(self) -> None:
        if (
            self.max_power_w is not None
            and self.typical_power_w is not None
            and self.max_power_w < self.typical_power_w
        ):
            raise ValidationError({"max_power_w": "Maximum power must be at least the typical power."})

    @property
    def factors(self) -> dict[str, float]:
        """Supported precisions and their throughput factors."""
        values = {
            Precision.INT8: self.factor_int8,
            Precision.FP8: self.factor_fp8,
            Precision.FP16: self.factor_fp16,
            Precision.FP32: self.factor_fp32,
        }
        return {str(p): f for p, f in values.items() if f}

    def ch_per_hour(self, precision: str) -> float:
        """Compute-hours per hour at full throughput: int8_tops × factor / 100."""
        return self.int8_tops * self.factors.get(precision, 0.0) / 100


class Vehicle(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused by owner"
        SUSPENDED = "suspended", "Suspended by Idlefleet"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="vehicles")
    display_name = models.CharField(max_length=80)
    hardware = models.ForeignKey(HardwareProfile, on_delete=models.PROTECT, related_name="vehicles")
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    region = models.CharField(
        max_length=64, blank=True, validators=[validate_region], db_index=True,
        help_text="The market region it sells in, e.g. US-CA or DE. Blank: the market of cars with no region.",
    )  # fmt: skip
    battery_capacity_kwh = models.FloatField(
        "battery capacity (kWh)", default=75.0, validators=[MinValueValidator(5), MaxValueValidator(300)]
    )
    energy_price_cents_per_kwh = models.DecimalField(
        "home energy price (¢/kWh)",
        max_digits=6,
        decimal_places=2,
        validators=[MinValueValidator(0), MaxValueValidator(500)],
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    status_reason = models.CharField(max_length=255, blank=True)
    # A VIN identifies a person's car: keep only a hash (for duplicate detection) and the last four characters.
    vin_hash = models.CharField(max_length=64, blank=True, db_index=True)
    vin_last4 = models.CharField(max_length=4, blank=True)
    is_simulated = models.BooleanField(default=False, help_text="Driven by the fleet simulator.")
    # Reputation (marketplace/verification.py): a streak of validated results earns fewer replicas; a fault resets it.
    valid_streak = models.PositiveIntegerField(default=0, help_text="Validated results in a row.")
    results_valid = models.PositiveIntegerField(default=0)
    results_invalid = models.PositiveIntegerField(default=0)
    last_fault_at = models.DateTimeField(null=True, blank=True)
    # What the car's agent reports about its compute (fleet/agent/hardware.py), and the class the platform derives from
    # it: accuracy and speed are measured per class and per car, never assumed from the hardware profile.
    compute = models.JSONField(default=dict, blank=True, help_text="The agent's hardware report.")
    compute_class = models.CharField(
        max_length=24, blank=True, db_index=True, help_text="Derived from the report: which INT8 kernels the car runs."
    )
    compute_reported_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["display_name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "display_name"], name="vehicle_unique_name_per_owner"),
        ]

    def __str__(self) -> str:
        return self.display_name

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)


def default_windows() -> list:
    return []


class FleetPolicy(models.Model):
    """The fleet's defaults, set by staff: the energy price a new car starts with (its owner may set their own).
    Append-only: every change is a new row, and the newest is in force."""

    default_energy_price_cents_per_kwh = models.DecimalField(
        "default energy price (¢/kWh)", max_digits=6, decimal_places=2, validators=[MinValueValidator(0)]
    )
    note = models.CharField(max_length=255, blank=True, help_text="Why this change (shown in the history).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "fleet policy"
        verbose_name_plural = "fleet policies (newest is in force)"

    def __str__(self) -> str:
        return f"Fleet defaults of {self.created_at:%Y-%m-%d %H:%M}"


class OptInPolicy(models.Model):
    """When and how a vehicle may work. Validated by `fleet.services.policy_validate`."""

    vehicle = models.OneToOneField(Vehicle, on_delete=models.CASCADE, related_name="policy")
    enabled = models.BooleanField(default=True, db_index=True)
    # [[weekday 0=Mon, start minute, end minute], ...] in the car's time zone; empty = any time;
    # end < start runs past midnight; end == start is the whole day.
    windows = models.JSONField(default=default_windows, blank=True)
    battery_floor_pct = models.PositiveSmallIntegerField(
        "battery floor (%)", default=60, validators=[MinValueValidator(10), MaxValueValidator(100)]
    )
    plugged_in_only = models.BooleanField(default=False)
    max_energy_kwh_per_day = models.DecimalField(
        "energy cap (kWh/day)", max_digits=6, decimal_places=2, default=5,
        validators=[MinValueValidator(0), MaxValueValidator(24)],
    )  # fmt: skip
    max_power_w = models.PositiveIntegerField(
        "maximum power (W)", default=300, validators=[MinValueValidator(10), MaxValueValidator(1000)]
    )
    # Milli-cents per CH, as every market price (core/money.py): an owner may ask less than a cent, e.g. $0.015.
    min_price_mcents_per_ch = models.PositiveBigIntegerField("minimum price (m¢/CH)", default=0)
    leave_at = models.DateTimeField(null=True, blank=True, help_text="Today's declared departure: a hard limit.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Policy of {self.vehicle}"


class VehicleCredential(models.Model):
    """A car's signing key. Only the Ed25519 public key is stored: the database holds nothing that can sign."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="credentials")
    key_id = models.CharField(max_length=32, unique=True)
    public_key = models.BinaryField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    # Indexed: fleet.authentication.revocations_remark reads the recent ones every 15 s, fleet-wide.
    revoked_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle"], condition=Q(revoked_at__isnull=True), name="one_active_credential_per_vehicle"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_id} ({'revoked' if self.revoked_at else 'active'})"


class VehicleState(models.Model):
    """The last heartbeat, snapshotted from Redis (where the live copy is) every minute or so."""

    vehicle = models.OneToOneField(Vehicle, on_delete=models.CASCADE, related_name="state")
    received_at = models.DateTimeField()
    observed_at = models.DateTimeField()
    clock_rate = models.FloatField(default=1.0)
    parked = models.BooleanField()
    plugged_in = models.BooleanField()
    charge_power_w = models.FloatField(default=0)
    battery_pct = models.FloatField()
    network = models.CharField(max_length=16)
    bandwidth_down_mbps = models.FloatField(default=0)
    bandwidth_up_mbps = models.FloatField(default=0)
    latency_ms = models.FloatField(default=0)
    runtime_version = models.CharField(max_length=40, blank=True)
    models_cached = models.JSONField(default=list, blank=True)
    computing = models.BooleanField(default=False)
    compute_power_w = models.FloatField(default=0)
    energy_used_today_wh = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.vehicle} @ {self.received_at:%H:%M:%S}"


# A car's live state as the heartbeat path stores it: every column of VehicleState but the keys.
STATE_FIELDS = [f.name for f in VehicleState._meta.local_concrete_fields if f.name not in ("id", "vehicle")]


class ParkingSession(models.Model):
    """One stay of a car in one place, from the heartbeat stream (times on the car's clock)."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="parking_sessions")
    arrived_at = models.DateTimeField()
    departed_at = models.DateTimeField(null=True, blank=True)
    departure_announced = models.BooleanField(default=False, help_text="The car sent a departure notice.")

    class Meta:
        ordering = ["-arrived_at"]
        indexes = [
            models.Index(fields=["vehicle", "-arrived_at"]),
            # The admin's list, newest first (it adds -id to make the order total): read in index order, not sorted.
            models.Index(fields=["-arrived_at", "-id"], name="fleet_parking_newest"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle"], condition=Q(departed_at__isnull=True), name="one_open_parking_session_per_vehicle"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.vehicle} parked {self.arrived_at:%Y-%m-%d %H:%M}"

    @property
    def duration_s(self) -> float | None:
        return (self.departed_at - self.arrived_at).total_seconds() if self.departed_at else None


class VehicleThroughput(models.Model):
    """How fast a car really runs one workload (a model variant's file, by sha256), measured where the work runs: a
    self-test on first use, then every unit's timing (fleet.services.throughput_record). Sizing, the CH a car offers
    and its energy-based ask use these, not the hardware profile's rated speed, once they exist.

    Speeds are real seconds on the car; a simulated car whose clock runs faster is converted where car time is meant.
    """

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="throughputs")
    workload = models.CharField(max_length=64, help_text="sha256 of the model file run.")
    precision = models.CharField(max_length=8, choices=Precision.choices)
    ch_per_item = models.FloatField(help_text="The workload's fixed cost per item, CH.")
    items_per_s = models.FloatField(help_text="Items per second of compute, smoothed over the car's units.")
    wh_per_item = models.FloatField(help_text="Energy per item, Wh, as the car measured it.")
    samples = models.PositiveIntegerField(default=0, help_text="Runs measured (the self-test is the first).")
    compute_class = models.CharField(max_length=24, blank=True, help_text="The car's class when measured.")
    measured_at = models.DateTimeField()

    class Meta:
        ordering = ["vehicle", "precision", "workload"]
        constraints = [
            models.UniqueConstraint(fields=["vehicle", "workload"], name="one_throughput_per_vehicle_workload"),
        ]

    def __str__(self) -> str:
        return f"{self.vehicle} {self.precision} {self.items_per_s:.3g} items/s"

    @property
    def ch_per_hour(self) -> float:
        """Compute-hours delivered per hour of computing (real time)."""
        return self.items_per_s * self.ch_per_item * 3600

    @property
    def wh_per_ch(self) -> float:
        """Energy per compute-hour delivered, Wh."""
        return self.wh_per_item / self.ch_per_item if self.ch_per_item else 0.0


class VehicleWorkDay(models.Model):
    """What a car's work took on one day of its own calendar: units (self-tests included), compute time and energy,
    as the car measured them (fleet.services.throughput_record). The owner's page shows today's."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="work_days")
    day = models.DateField(help_text="In the car's time zone.")
    units = models.PositiveIntegerField(default=0)
    items = models.PositiveBigIntegerField(default=0)
    seconds = models.FloatField(default=0.0, help_text="Compute time, s.")
    energy_wh = models.FloatField(default=0.0)

    class Meta:
        ordering = ["vehicle", "-day"]
        constraints = [models.UniqueConstraint(fields=["vehicle", "day"], name="one_work_day_per_vehicle")]

    def __str__(self) -> str:
        return f"{self.vehicle} on {self.day}"

    @property
    def wh_per_unit(self) -> float | None:
        return self.energy_wh / self.units if self.units else None
