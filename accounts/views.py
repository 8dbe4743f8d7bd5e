from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST
from knox.settings import knox_settings

from core.exceptions import ApplicationError
from core.forms import add_application_error
from core.throttling import rate_limited

from . import selectors, services
from .forms import ApiTokenForm, SignUpForm
from .services import dashboard_url_name, user_create

# Password guessing and sign-up floods are slowed per client address (README, "Rate limits"); the pages themselves
# (GET) are never limited.
_login_limit = rate_limited(
    "login", rate_setting="THROTTLE_LOGIN", message="Too many login attempts from your network."
)
login_view = _login_limit(auth_views.LoginView.as_view(redirect_authenticated_user=True))
# Each reset request may send an email: a flood from one address would spam someone's inbox. The answer is the same
# whether or not an account has the address (Django's PasswordResetView), so it tells nobody who has an account.
_password_reset_limit = rate_limited(
    "password-reset",
    rate_setting="THROTTLE_PASSWORD_RESET",
    message="Too many password reset requests from your network.",
)
password_reset = _password_reset_limit(
    auth_views.PasswordResetView.as_view(
        email_template_name="registration/password_reset_email.txt",
        subject_template_name="registration/password_reset_subject.txt",
    )
)


@rate_limited("signup", rate_setting="THROTTLE_SIGNUP", message="Too many sign-ups from your network.")
@require_http_methods(["GET", "POST"])
def signup(request):
    if request.user.is_authenticated:
        return redirect(dashboard_url_name(request.user))
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = user_create(
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
                role=form.cleaned_data["role"],
            )
        except ApplicationError as error:
            add_application_error(form, error)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome to Idlefleet, {user.username}.")
            return redirect(dashboard_url_name(user))
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def dashboard(request):
    return redirect(dashboard_url_name(request.user))


@login_required
def account(request):
    return render(request, "accounts/account.html")


@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request):
    form = ApiTokenForm(request.POST or None)
    created, token = None, None
    if request.method == "POST" and form.is_valid():
        created, token = services.api_token_create(user=request.user, name=form.cleaned_data["name"])
        form = ApiTokenForm()
    context = {
        "form": form, "tokens": selectors.api_tokens_for_user(user=request.user), "created": created, "token": token,
        "ttl_days": knox_settings.TOKEN_TTL.days if knox_settings.TOKEN_TTL else None,
    }  # fmt: skip
    response = render(request, "accounts/api_tokens.html", context, status=400 if form.errors else 200)
    if token:
        # The token is in this page and nowhere else: no cache keeps a copy.
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def api_token_revoke(request, token_id: int):
    api_token = selectors.api_token_get_for_user(user=request.user, token_id=token_id)
    services.api_token_revoke(api_token=api_token)
    messages.success(request, f"Revoked “{api_token.name}”: requests with it are refused from now on.")
    return redirect("api-tokens")
