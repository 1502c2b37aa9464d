"""Module attributes loaded on first use, so that importing a package stays light."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_attributes(
    package: str, namespace: dict, targets: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module's ``__getattr__`` and ``__dir__`` for ``targets``.

    ``targets`` maps a name to ``".submodule"`` (the submodule itself) or
    ``".submodule:attribute"``, relative to ``package``; ``namespace`` is the module's
    ``globals()``.
    """

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = targets[name].partition(":")
        loaded = import_module(module, package)
        return getattr(loaded, attribute) if attribute else loaded

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(targets))

    return __getattr__, __dir__
