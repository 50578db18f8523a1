"""Engines built from recipes, kept while some recipe object that asked for them is alive.

In ComfyUI the recipe objects are the DAX_MODEL outputs that ComfyUI caches and drops when the graph
changes or the user frees memory: each engine lives exactly as long as one of them, so ComfyUI's own
cache decides when the model's memory is released, and no ComfyUI class is patched.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from ..experts import EXPERTS, MODEL_CHOICES
from ..recipe import Recipe

log = logging.getLogger(__name__)
E = TypeVar("E")


class EngineCache(Generic[E]):
    """At most one engine per recipe fingerprint, released when its last recipe object is collected."""

    def __init__(self, on_release: Callable[[], None] | None = None) -> None:
        self._engines: dict[str, E] = {}
        self._families: dict[str, str] = {}
        self._owners: dict[str, list[weakref.ref]] = {}
        self._lock = threading.RLock()  # weakref callbacks may fire inside get()
        self._on_release = on_release

    def __len__(self) -> int:
        return len(self._engines)

    def get(
        self,
        recipe: Recipe,
        build: Callable[[Recipe], E],
        *,
        variant: str = "",
        valid: Callable[[E], bool] | None = None,
        exclusive: bool = True,
        built_from: Recipe | None = None,
        owner: Recipe | None = None,
        family: str = "",
    ) -> E:
        """The engine for ``recipe`` (and ``variant``: where and how it runs), built on first use.

        ``valid``: a cached engine failing it (a worker group that went down) is dropped and built again.
        ``exclusive`` drops engines of other recipes and variants first: they hold the same devices.
        ``built_from``: the recipe the engine is built from and keyed by, when it is not ``recipe`` itself (the
        recipe without what can change on a built engine).
        ``owner``: the object whose lifetime keeps the engine (default ``recipe``), e.g. an ancestor in
        ``recipe.lineage()`` that stays cached while only a later setting changes.
        ``family``: engines of one non-empty family stay together, whatever ``exclusive`` says: the two experts of a
        Wan2.2 A14B model, each behind its own sampler, run in turn in every prompt (``expert_family``).
        """
        owner = owner if owner is not None else recipe
        base = built_from if built_from is not None else recipe
        key = base.fingerprint() + (f"|{variant}" if variant else "")
        with self._lock:
            owners = self._owners.setdefault(key, [])
            if not any(ref() is owner for ref in owners):
                owners.append(weakref.ref(owner, lambda _ref, k=key: self._owner_gone(k)))
            if key in self._engines and valid is not None and not valid(self._engines[key]):
                log.info("DAX engine %s is no longer usable: building it again", key)
                self._drop(key)
            if key in self._engines:
                return self._engines[key]
            if exclusive:
                for other in [k for k in self._engines if k != key]:
                    if not family or self._families.get(other) != family:
                        self._drop(other)
        # the engine keeps an equal copy: holding this very object would keep it alive forever
        engine = build(dataclasses.replace(base))
        with self._lock:
            self._engines[key] = engine
            self._families[key] = family
        return engine

    def family(self, family: str) -> list[E]:
        """The cached engines of ``family`` (none for "")."""
        with self._lock:
            return [e for k, e in self._engines.items() if family and self._families.get(k) == family]

    def release(self, engine: E) -> bool:
        """Drop ``engine`` now (someone else decided its memory is needed, e.g. ComfyUI's "Unload models"); whether it
        was cached. The next ``get`` for its recipe builds it again."""
        with self._lock:
            key = next((k for k, e in self._engines.items() if e is engine), None)
            if key is None:
                return False
            self._drop(key)
            return True

    def clear(self) -> None:
        with self._lock:
            for key in list(self._engines):
                self._drop(key)

    def _owner_gone(self, key: str) -> None:
        with self._lock:
            owners = [r for r in self._owners.get(key, []) if r() is not None]
            if owners:
                self._owners[key] = owners
                return
            self._owners.pop(key, None)
            self._drop(key)

    def _drop(self, key: str) -> None:
        engine = self._engines.pop(key, None)
        self._families.pop(key, None)
        if engine is None:
            return
        close = getattr(engine, "close", None)
        if callable(close):
            close()
        del engine
        gc.collect()
        log.info("released DAX engine %s", key)
        if self._on_release is not None:
            self._on_release()


def expert_family(recipe: Recipe, variant: str = "") -> str:
    """The family of a recipe of one Wan2.2 A14B expert (its model and where it runs: the two experts of one model
    share it), "" for any other recipe."""
    choice = MODEL_CHOICES[recipe.model_choice]
    return f"{choice.family}|{variant}" if choice.expert in EXPERTS else ""
