"""The audit log: staff's price changes, suspensions and refunds are recorded with who, what and when; staff read
the log in the admin and nobody can change it there."""

import pytest
from django.db import connection
from django.test import Client

from accounts.audit import audit_record
from accounts.models import AuditEvent
from billing.models import PaymentAuthorization
from billing.services import settling
from fleet.models import Vehicle
from marketplace.models import PricingPolicy
from tests.billing import builders
from tests.factories import vehicle_with_credential

pytestmark = pytest.mark.django_db


def policy_form(**overrides):
    data = {
        "platform_fee_pct": "12.5", "price_ceiling_mcents": 50_000, "auction_interval_seconds": 30,
        "reserve_int8_mcents": 2500, "reserve_fp8_mcents": 3000, "reserve_fp16_mcents": 3000,
        "reserve_fp32_mcents": 4000, "note": "California pilot",
    }  # fmt: skip
    data.update(overrides)
    return data


def test_audit_record_names_the_actor_the_action_and_the_target(staff, olivia):
    vehicle, _ = vehicle_with_credential(olivia, name="Blue car")

    event = audit_record(actor=staff, action="vehicle.suspend", target=vehicle, details={"reason": "wrong results"})

    event.refresh_from_db()
    assert (event.actor, event.actor_username, event.action) == (staff, "staff", "vehicle.suspend")
    assert (event.target_type, event.target_id, event.target_repr) == ("fleet.vehicle", str(vehicle.pk), str(vehicle))
    assert event.details == {"reason": "wrong results"}
    assert event.created_at is not None


