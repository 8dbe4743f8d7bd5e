"""What the browser journeys share: signing up and logging in through the pages, parked cars for supply, the
screenshots for the README and the accessibility checks."""

import itertools
import os
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
# Outside the tracked tree (var/ is ignored), so that a test run leaves `git status` clean; `make screenshots` sets
# IDLEFLEET_SCREENSHOTS=docs/screenshots to refresh the README's (a path relative to the repository's root).
SCREENSHOTS = ROOT / os.environ.get("IDLEFLEET_SCREENSHOTS", "var/screenshots")

PASSWORD = "a-long-browser-password-42"


def sign_up(page, *, username: str, role: str) -> None:
    """Sign up through the sign-up page (role "customer" or "owner"); the site lands on the role's dashboard."""
    page.goto("/")
    page.get_by_role("button", name="Sign up").first.click()
    page.wait_for_url("**/signup/")
    assert_accessible_basics(page)
    page.locator("#id_username").fill(username)
    page.locator("#id_email").fill(f"{username}@example.test")
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    page.locator(f"input[name=role][value={role}]").check()
    page.locator("main").get_by_role("button", name="Sign up").click()
    page.get_by_text(f"Welcome to Idlefleet, {username}.").wait_for()


def log_in(page, *, username: str, password: str) -> None:
    page.goto("/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login/" not in url)


def parked_car(
    owner, *, tz: str, agents, name: str = "car", seed: int = 1, min_price_cents: int = 0, heartbeat: float = 1.0
):
    """A car registered for `owner`, its real agent process started (a homebody, parked at home on WiFi at night),
    with a battery floor its simulated battery is above and a record of validated results, so its results stand alone
    (result checking has its own tests: tests/marketplace/test_verdicts.py). Returns the vehicle once it can work."""
    from fleet.models import OptInPolicy, Vehicle
    from tests.factories import vehicle_with_credential

    vehicle, credential = vehicle_with_credential(owner, name=f"{owner.username}'s car", time_zone=tz)
    OptInPolicy.objects.filter(vehicle=vehicle).update(
        battery_floor_pct=10, min_price_mcents_per_ch=min_price_cents * 1000
    )
    Vehicle.objects.filter(pk=vehicle.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    agents(credential.to_file_text(), tz=tz, name=name, seed=seed, heartbeat=heartbeat)
    assert wait_for(lambda: availability(vehicle).available, timeout=60), availability(vehicle).reasons
    return vehicle


def availability(vehicle):
    """What the platform says the car can do now (read afresh: the policy may have changed)."""
    from fleet.models import Vehicle
    from fleet.selectors import vehicles_live

    return vehicles_live([Vehicle.objects.select_related("hardware", "policy").get(pk=vehicle.pk)])[0].availability


def screenshot(page, name: str) -> Path:
    """Save the whole page as <name>.png in SCREENSHOTS: var/screenshots/, or docs/screenshots/ (the README's) when
    asked (`make screenshots`)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


def night_time_zone() -> str:
    """A time zone where it is between 01:00 and 04:59 now: simulated cars are parked at home on WiFi then."""
    from fleet.forms import time_zone_choices

    for name, _ in time_zone_choices():
        if 1 <= datetime.now(UTC).astimezone(zoneinfo.ZoneInfo(name)).hour <= 4:
            return name
    raise AssertionError("no time zone is between 01:00 and 05:00: the zone database is incomplete")


def agent_log(tmp_path: Path, name: str = "car") -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text()[-3000:] if path.exists() else "(no log)"


# --- Accessibility basics ------------------------------------------------------------------------------------------

UNLABELLED_CONTROLS = """() => {
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const named = (el) => {
    if ((el.getAttribute('aria-label') || '').trim()) return true;
    const by = el.getAttribute('aria-labelledby');
    if (by && by.split(/\\s+/).some((id) => (document.getElementById(id)?.textContent || '').trim())) return true;
    return [...(el.labels || [])].some((label) => label.textContent.trim());
  };
  const controls = [...document.querySelectorAll('input, select, textarea')].filter(
    (el) => !['hidden', 'submit', 'button', 'reset'].includes(el.type) && visible(el));
  const buttons = [...document.querySelectorAll('button, [role=button], input[type=submit]')].filter(visible).filter(
    (el) => !((el.textContent || el.value || el.getAttribute('aria-label') || '').trim()));
  const canvases = [...document.querySelectorAll('canvas')].filter(
    (el) => !(el.getAttribute('aria-label') || '').trim());
  return [...controls.filter((el) => !named(el)), ...buttons, ...canvases].map((el) => el.outerHTML.slice(0, 160));
}"""

HEADINGS = "() => [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].map((h) => Number(h.tagName[1]))"


WIDER_THAN_WINDOW = """() => {
  const width = window.innerWidth;
  const wide = [...document.querySelectorAll('body *')].filter((el) => el.getBoundingClientRect().right > width + 1);
  // The outermost culprits only (a wide table, not each of its cells), as a tester would point at them.
  const outermost = wide.filter((el) => !wide.includes(el.parentElement));
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width,
          culprits: outermost.slice(0, 5).map((el) => `${el.outerHTML.slice(0, 120)} (right edge at ${
            Math.round(el.getBoundingClientRect().right)} px)`)};
}"""


def assert_no_sideways_scroll(page) -> None:
    """The page fits its window's width: nothing on it (a wide table, a long name, the navigation) makes it scroll
    sideways, on a 390 px phone as in a 1280 px window."""
    fit = page.evaluate(WIDER_THAN_WINDOW)
    assert fit["scrollWidth"] <= fit["innerWidth"], (
        f"{page.url} is {fit['scrollWidth']} px wide in a {fit['innerWidth']} px window: {fit['culprits']}"
    )


def assert_accessible_basics(page, *, headings: bool = True) -> None:
    """Every visible form field has a label (or an aria-label), buttons and charts have names, the page never scrolls
    sideways, and (our pages, not Django admin's) the page has one h1, first, and its heading levels never skip one
    going down (h1 → h3)."""
    page.wait_for_load_state()
    assert_no_sideways_scroll(page)
    unlabelled = page.evaluate(UNLABELLED_CONTROLS)
    assert unlabelled == [], f"{page.url}: fields, buttons or charts without an accessible name: {unlabelled}"
    if not headings:
        return
    levels = page.evaluate(HEADINGS)
    assert levels.count(1) == 1 and levels[0] == 1, f"{page.url}: one h1, first: headings are {levels}"
    skips = [(a, b) for a, b in itertools.pairwise(levels) if b > a + 1]
    assert skips == [], f"{page.url}: heading levels skip: {levels}"


def focused(page) -> dict:
    """The focused element: its id, tag, type and whether it shows a focus ring (the pages run with reduced motion,
    so the ring is drawn at once). A date field's calendar button is its own tab stop inside the field, where the
    field itself does not match :focus: that stop counts as shown."""
    return page.evaluate(
        """() => {
          const el = document.activeElement;
          const style = getComputedStyle(el);
          const shadow = style.boxShadow.replace('rgba(0, 0, 0, 0) 0px 0px 0px 0px', 'none');
          const ring = (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0) || shadow !== 'none';
          const calendarButton = el.type === 'datetime-local' && !el.matches(':focus');
          return {id: el.id, tag: el.tagName.toLowerCase(), type: el.type || '', text: (el.textContent || '').trim(),
                  visible: calendarButton || ring, ring: style.outlineStyle + ' ' + style.boxShadow};
        }"""
    )
