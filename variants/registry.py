"""Finds variants: the built-in files of this package, installed entry points in the group
`dropbench.variants` (each pointing at a `Variant` object), and plugin files named by the user."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from pathlib import Path

from dropbench.harness.errors import DropbenchError, did_you_mean

from .base import Variant

ENTRY_POINT_GROUP = "dropbench.variants"
_NOT_VARIANTS = {"base", "registry"}


def _variants_in(module) -> list[Variant]:
    return [value for value in vars(module).values() if isinstance(value, Variant)]


def builtin_variants() -> list[Variant]:
    found = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name not in _NOT_VARIANTS:
            found += _variants_in(importlib.import_module(f"{__package__}.{info.name}"))
    return found


def entry_point_variants() -> list[Variant]:
    found = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = entry.load()
        except Exception as exc:  # a broken third-party package must not hide the others
            raise DropbenchError(f"entry point {entry.name!r} ({entry.value}) failed to load: {exc}; fix or uninstall that package") from exc
        if not isinstance(obj, Variant):
            raise DropbenchError(f"entry point {entry.name!r} ({entry.value}) is not a dropbench Variant; point it at a Variant object")
        found.append(dataclasses.replace(obj, source=f"entry point {entry.value}"))
    return found


def plugin_file_variants(path: str | Path) -> list[Variant]:
    path = Path(path)
    if not path.is_file():
        raise DropbenchError(f"plugin file {path} does not exist; give the path of a .py file that defines a Variant")
    module_name = f"dropbench_plugin_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DropbenchError(f"plugin file {path} is not a Python module; give a .py file that defines a Variant")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise DropbenchError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}; fix the file and retry") from exc
    found = _variants_in(module)
    if not found:
        raise DropbenchError(f"plugin file {path} defines no Variant; add e.g. VARIANT = Variant(name=..., description=..., masks=...)")
    return [dataclasses.replace(v, source=f"plugin {path}") for v in found]


def load_registry(plugin_files=()) -> dict[str, Variant]:
    """name -> Variant for every variant found; a later source may not redefine an earlier name."""
    registry: dict[str, Variant] = {}
    for variant in builtin_variants() + entry_point_variants() + [v for f in plugin_files for v in plugin_file_variants(f)]:
        if variant.name in registry:
            raise DropbenchError(
                f"variant name {variant.name!r} from {variant.source} is already taken by {registry[variant.name].source}; rename one of them"
            )
        registry[variant.name] = variant
    return registry


def get_variant(name: str, registry: dict[str, Variant]) -> Variant:
    try:
        return registry[name]
    except KeyError:
        raise DropbenchError(f"unknown variant {name!r}{did_you_mean(name, registry)}; `dropbench variants` lists them") from None
