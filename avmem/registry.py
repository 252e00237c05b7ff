"""One small registry type for the pluggable parts (readers, benchmarks): names -> classes, where every
implementation is a module of one package that registers itself with a class decorator on import."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of ``base`` registered under unique names; the modules of ``package`` are imported on first use.

    Args:
        kind: what is registered, for messages ("reader", "benchmark").
        base: the class every registered class must subclass.
        package: the package whose modules hold the implementations (imported lazily, all of them).
    """

    def __init__(self, kind: str, base: type, package: str) -> None:
        self.kind, self.base, self.package = kind, base, package
        self._classes: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, name: str):
        """Class decorator: register a subclass of ``base`` under ``name`` (unique) and set its ``name``."""

        def wrap(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"register {self.kind} {name!r}: {cls!r} is not a {self.base.__name__} subclass")
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({self._classes[name].__qualname__})")
            cls.name = name
            self._classes[name] = cls
            return cls

        return wrap

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a temporary class)."""
        self._classes.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            try:
                importlib.import_module(f"{self.package}.{info.name}")
            except Exception as exc:
                raise ImportError(f"{self.kind} module {self.package}.{info.name} failed to import: {exc}") from exc
        self._loaded = True

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        self._load()
        return tuple(sorted(self._classes))

    def lookup(self, name: str) -> type[T] | None:
        """The class registered as ``name``, or None."""
        self._load()
        return self._classes.get(name)
