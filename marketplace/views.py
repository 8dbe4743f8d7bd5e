from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import Role
from accounts.permissions import role_required
from core.exceptions import ApplicationError
from core.forms import add_application_error

from . import selectors, services
from .downloads import bid_result_response
from .forms import BidForm, DatasetUploadForm, InferenceModelUploadForm, ToleranceForm


def _form_status(error: ApplicationError) -> int:
    """A form refused by a service answers as the API does for a file over a cap (413), else 400."""
    return 413 if error.status == 413 else 400


@role_required(Role.CUSTOMER)
def dashboard(request):
    return render(
        request,
        "marketplace/dashboard.html",
        {
            "bids": selectors.bids_for_customer(user=request.user)[:20],
            "models": selectors.inference_models_visible(user=request.user)[:10],
        },
    )


@role_required(Role.CUSTOMER)
def model_list(request):
    return render(
        request, "marketplace/model_list.html", {"models": selectors.inference_models_visible(user=request.user)}
    )


@role_required(Role.CUSTOMER)
@require_http_methods(["GET", "POST"])
def model_upload(request):
    form = InferenceModelUploadForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            model = services.inference_model_upload(owner=request.user, **form.cleaned_data)
        except ApplicationError as error:
            add_application_error(form, error)
            status = _form_status(error)
        else:
            messages.success(request, f"Uploaded {model.name}: checking it now.")
            return redirect("marketplace:model", model_id=model.pk)
    return render(request, "marketplace/model_upload.html", {"form": form}, status=400 if form.errors else status)


OWN_REPORTS = 10  # a customer's newest datasets of a catalogue model shown with their own builds


def _model_context(request, model):
    fleet = selectors.fleet_capability()  # read once for every outlook of the page
    # Cheapest first (costing.AUTO_ORDER): the order in which "auto" considers them.
    outlook = selectors.pools_outlook(model=model, fleet=fleet)
    auto = selectors.auto_pick(outlook)
    # A customer's own data for a catalogue model: its own builds, accuracy and auto choice, which nobody else sees.
    own_reports = []
    for dataset in selectors.datasets_with_own_builds(user=request.user, model=model)[:OWN_REPORTS]:
        own = selectors.pools_outlook(model=model, dataset=dataset, fleet=fleet)
        builds = [(pool.variant, selectors.variant_passes(pool.variant)) for pool in own if pool.variant]
        own_reports.append((dataset, builds, selectors.auto_pick(own)))
    in_force = {pool.precision: pool.variant for pool in outlook if pool.variant}
    rebuilding = selectors.variants_rebuilding(model=model) or any(
        v.pending for _, builds, _ in own_reports for v, _ in builds
    )
    return {
        "model": model,
        "variants": [(pool.variant, selectors.variant_passes(pool.variant), pool) for pool in outlook if pool.variant],
        "rebuild_failures": list(selectors.rebuild_failures(model=model, in_force=in_force).values()),
        "own_reports": own_reports,
        "auto": auto.variant if auto else None,
        "nothing_runs": selectors.outlook_message(outlook) if auto is None else "",
        "building": rebuilding or model.status == "validating",
        "datasets": selectors.datasets_visible(user=request.user, model=model),
        "editable": model.owner_id == request.user.pk,
    }


@role_required(Role.CUSTOMER)
def model_detail(request, model_id: int):
    model = selectors.inference_model_get(user=request.user, model_id=model_id)
    context = _model_context(request, model)
    context["dataset_form"] = DatasetUploadForm()
    context["tolerance_form"] = ToleranceForm(initial={"metric": model.metric, "tolerance": model.tolerance})
    return render(request, "marketplace/model_detail.html", context)


@role_required(Role.CUSTOMER)
def model_variants(request, model_id: int):
    """The variants table alone, polled by htmx while they build."""
    model = selectors.inference_model_get(user=request.user, model_id=model_id)
    return render(request, "marketplace/_variants.html", _model_context(request, model))


@role_required(Role.CUSTOMER)
@require_POST
def dataset_upload(request, model_id: int):
    model = selectors.inference_model_get(user=request.user, model_id=model_id)
    form = DatasetUploadForm(request.POST, request.FILES)
    status = 400
    if form.is_valid():
        try:
            dataset = services.dataset_upload(owner=request.user, inference_model=model, **form.cleaned_data)
        except ApplicationError as error:
            add_application_error(form, error)
            status = _form_status(error)
        else:
            whose = "the precision variants" if model.owner_id == request.user.pk else "variants for your data only"
            messages.success(request, f"{dataset.name}: {dataset.item_count} items. Building {whose} on it now.")
            return redirect("marketplace:model", model_id=model.pk)
    context = _model_context(request, model)
    context["dataset_form"] = form
    context["tolerance_form"] = ToleranceForm(initial={"metric": model.metric, "tolerance": model.tolerance})
    return render(request, "marketplace/model_detail.html", context, status=status)