def test_a_row_written_while_the_log_lived_in_ops_reads_through_accounts(staff):
    """The log moved from ops to accounts without its rows moving: a row in the table ops' migrations made, written
    the way the old code wrote it, is an event of the new model, with its actor and its user's `audit_events`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ops_auditevent (actor_id, actor_username, action, target_type, target_id, target_repr,"
            " details, created_at) VALUES (%s, 'staff', 'vehicle.suspend', 'fleet.vehicle', '7', 'Blue car', %s,"
            " now()) RETURNING id",
            [staff.pk, '{"reason": "wrong results"}'],
        )
        [row_id] = cursor.fetchone()

    event = AuditEvent.objects.get(pk=row_id)
    assert (event.actor, event.action, event.target_type, event.target_id, event.target_repr) == (
        staff, "vehicle.suspend", "fleet.vehicle", "7", "Blue car"
    )  # fmt: skip
    assert event.details == {"reason": "wrong results"}
    assert list(staff.audit_events.all()) == [event]


def test_the_platform_itself_may_be_the_actor(olivia):
    from django.contrib.auth.models import AnonymousUser

    vehicle, _ = vehicle_with_credential(olivia)
    assert audit_record(actor=None, action="vehicle.suspend", target=vehicle).actor is None
    anonymous = audit_record(actor=AnonymousUser(), action="vehicle.suspend", target=vehicle)
    assert (anonymous.actor, anonymous.actor_username, anonymous.details) == (None, "", {})


def test_the_event_outlives_its_actor(staff, olivia):
    from tests.factories import StaffFactory

    leaver = StaffFactory(username="leaver")
    vehicle, _ = vehicle_with_credential(olivia)
    event = audit_record(actor=leaver, action="vehicle.suspend", target=vehicle)
    leaver.delete()

    event.refresh_from_db()
    assert (event.actor, event.actor_username) == (None, "leaver")


def test_a_pricing_change_in_the_admin_is_recorded_with_what_changed(client, staff):
    client.force_login(staff)
    assert client.post("/admin/marketplace/pricingpolicy/add/", policy_form()).status_code == 302
    first = PricingPolicy.objects.get()

    client.post(
        f"/admin/marketplace/pricingpolicy/{first.pk}/change/", policy_form(reserve_int8_mcents=3100, note="up")
    )

    events = list(AuditEvent.objects.filter(action="pricing.change").order_by("created_at", "pk"))
    assert len(events) == 2
    latest = PricingPolicy.objects.first()
    change = events[-1]
    assert (change.actor, change.target_type, change.target_id) == (staff, "marketplace.pricingpolicy", str(latest.pk))
    assert change.details["changes"]["reserve_int8_mcents"] == [2500, 3100]
    assert change.details["changes"]["note"] == ["California pilot", "up"]
    assert "platform_fee_pct" not in change.details["changes"]


def test_suspending_cars_in_the_admin_is_recorded_once_per_car(client, staff, olivia):
    client.force_login(staff)
    blue, _ = vehicle_with_credential(olivia, name="Blue car")
    red, _ = vehicle_with_credential(olivia, name="Red car")
    Vehicle.objects.filter(pk=red.pk).update(status=Vehicle.Status.SUSPENDED, status_reason="earlier")

    response = client.post(
        "/admin/fleet/vehicle/", {"action": "suspend", "_selected_action": [blue.pk, red.pk]}, follow=True
    )

    assert "Suspended 1 vehicle(s)." in response.content.decode()
    blue.refresh_from_db()
    assert (blue.status, blue.status_reason) == (Vehicle.Status.SUSPENDED, "Suspended by staff.")
    [event] = AuditEvent.objects.filter(action="vehicle.suspend")
    assert (event.actor, event.target_id) == (staff, str(blue.pk))
    assert event.details == {"previous_status": "active", "reason": "Suspended by staff."}

    client.post("/admin/fleet/vehicle/", {"action": "reactivate", "_selected_action": [blue.pk]})
    blue.refresh_from_db()
    assert blue.status == Vehicle.Status.ACTIVE
    assert AuditEvent.objects.filter(action="vehicle.reactivate", target_id=str(blue.pk), actor=staff).count() == 1


def test_a_refund_by_staff_is_recorded(client, staff, alice, olivia, card_for):
    card_for(alice)
    car, _ = vehicle_with_credential(olivia)
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, car, ch=4.0, price_mcents=5_000))  # 20 ¢
    builders.close(bid)
    auth = settling.bid_settle(bid_id=bid.pk)
    assert auth.status == PaymentAuthorization.Status.SETTLED
    client.force_login(staff)

    client.post("/admin/billing/paymentauthorization/", {"action": "refund_in_full", "_selected_action": [auth.pk]})

    auth.refresh_from_db()
    assert auth.refunded_cents == 20
    [event] = AuditEvent.objects.filter(action="payment.refund")
    assert (event.actor, event.target_type, event.target_id) == (staff, "billing.paymentauthorization", str(auth.pk))
    assert event.details["amount_cents"] == 20
    assert event.details["bid_id"] == bid.pk
    assert event.details["refund_id"] == auth.refunds.get().pk


def test_staff_read_the_log_in_the_admin_and_cannot_change_it(client, staff, olivia):
    vehicle, _ = vehicle_with_credential(olivia, name="Blue car")
    event = audit_record(actor=staff, action="vehicle.suspend", target=vehicle, details={"reason": "test"})
    client.force_login(staff)

    listing = client.get("/admin/accounts/auditevent/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "vehicle.suspend" in html
    assert "By action" in html  # list filters
    assert client.get(f"/admin/accounts/auditevent/{event.pk}/change/").status_code == 200  # read-only view
    assert client.get("/admin/accounts/auditevent/add/").status_code == 403
    assert client.post(f"/admin/accounts/auditevent/{event.pk}/change/", {"action": "x"}).status_code == 403
    assert client.post(f"/admin/accounts/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.action == "vehicle.suspend"


def test_revoking_cars_keys_in_the_admin_stops_their_agents_at_once(
    client, staff, olivia, django_capture_on_commit_callbacks
):
    from tests.fleet.agent_requests import heartbeat, signed_post

    client.force_login(staff)
    blue, key = vehicle_with_credential(olivia, name="Blue car")
    agent = Client()
    assert signed_post(agent, key, "/api/v1/agent/heartbeat/", heartbeat()).status_code == 200  # its key is copied

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/fleet/vehicle/", {"action": "keys_revoke", "_selected_action": [blue.pk]}, follow=True
        )

    assert "Revoked 1 key(s)" in response.content.decode()
    assert signed_post(agent, key, "/api/v1/agent/heartbeat/", heartbeat()).status_code == 401
    [event] = AuditEvent.objects.filter(action="vehicle.key_revoke")
    assert (event.actor, event.target_id, event.details) == (staff, str(blue.pk), {"key_id": key.key_id})
