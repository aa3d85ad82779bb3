"""Admin for escrow deals, seller accounts, purchases and spend limits; one module each."""

from escrow.admin import deals, limits, purchases, sellers  # noqa: F401 - registers the model admins
