"""`manage.py ensure_superuser [--username admin]`: someone can sign in to the admin on a new installation.

When no active superuser exists, creates one (staff, superuser) with a random password and prints the user name
and the password, once: the password is not stored anywhere else. When one exists, changes nothing and says
who (their password is theirs; `manage.py changepassword NAME` sets a new one). Used by `make stack`.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction


class Command(BaseCommand):
    help = "Create a superuser with a printed random password, unless an active superuser exists."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin", help="The new superuser's name (default: admin).")
        parser.add_argument("--email", default="", help="The new superuser's email address.")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model().objects
        with transaction.atomic():
            existing = users.filter(is_superuser=True, is_active=True).order_by("pk").first()
            if existing is not None:
                name = existing.get_username()
                self.stdout.write(
                    f"user {name} with the password already set (to choose a new one: manage.py changepassword {name})"
                )
                return
            if users.filter(username=options["username"]).exists():
                raise CommandError(
                    f"a user {options['username']!r} exists but is not an active superuser; "
                    "pick another --username or make that one a superuser in the admin"
                )
            password = secrets.token_urlsafe(12)
            users.create_superuser(username=options["username"], email=options["email"], password=password)
        self.stdout.write(f"user {options['username']} password {password} (shown once; created now)")
