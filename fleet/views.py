from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import Role
from accounts.permissions import role_required, staff_required
from core.exceptions import ApplicationError
from core.forms import add_application_error

from . import selectors, services
from .agent_wheel import agent_wheel
from .forms import PolicyForm, VehicleForm
from .models import HardwareProfile


def agent_install_context(request) -> dict:
    """What the install instructions name: the server's address and the agent wheel's download URL."""
    server = request.build_absolute_uri("/").rstrip("/")
    wheel = agent_wheel()
    return {"server": server, "agent_wheel_url": server + f"/agent/download/{wheel.filename}"}


@require_GET
def agent_download(request, filename: str | None = None):
    """The agent's wheel (fleet/agent_wheel.py), public: it holds no secret, and `pipx install URL` sends no cookie.
    /agent/download/ redirects to the wheel's own file name, which pip needs to read the version and tags from."""
    wheel = agent_wheel()
    if filename is None:
        return redirect(f"/agent/download/{wheel.filename}")
    if filename != wheel.filename:
        raise Http404("No such agent version: download /agent/download/ for the current one.")
    response = HttpResponse(wheel.content, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{wheel.filename}"'
    response["X-Content-SHA256"] = wheel.sha256
    return response


def _credential_page(request, vehicle, credential, *, reissued=False):
    """Shown once, right after the key is made: only its public half is stored, so it can never be shown again."""
    install = agent_install_context(request)
    response = render(
        request,
        "fleet/credential.html",
        {
            "vehicle": vehicle,
            "token": credential.to_token(),
            "file_text": credential.to_file_text(install["server"]),
            "reissued": reissued,
            **install,
        },
    )
    response["Cache-Control"] = "no-store"
    return response


@role_required(Role.OWNER)
def dashboard(request):
    vehicles = list(selectors.vehicles_for_owner(owner=request.user))
    return render(request, "fleet/dashboard.html", {"live": selectors.vehicles_live(vehicles)})


@role_required(Role.OWNER)
def fleet_live(request):
    """The owner's fleet table alone, polled by htmx."""
    vehicles = list(selectors.vehicles_for_owner(owner=request.user))
    return render(request, "fleet/_fleet_table.html", {"live": selectors.vehicles_live(vehicles)})


@role_required(Role.OWNER)
@require_http_methods(["GET", "POST"])
def vehicle_register(request):
    initial = {"energy_price_cents_per_kwh": selectors.energy_price_default()}
    hw4 = HardwareProfile.objects.filter(name="HW4").first()
    if hw4:
        initial["hardware"] = hw4.pk
    form = VehicleForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            vehicle, credential = services.vehicle_register(owner=request.user, **form.cleaned_data)
        except ApplicationError as error:
            add_application_error(form, error)
        else:
            return _credential_page(request, vehicle, credential)
    return render(request, "fleet/vehicle_form.html", {"form": form}, status=400 if form.errors else 200)


@role_required(Role.OWNER)
def vehicle_detail(request, vehicle_id: int):
    item = selectors.vehicle_live_for_owner(owner=request.user, vehicle_id=vehicle_id)
    return render(
        request,
        "fleet/vehicle_detail.html",
        {
            "item": item,
            "vehicle": item.vehicle,
            "sessions": selectors.parking_sessions_for_vehicle(vehicle=item.vehicle),
            "credentials": item.vehicle.credentials.all()[:10],
            "trusted_after": settings.VERIFICATION_TRUSTED_AFTER,
            **agent_install_context(request),
            "work": selectors.vehicle_work_summary(vehicle=item.vehicle),
        },
    )


@role_required(Role.OWNER)
def vehicle_live(request, vehicle_id: int):
    item = selectors.vehicle_live_for_owner(owner=request.user, vehicle_id=vehicle_id)
    work = selectors.vehicle_work_summary(vehicle=item.vehicle)
    return render(request, "fleet/_vehicle_live.html", {"item": item, "work": work})


@role_required(Role.OWNER)
@require_http_methods(["GET", "POST"])
def policy_edit(request, vehicle_id: int):
    vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
    form = PolicyForm(request.POST or None, instance=vehicle.policy, vehicle=vehicle)
    if request.method == "POST" and form.is_valid():
        try:
            services.policy_update(policy=vehicle.policy, **form.policy_changes())
        except ApplicationError as error:
            add_application_error(form, error, field_map={"leave_at": "leave_at_time", "windows": "day0_from"})
        else:
            messages.success(request, f"Saved the opt-in policy of {vehicle.display_name}.")
            return redirect("fleet:vehicle", vehicle_id=vehicle.pk)
    return render(
        request, "fleet/policy_form.html", {"form": form, "vehicle": vehicle}, status=400 if form.errors else 200
    )


@role_required(Role.OWNER)
@require_POST
def vehicle_pause(request, vehicle_id: int):
    vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
    try:
        if request.POST.get("action") == "resume":
            services.vehicle_resume(vehicle=vehicle)
            messages.success(request, f"{vehicle.display_name} may work again when parked.")
        else:
            released = services.vehicle_pause(vehicle=vehicle)
            given_back = (
                f"; its {released} work unit{'s' if released != 1 else ''} went to other cars" if released else ""
            )
            messages.success(request, f"{vehicle.display_name} is paused: it takes no work{given_back}.")
    except ApplicationError as error:
        messages.error(request, error.message)
    return redirect("fleet:vehicle", vehicle_id=vehicle.pk)


@role_required(Role.OWNER)
@require_POST
def credential_new(request, vehicle_id: int):
    vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
    credential = services.credential_issue(vehicle=vehicle)
    return _credential_page(request, vehicle, credential, reissued=True)


@role_required(Role.OWNER)
@require_POST
def credential_revoke(request, vehicle_id: int, credential_id: int):
    vehicle = selectors.vehicle_get_for_owner(owner=request.user, vehicle_id=vehicle_id)
    credential = get_object_or_404(vehicle.credentials, pk=credential_id)
    services.credential_revoke(credential=credential)
    messages.success(request, f"Revoked credential {credential.key_id}: the car can no longer connect with it.")
    return redirect("fleet:vehicle", vehicle_id=vehicle.pk)


@staff_required
def staff_fleet(request):
    return render(request, "fleet/staff_fleet.html", {"overview": selectors.fleet_overview_cached()})


@staff_required
def staff_fleet_live(request):
    return render(request, "fleet/_staff_fleet_stats.html", {"overview": selectors.fleet_overview_cached()})
