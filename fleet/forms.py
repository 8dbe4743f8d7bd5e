import zoneinfo
from datetime import UTC, datetime, time
from decimal import Decimal

from django import forms
from django.utils.html import format_html, format_html_join

from core.money import dollars_to_mcents, usd_text_from_mcents

from .models import HardwareProfile, OptInPolicy
from .services import time_zone_problem

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def time_zone_choices() -> list[tuple[str, str]]:
    """The zones offered, each with its offset from UTC now: ("Europe/Berlin", "UTC+01:00")."""
    now = datetime.now(UTC)
    choices = []
    for name in sorted(zoneinfo.available_timezones()):
        if "/" in name or name == "UTC":
            offset = now.astimezone(zoneinfo.ZoneInfo(name)).strftime("%z")  # "+0100"
            choices.append((name, f"UTC{offset[:3]}:{offset[3:]}"))
    return choices


class TimeZoneInput(forms.TextInput):
    """A text field searching the zones as one types (a <datalist>), which static/js/local_time.js sets to the
    browser's own zone on a new form."""

    def __init__(self, attrs=None):
        super().__init__({"list": "time-zones", "autocomplete": "off", "spellcheck": "false", **(attrs or {})})

    def render(self, name, value, attrs=None, renderer=None):
        options = format_html_join("", '<option value="{}" label="{}"></option>', time_zone_choices())
        return format_html('{}<datalist id="time-zones">{}</datalist>', super().render(name, value, attrs, renderer),
                           options)  # fmt: skip


