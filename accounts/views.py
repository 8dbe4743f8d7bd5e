from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from core.exceptions import ApplicationError
from core.forms import add_application_error
from core.throttling import rate_limited

from .forms import SignUpForm
from .services import dashboard_url_name, user_create

# Password guessing and sign-up floods are slowed per client address (README, "Rate limits"); the pages themselves
# (GET) are never limited.
_login_limit = rate_limited(
    "login", rate_setting="THROTTLE_LOGIN", message="Too many login attempts from your network."
)
login_view = _login_limit(auth_views.LoginView.as_view(redirect_authenticated_user=True))


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
