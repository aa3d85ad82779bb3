"""The provider modules the sandbox installs; each has `install(sandbox)` adding its routes
under `/<provider>/...` and keeping its state on the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import import_module
from types import ModuleType

PROVIDER_MODULES = (
    "providers.sandbox.stripe",
    "providers.sandbox.paypal",
    "providers.sandbox.paymongo",
    "providers.sandbox.maya",
)


def provider_modules() -> Iterator[ModuleType]:
    for name in PROVIDER_MODULES:
        try:
            yield import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
