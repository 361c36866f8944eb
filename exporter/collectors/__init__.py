"""Collectors: one module per subsystem, each registering itself (see base.py)."""
import importlib
import pkgutil


def load_all():
    """Imports every collector module so that it registers itself."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
