from decimal import Decimal

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import Role
from accounts.permissions import role_required
from core.exceptions import ApplicationError
from core.forms import add_application_error
from core.money import dollars_to_mcents, price_per_ch

from . import selectors, services
from .downloads import bid_result_response
from .forms import BidForm, BidPriceForm, DatasetUploadForm, InferenceModelUploadForm, ToleranceForm
from .models import Bid
from .signals import bid_charges


def _form_status(error: ApplicationError) -> int:
    """A form refused by a service answers as the API does for a file over a cap (413), else 400."""
    return 413 if error.status == 413 else 400


JOBS_PER_PAGE = 20


@role_required(Role.CUSTOMER)
def dashboard(request):
    """My jobs: newest first, 20 a page, filtered by status, with what each has cost so far."""
    show = request.GET.get("show", "")
    page = Paginator(selectors.jobs_for_customer(user=request.user, show=show), JOBS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "marketplace/dashboard.html",
        {
            "page": page,
            "bids": page.object_list,
            "charges": bid_charges(page.object_list),
            "show": show if show in selectors.JOB_FILTERS or show in Bid.Status.values else "",
            "filters": [
                ("", "All"),
                ("open", "Open"),
                ("completed", "Completed"),
                ("ended", "Cancelled, expired or failed"),
            ],
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
        "prices": selectors.pool_prices_now(outlook=outlook),
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


def _is_id(text: str) -> bool:
    """Whether a query parameter can be a row's id (ASCII digits: "²" is a digit that int() refuses)."""
    return text.isascii() and text.isdigit() and len(text) < 12


def _dataset_default(request, datasets, wanted: str = ""):
    """The dataset a bid form starts on: the one asked for ("Bid for compute on <your dataset>"), else the customer's
    newest, else the newest they can see (a catalogue model's sample)."""
    if _is_id(wanted) and (asked := datasets.filter(pk=int(wanted)).first()):
        return asked
    return datasets.filter(owner=request.user).first() or datasets.first()


def _mcents(dollars: Decimal | None) -> int | None:
    return dollars_to_mcents(dollars) if dollars is not None else None


@role_required(Role.CUSTOMER)
@require_http_methods(["GET", "POST"])
def bid_new(request, model_id: int):
    from datetime import timedelta

    from django.utils import timezone

    model = selectors.inference_model_get(user=request.user, model_id=model_id)
    datasets = selectors.datasets_visible(user=request.user, model=model)
    focus = _dataset_default(request, datasets, request.GET.get("dataset", ""))
    initial = {"deadline": (timezone.now() + timedelta(hours=6)).replace(second=0, microsecond=0), "dataset": focus}
    form = BidForm(request.POST or None, datasets=datasets, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            bid = services.bid_place(customer=request.user, inference_model=model, **form.bid_values())
        except ApplicationError as error:
            add_application_error(form, error)
        else:
            messages.success(request, f"Bid placed: {bid.items} items. It enters the next auction round.")
            return redirect("marketplace:bid", bid_id=bid.pk)
    # The estimate of what the form holds: what was sent (where it is valid), else what the form starts with.
    if form.is_bound:
        held = form.cleaned_data
    else:
        held = {"precision": "auto", "max_price_usd_per_ch": form["max_price_usd_per_ch"].initial}
    market, estimate = selectors.market_latest(), None
    if dataset := held.get("dataset") or focus:
        estimate = selectors.bid_estimate(
            model=model, dataset=dataset, precision=held.get("precision") or "auto",
            max_price_mcents=_mcents(held.get("max_price_usd_per_ch")), market=market,
        )  # fmt: skip
        if not form.is_bound and estimate.suggested_budget_cents:
            form.initial["budget_usd"] = Decimal(estimate.suggested_budget_cents).scaleb(-2)  # whole cents: "2.50"
    return render(
        request,
        "marketplace/bid_form.html",
        {"form": form, "model": model, "market": market, "estimate": estimate},
        status=400 if form.errors else 200,
    )


def _estimate_query(request, datasets) -> dict:
    """The estimate's parameters, the bid form's own fields, checked as the form checks them; a dataset the customer
    cannot see is a 404. Raises ValidationError naming the field."""
    query, fields = request.GET, BidForm.base_fields
    wanted = query.get("dataset", "")
    if wanted and not _is_id(wanted):
        raise ValidationError("dataset: give the number of one of your datasets.")
    try:
        precision = fields["precision"].clean(query.get("precision") or "auto")
    except ValidationError as error:
        raise ValidationError(f"precision: {' '.join(error.messages)}") from None
    max_price = None
    if typed := query.get("max_price_usd_per_ch", "").strip():
        try:
            max_price = fields["max_price_usd_per_ch"].clean(typed)
        except ValidationError as error:
            raise ValidationError(f"max_price_usd_per_ch: {' '.join(error.messages)}") from None
    return {
        "dataset": get_object_or_404(datasets, pk=int(wanted)) if wanted else _dataset_default(request, datasets),
        "precision": precision,
        "max_price_mcents": _mcents(max_price),
    }


@role_required(Role.CUSTOMER)
@require_GET
def bid_estimate(request, model_id: int):
    """The bid form's estimate alone, for the dataset, precision and maximum price the form holds: the form asks for
    it again (htmx) whenever the customer changes one. Without a maximum price, the worst case is priced at twice the
    estimate's price."""
    model = selectors.inference_model_get(user=request.user, model_id=model_id)
    datasets = selectors.datasets_visible(user=request.user, model=model)
    try:
        query = _estimate_query(request, datasets)
    except ValidationError as error:
        return render(request, "marketplace/_bid_estimate.html", {"error": error.messages[0]}, status=400)
    estimate = selectors.bid_estimate(model=model, **query) if query["dataset"] else None
    return render(request, "marketplace/_bid_estimate.html", {"estimate": estimate})


@role_required(Role.CUSTOMER)
def bid_detail(request, bid_id: int):
    bid = selectors.bid_get_for_customer(user=request.user, bid_id=bid_id)
    allocations = selectors.bid_allocations_won(bid=bid).select_related("round", "vehicle__hardware")[:50]
    context = {"bid": bid, "allocations": allocations, "audits": selectors.bid_audits(bid=bid)[:20],
               "charged_nc": bid_charges([bid])[bid.pk], "raisable": bid.status in services.PRICE_RAISABLE,
               "cancellable": bid.status in services.CANCELLABLE, **selectors.bid_progress(bid=bid)}  # fmt: skip
    if request.htmx:  # the progress poll: with the rounds won and the actions, which its progress changes
        return render(request, "marketplace/_bid_progress.html", {**context, "oob": True})
    return render(request, "marketplace/bid_detail.html", context)


@role_required(Role.CUSTOMER)
@require_POST
def bid_cancel(request, bid_id: int):
    bid = selectors.bid_get_for_customer(user=request.user, bid_id=bid_id)
    try:
        bid = services.bid_cancel(bid=bid)
        messages.success(
            request, "Bid cancelled: nothing more will be bought for it. You pay only for the work validated so far; "
            "the rest of the budget is released.",
        )  # fmt: skip
    except ApplicationError as error:
        messages.error(request, error.message)
    return redirect("marketplace:bid", bid_id=bid.pk)


@role_required(Role.CUSTOMER)
@require_POST
def bid_price(request, bid_id: int):
    """Raise the bid's maximum price (the form on its page)."""
    bid = selectors.bid_get_for_customer(user=request.user, bid_id=bid_id)
    form = BidPriceForm(request.POST)
    try:
        if not form.is_valid():
            raise ApplicationError(f"Maximum price: {form.errors['max_price_usd_per_ch'][0]}")
        bid = services.bid_price_raise(
            bid=bid, max_price_mcents_per_ch=_mcents(form.cleaned_data["max_price_usd_per_ch"])
        )
        messages.success(
            request, f"Maximum price raised to {price_per_ch(bid.max_price_mcents_per_ch)}: the next rounds use it."
        )
    except ApplicationError as error:
        messages.error(request, next(iter(error.fields.values()))[0] if error.fields else error.message)
    return redirect("marketplace:bid", bid_id=bid.pk)


def market(request):
    """Public: one market region's auction (`?region=`; each region is a market of its own): prices, volumes and
    unfilled demand per pool, and the supply on offer now. A malformed or unknown region is a 400 that says so, with
    the regions to pick from."""
    from fleet.selectors import fleet_overview_cached

    context = {"regions": selectors.market_regions(), "overview": fleet_overview_cached(), "latest": {}, "history": {}}
    try:
        region = selectors.market_region_get(request.GET.get("region"), regions=context["regions"])
    except ApplicationError as error:
        context["region_error"] = error.fields["region"][0]
        return render(request, "marketplace/market.html", context, status=400)
    # A market with cars but no round in the last day is still shown (its empty state), and so listed.
    context["regions"] = sorted({*context["regions"], region})
    context.update(
        region=region,
        latest=selectors.market_latest(region=region),
        history=selectors.market_history(region=region),
    )
    return render(request, "marketplace/market.html", context)


@role_required(Role.CUSTOMER)
def bid_result(request, bid_id: int):
    """Download a bid's results, in item order: a completed bid's file, or what a bid that ended early validated."""
    bid = selectors.bid_get_for_customer(user=request.user, bid_id=bid_id)
    try:
        return bid_result_response(bid)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("marketplace:bid", bid_id=bid.pk)