class VehicleForm(forms.Form):
    display_name = forms.CharField(
        max_length=80, label="Name", help_text="What you call this car, e.g. “Blue Model 3”."
    )
    hardware = forms.ModelChoiceField(
        queryset=HardwareProfile.objects.all(),
        empty_label=None,
        help_text="The car's inference computer (shown in the car's software information).",
    )
    time_zone = forms.CharField(
        max_length=64, initial="UTC", widget=TimeZoneInput,
        help_text="Where the car is usually parked: type a city to search, e.g. Berlin.",
    )  # fmt: skip
    region = forms.CharField(max_length=64, required=False, help_text="Optional, e.g. US-CA.")
    battery_capacity_kwh = forms.FloatField(label="Battery capacity (kWh)", min_value=5, max_value=300, initial=75)
    # Asked in dollars, as all money on the site; kept in ¢/kWh (Vehicle.energy_price_cents_per_kwh): $0.0001 is
    # the model's 0.01 ¢, so nothing typed is rounded.
    energy_price_usd_per_kwh = forms.DecimalField(
        label="Your electricity price ($ per kWh)",
        min_value=0,
        max_value=5,
        decimal_places=4,
        help_text="Your asking price always covers this, so you never compute at a loss.",
        error_messages={
            "min_value": "At least $0.00 per kWh.",
            "max_value": "At most $5.00 per kWh.",
            "max_decimal_places": "To $0.0001 per kWh at most (4 decimal places).",
            "invalid": "Enter a price in dollars per kWh, e.g. 0.16.",
        },
    )
    vin = forms.CharField(
        label="VIN (optional)",
        max_length=17,
        required=False,
        help_text="Only a fingerprint and the last four characters are kept.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:  # a new form starts at the browser's zone (UTC without JavaScript)
            self.fields["time_zone"].widget.attrs["data-default-browser-time-zone"] = ""
        cents = self.initial.pop("energy_price_cents_per_kwh", None)
        if cents is not None:
            whole, _, part = f"{Decimal(str(cents)) / 100:f}".partition(".")
            self.initial.setdefault("energy_price_usd_per_kwh", f"{whole}.{part.rstrip('0').ljust(2, '0')}")

    def clean_time_zone(self) -> str:
        name = self.cleaned_data["time_zone"].strip()
        if problem := time_zone_problem(name):
            raise forms.ValidationError(problem)
        return name

    def clean(self):
        cleaned = super().clean()
        dollars = cleaned.pop("energy_price_usd_per_kwh", None)
        if dollars is not None:
            cleaned["energy_price_cents_per_kwh"] = (dollars * 100).quantize(Decimal("0.01"))  # exact: 4 decimals
        return cleaned


class PolicyForm(forms.ModelForm):
    """The opt-in policy, with the weekly windows as a from/to pair per day and 'I leave at' as a time today."""

    # Asked in dollars, as every price on the site; kept in m¢ per CH. Digits bounded, so that no price overflows the
    # database (a 500).
    min_price_usd_per_ch = forms.DecimalField(
        label="Minimum price ($ per CH)",
        min_value=0,
        max_digits=12,
        decimal_places=5,
        help_text="The lowest price per compute-hour you accept, e.g. 0.015. Your car never sells below your "
        "electricity cost either.",
        error_messages={
            "min_value": "At least $0.00 per CH.",
            "max_digits": "At most $9,999,999.99999 per CH.",
            "max_whole_digits": "At most $9,999,999.99999 per CH.",
            "max_decimal_places": "To $0.00001 per CH at most (5 decimal places).",
            "invalid": "Enter a price in dollars per CH, e.g. 0.015.",
        },
    )
    leave_at_time = forms.TimeField(
        label="I will leave today at",
        required=False,
        widget=forms.TimeInput(attrs={"type": "time"}),
        help_text="A hard limit for today, in the car's time zone. Leave empty if you don't know.",
    )

    class Meta:
        model = OptInPolicy
        fields = (
            "enabled", "battery_floor_pct", "plugged_in_only", "max_energy_kwh_per_day", "max_power_w",
            "min_price_usd_per_ch",
        )  # fmt: skip
        labels = {"enabled": "Let this car work while parked"}
        help_texts = {
            "battery_floor_pct": "The car never computes below this charge (10–100%).",
            "plugged_in_only": "Only compute while charging.",
            "max_energy_kwh_per_day": "The most energy compute may use per day.",
            "max_power_w": "The most power compute may draw (at most 1000 W, and at most what the hardware draws).",
        }

    def __init__(self, *args, vehicle, **kwargs):
        super().__init__(*args, **kwargs)
        self.vehicle = vehicle
        self.initial.setdefault("min_price_usd_per_ch", usd_text_from_mcents(self.instance.min_price_mcents_per_ch))
        self.day_fields = []
        by_day = {w[0]: w for w in (self.instance.windows or [])}
        for index, name in enumerate(WEEKDAYS):
            window = by_day.get(index)
            start = _minutes_to_time(window[1]) if window else None
            end = _minutes_to_time(window[2]) if window else None
            from_name, to_name = f"day{index}_from", f"day{index}_to"
            self.fields[from_name] = forms.TimeField(
                label=f"{name} from", required=False, initial=start, widget=forms.TimeInput(attrs={"type": "time"})
            )
            self.fields[to_name] = forms.TimeField(
                label=f"{name} to", required=False, initial=end, widget=forms.TimeInput(attrs={"type": "time"})
            )
            self.day_fields.append((name, self[from_name], self[to_name]))
        if self.instance.leave_at and self.instance.leave_at > datetime.now(vehicle.tz):
            self.fields["leave_at_time"].initial = self.instance.leave_at.astimezone(vehicle.tz).time()

    def clean(self):
        cleaned = super().clean()
        windows = []
        for index, name in enumerate(WEEKDAYS):
            start, end = cleaned.get(f"day{index}_from"), cleaned.get(f"day{index}_to")
            if (start is None) != (end is None):
                self.add_error(f"day{index}_from", f"{name}: give both a start and an end time, or neither.")
                continue
            if start is not None:
                end_minute = _time_to_minutes(end)
                windows.append([index, _time_to_minutes(start), end_minute])
        cleaned["windows"] = windows
        leave = cleaned.get("leave_at_time")
        if leave is not None:
            today = datetime.now(self.vehicle.tz).date()
            cleaned["leave_at"] = datetime.combine(today, leave, tzinfo=self.vehicle.tz)
        else:
            cleaned["leave_at"] = None
        return cleaned

    def policy_changes(self) -> dict:
        changes = {name: self.cleaned_data[name] for name in self.Meta.fields if name != "min_price_usd_per_ch"}
        changes["min_price_mcents_per_ch"] = dollars_to_mcents(self.cleaned_data["min_price_usd_per_ch"])
        changes["windows"] = self.cleaned_data["windows"]
        if "leave_at_time" in self.changed_data:
            changes["leave_at"] = self.cleaned_data["leave_at"]
        return changes


def _minutes_to_time(minutes: int) -> time:
    minutes = minutes % 1440
    return time(minutes // 60, minutes % 60)


def _time_to_minutes(value: time) -> int:
    return value.hour * 60 + value.minute