@role_required(Role.CUSTOMER)
@require_POST
def model_tolerance(request, model_id: int):
    model = selectors.inference_model_get_own(user=request.user, model_id=model_id)
    form = ToleranceForm(request.POST)
    if form.is_valid():
        try:
            services.inference_model_set_tolerance(model=model, **form.cleaned_data)
            messages.success(request, "Tolerance saved: the variants below are re-judged against it.")
        except ApplicationError as error:
            messages.error(request, error.message)
    else:
        messages.error(request, "Give a metric and a number for the tolerance.")
    return redirect("marketplace:model", model_id=model.pk)


@role_required(Role.CUSTOMER)
@require_http_methods(["GET", "POST"])
def bid_new(request, model_id: int):
    from datetime import timedelta

    from django.utils import timezone

    model = selectors.inference_model_get(user=request.user, model_id=model_id)
    datasets = selectors.datasets_visible(user=request.user, model=model)
    initial = {"deadline": (timezone.now() + timedelta(hours=6)).replace(second=0, microsecond=0)}
    if (chosen := request.GET.get("dataset", "")).isdigit() and len(chosen) < 12:
        initial["dataset"] = datasets.filter(pk=int(chosen)).first()  # "Bid for compute on <your dataset>"
    form = BidForm(request.POST or None, datasets=datasets, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            bid = services.bid_place(customer=request.user, inference_model=model, **form.bid_values())
        except ApplicationError as error:
            add_application_error(form, error)
            for field, target in (
                ("max_price_mcents_per_ch", "max_price_cents_per_ch"),
                ("budget_cents", "budget_dollars"),
            ):
                for message in error.fields.get(field, []):
                    form.add_error(target, message)
        else:
            messages.success(request, f"Bid placed: {bid.items} items. It enters the next auction round.")
            return redirect("marketplace:bid", bid_id=bid.pk)
    # The outlook of the dataset chosen, else the customer's newest: a catalogue model's builds for it are its own.
    focus = initial.get("dataset") or datasets.filter(owner=request.user).first()
    outlook = selectors.pools_outlook(model=model, dataset=focus)
    picked = selectors.auto_pick(outlook)
    auto = picked.variant if picked else None
    market = selectors.market_latest()
    return render(
        request,
        "marketplace/bid_form.html",
        {
            "form": form,
            "model": model,
            "market": market,
            "auto": auto,
            "outlook": outlook,
            "nothing_runs": selectors.outlook_message(outlook) if picked is None else "",
            "estimates": selectors.bid_estimates(datasets=datasets, variant=auto, market=market),
        },
        status=400 if form.errors else 200,
    )


@role_required(Role.CUSTOMER)
def bid_detail(request, bid_id: int):
    bid = selectors.bid_get_for_customer(user=request.user, bid_id=bid_id)
    allocations = selectors.bid_allocations_won(bid=bid).select_related("round", "vehicle__hardware")[:50]
    context = {"bid": bid, "allocations": allocations, "audits": selectors.bid_audits(bid=bid)[:20],
               **selectors.bid_progress(bid=bid)}  # fmt: skip
    if request.htmx:
        return render(request, "marketplace/_bid_progress.html", context)
    return render(request, "marketplace/bid_detail.html", context)


@role_required(Role.CUSTOMER)
@require_POST
def bid_cancel(request, bid_id: int):
    bid = selectors.bid_get_for_customer(user=request.user, bid_id=bid_id)
    try:
        services.bid_cancel(bid=bid)
        messages.success(request, "Bid cancelled: nothing more will be bought for it.")
    except ApplicationError as error:
        messages.error(request, error.message)
    return redirect("marketplace:bid", bid_id=bid.pk)


def market(request):
    """Public: the auction's prices, volumes and unfilled demand per pool, and the supply on offer now."""
    from fleet.selectors import fleet_overview_cached

    return render(
        request,
        "marketplace/market.html",
        {
            "latest": selectors.market_latest(),
            "history": selectors.market_history(),
            "overview": fleet_overview_cached(),
        },
    )


@role_required(Role.CUSTOMER)
def bid_result(request, bid_id: int):
    """Download a completed bid's results, in item order."""
    return bid_result_response(selectors.bid_get_for_customer(user=request.user, bid_id=bid_id))
