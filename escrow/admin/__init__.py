"""Admin for escrow deals, purchases and spend limits; one module each."""

from escrow.admin import deals, limits, purchases  # noqa: F401 - registers the model admins
