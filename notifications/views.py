from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import Role
from accounts.permissions import role_required
from core.exceptions import ApplicationError
from core.forms import add_application_error

from . import selectors, services
from .forms import WebhookEndpointForm


@role_required(Role.CUSTOMER)
@require_http_methods(["GET", "POST"])
def webhooks(request):
    """The customer's endpoints, adding one (its secret is shown on the answer to that POST only), and the log of
    deliveries, 25 a page."""
    form = WebhookEndpointForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = services.endpoint_create(customer=request.user, **form.cleaned_data)
        except ApplicationError as error:
            add_application_error(form, error)
        else:
            form = WebhookEndpointForm()
    context = {
        "form": form,
        "created": created,
        "endpoints": selectors.endpoints_for_customer(user=request.user),
        "deliveries": Paginator(selectors.deliveries_for_customer(user=request.user), 25).get_page(
            request.GET.get("page")
        ),
    }
    return render(request, "notifications/webhooks.html", context, status=400 if form.errors else 200)


@role_required(Role.CUSTOMER)
@require_POST
def webhook_enable(request, endpoint_id: int):
    endpoint = selectors.endpoint_get_for_customer(user=request.user, endpoint_id=endpoint_id)
    services.endpoint_enable(endpoint=endpoint, enabled=not endpoint.enabled)
    messages.success(request, f"{endpoint.url} {'enabled' if endpoint.enabled else 'disabled'}.")
    return redirect("notifications:webhooks")


@role_required(Role.CUSTOMER)
@require_POST
def webhook_delete(request, endpoint_id: int):
    endpoint = selectors.endpoint_get_for_customer(user=request.user, endpoint_id=endpoint_id)
    services.endpoint_delete(endpoint=endpoint)
    messages.success(request, f"{endpoint.url} deleted, with its delivery log.")
    return redirect("notifications:webhooks")


@role_required(Role.CUSTOMER)
@require_POST
def webhook_test(request, endpoint_id: int):
    endpoint = selectors.endpoint_get_for_customer(user=request.user, endpoint_id=endpoint_id)
    services.ping_send(endpoint=endpoint)
    messages.info(request, f"A ping event is on its way to {endpoint.url}: its delivery shows in the log below.")
    return redirect("notifications:webhooks")
