from django.shortcuts import render

from accounts.models import Role
from accounts.permissions import role_required


@role_required(Role.OWNER)
def dashboard(request):
    return render(request, "fleet/dashboard.html", {"vehicles": []})
