"""Permission checks that services make themselves, whatever way in called them."""

from django.contrib.auth.base_user import AbstractBaseUser

from core.errors import PermissionDenied


def require_permission(user: AbstractBaseUser, permission: str) -> None:
    """Active staff holding `permission`, or PermissionDenied naming it."""
    if not (user.is_active and getattr(user, "is_staff", False) and user.has_perm(permission)):
        raise PermissionDenied(
            f"{user.get_username()} lacks {permission}",
            action_required=f"Ask an administrator for the permission {permission!r} or a finance role with it.",
            details={"permission": permission},
        )
