"""Escrow deals, purchases and spend limits; one module each, all in one app."""

from escrow.models.deals import *  # noqa: F403
from escrow.models.limits import *  # noqa: F403
from escrow.models.purchases import *  # noqa: F403
