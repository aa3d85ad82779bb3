"""`manage.py staff_totp <username>`: give a staff user an authenticator (TOTP) device for the admin's sign-in."""

from __future__ import annotations

from base64 import b32encode
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.staff_security import totp_device_issue


class Command(BaseCommand):
    help = (
        "Create a confirmed TOTP device for a staff user and print the otpauth:// URL and key to add to an "
        "authenticator app. Needed to sign in to the admin when STAFF_2FA_REQUIRED is on."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="authenticator", help="The device's name (default: authenticator).")
        parser.add_argument(
            "--replace", action="store_true", help="Delete the user's TOTP devices first (a lost or new phone)."
        )

    def handle(self, *args: Any, username: str, name: str, replace: bool, **options: Any) -> None:
        User = get_user_model()
        user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        if not user.is_staff:
            raise CommandError(f"{username!r} is not staff: only the admin asks for a second factor.")
        try:
            device = totp_device_issue(user=user, name=name, replace=replace)
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"TOTP device {device.name!r} created for {username}. Add it to an authenticator app (Google "
            "Authenticator, 1Password, FreeOTP, ...) by opening or scanning this URL:\n\n"
            f"  {device.config_url}\n\n"
            f"or by typing the key: {device_key_base32(device)}\n\n"
            "Then sign in at /admin/ with the password and the 6-digit code the app shows. Keep this output secret."
        )


def device_key_base32(device: Any) -> str:
    return b32encode(device.bin_key).decode()
