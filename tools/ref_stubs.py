"""Empty stand-ins for packages a reference script imports but never computes a compared number
with (image models, other metrics' networks), installed in front of the real import system.

Used by the reference halves of the parity tools (``metrics_parity_ref.py``,
``clap_parity_ref.py``), which run as scripts from this folder in the reference environment.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, Callable, Iterable


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, packages: Iterable[str], attribute: Callable[[str], Any]):
        self.packages = frozenset(packages)
        self.attribute = attribute

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        attribute = self.attribute

        class StubModule(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return attribute(name)

        module = StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install(packages: Iterable[str], attribute: Callable[[str], Any]) -> None:
    """Every module of ``packages`` (and their submodules) imports as an empty stand-in whose
    attributes are ``attribute(name)``."""
    sys.meta_path.insert(0, _StubFinder(packages, attribute))
