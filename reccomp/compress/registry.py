"""The method registry: a method is a config dataclass plus a per-table module, by name.

A method file registers itself with :func:`register`::

    @register("hash")
    @dataclass
    class HashConfig(MethodConfig):
        '''The hashing trick (Weinberger et al., 2009).'''
        num_buckets: int | None = None

    class HashTable(TableMethod): ...
    HashConfig.module = HashTable

and is then selected in YAML by name (``embeddings: {method: hash, options: {...}}``).
Nothing else in reccomp branches on the method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

METHODS: dict[str, type[MethodConfig]] = {}


@dataclass
class MethodConfig:
    """Base of every method's options. Subclasses validate in ``__post_init__``.

    Args:
        version: the options' format version, stored with results and checkpoints so a
            later reccomp can read (or refuse) old ones.
    """

    version: int = 1

    name: ClassVar[str] = ""
    module: ClassVar[type] = object  # the TableMethod subclass, set by the method file
    #: options that fix the table size; a budget then may not be given as well
    size_options: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ValueError(f"{self.name}: options version {self.version} is not supported (1)")

    def require_together(self, a: str, b: str) -> None:
        """Two size options that only make sense together: both given, or neither."""
        if (getattr(self, a) is None) != (getattr(self, b) is None):
            raise ValueError(f"{self.name}: give both {a} and {b}, or neither")

    def sized_explicitly(self) -> bool:
        return any(getattr(self, k) is not None for k in self.size_options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register(name: str):
    """Class decorator: register a :class:`MethodConfig` subclass under ``name``."""

    def deco(cls: type[MethodConfig]) -> type[MethodConfig]:
        if name in METHODS:
            raise ValueError(f"compression method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_names() -> list[str]:
    return sorted(METHODS)


def make_config(method: str, options: dict[str, Any] | None = None) -> MethodConfig:
    """The config of ``method`` from YAML options, with errors that name the method.

    >>> make_config("hash", {"num_buckets": 100}).num_buckets
    100
    """
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; known: {method_names()}")
    cls = METHODS[method]
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        owners = {
            k: [m for m, c in METHODS.items() if k in {f.name for f in dataclasses.fields(c)}]
            for k in unknown
        }
        hint = "; ".join(f"{k!r} is an option of {v}" if v else f"{k!r}" for k, v in owners.items())
        raise ValueError(
            f"method {method!r} has no option {', '.join(map(repr, unknown))} ({hint}); "
            f"its options are {sorted(known)}"
        )
    return cls(**options)
