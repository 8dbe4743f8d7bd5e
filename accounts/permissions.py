"""Role checks for pages and API views. A logged-in user of another role gets 403; anonymous users log in first."""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from .models import Role


def role_required(*roles: str) -> Callable:
    def decorator(view: Callable) -> Callable:
        @wraps(view)
        @login_required
        def wrapped(request, *args, **kwargs):
            if request.user.role not in roles:
                raise PermissionDenied(f"This page is for {' or '.join(Role(r).label.lower() + 's' for r in roles)}.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def staff_required(view: Callable) -> Callable:
    @wraps(view)
    @login_required
    def wrapped(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("This page is for Idlefleet staff.")
        return view(request, *args, **kwargs)

    return wrapped


class HasRole(BasePermission):
    """DRF permission: `permission_classes = [HasRole.of(Role.CUSTOMER)]`."""

    roles: tuple[str, ...] = ()
    message = "Your account's role may not use this endpoint."

    @classmethod
    def of(cls, *roles: str) -> type["HasRole"]:
        return type(f"Has{''.join(r.title() for r in roles)}Role", (cls,), {"roles": roles})

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.role in self.roles)
