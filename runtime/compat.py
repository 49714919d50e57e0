"""What scripts written for edgetl 0.6 may still use, kept for one release (0.7) with a DeprecationWarning.

0.7 grouped the runtime's modules into sub-packages (``data``, ``bundle``, ``engines``, ``inference``,
``learning``) and gave measuring the bundle's artifacts on the device its own word ("measure"; "tune" is the ridge
regularisation search only).  Old module paths are aliases of their new homes: the same module object, so a
class imported through either path is the same class and a monkeypatch through either reaches both.  Everything
here goes in 0.8 (CHANGELOG.md says so).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

#: 0.6 module path -> its home since 0.7.  The old ``data``, ``bundle``, ``engines`` and ``learning`` modules are
#: the packages of the same names now, which export their names.
MOVED_MODULES = {
    "edgetl.runtime.text_data": "edgetl.runtime.data.text_sources",
    "edgetl.runtime.labelled_rows": "edgetl.runtime.data.rows",
    "edgetl.runtime.builtin": "edgetl.runtime.data.builtin",
    "edgetl.runtime.preprocess": "edgetl.runtime.data.preprocess",
    "edgetl.runtime.text": "edgetl.runtime.data.text",
    "edgetl.runtime.reader": "edgetl.runtime.data.reader",
    "edgetl.runtime.manifest": "edgetl.runtime.bundle.manifest",
    "edgetl.runtime.checkset": "edgetl.runtime.bundle.checkset",
    "edgetl.runtime.timings": "edgetl.runtime.bundle.timings",
    "edgetl.runtime.heads": "edgetl.runtime.bundle.heads",
    "edgetl.runtime.store": "edgetl.runtime.bundle.store",
    "edgetl.runtime.backends": "edgetl.runtime.engines.backends",
    "edgetl.runtime.backends.base": "edgetl.runtime.engines.backends.base",
    "edgetl.runtime.backends.onnxruntime": "edgetl.runtime.engines.backends.onnxruntime",
    "edgetl.runtime.backends.openvino": "edgetl.runtime.engines.backends.openvino",
    "edgetl.runtime.backends.tensorrt": "edgetl.runtime.engines.backends.tensorrt",
    "edgetl.runtime.choice": "edgetl.runtime.engines.choice",
    "edgetl.runtime.tune": "edgetl.runtime.engines.measure",
    "edgetl.runtime.latency": "edgetl.runtime.engines.latency",
    "edgetl.runtime.artifacts": "edgetl.runtime.engines.artifacts",
    "edgetl.runtime.backbone": "edgetl.runtime.engines.runner",
    "edgetl.runtime.cuda": "edgetl.runtime.engines.cuda",
    "edgetl.runtime.model": "edgetl.runtime.inference.model",
    "edgetl.runtime.evaluate": "edgetl.runtime.inference.evaluate",
    "edgetl.runtime.features": "edgetl.runtime.inference.features",
    "edgetl.runtime.ridge_system": "edgetl.runtime.learning.ridge_system",
    "edgetl.runtime.update": "edgetl.runtime.learning",
    "edgetl.runtime.datasets": "edgetl.runtime.data.datasets",
    "edgetl.runtime.cli.measure": "edgetl.runtime.cli.bench",
}

#: 0.6 names in a module that now live elsewhere or under another name: (module, old name) -> (module, new name).
MOVED_NAMES = {
    ("edgetl.runtime", "Backbone"): ("edgetl.runtime.engines.runner", "BackboneRunner"),
    ("edgetl.runtime.engines.runner", "Backbone"): ("edgetl.runtime.engines.runner", "BackboneRunner"),
    ("edgetl.runtime.engines.measure", "tune_bundle"): ("edgetl.runtime.engines.measure", "measure_bundle"),
    ("edgetl.runtime.engines.measure", "TuneReport"): ("edgetl.runtime.engines.measure", "MeasureReport"),
    ("edgetl.runtime.engines.measure", "tune"): ("edgetl.runtime.engines.measure", "measure_candidates"),
}

REMOVED_IN = "0.8"


def deprecated_use(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now ``new`` and goes in :data:`REMOVED_IN`."""
    warnings.warn(f"{old} is now {new}; the old name goes in edgetl {REMOVED_IN}", DeprecationWarning,
                  stacklevel=stacklevel)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a 0.6 module path as the module that replaced it (first on ``sys.meta_path``, so the old path of
    a moved package's submodule never loads the file a second time under another name)."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED_MODULES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def __init__(self):
        self._own_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def create_module(self, spec):
        deprecated_use(spec.name, MOVED_MODULES[spec.name], stacklevel=3)   # importlib's own frames are skipped
        module = importlib.import_module(MOVED_MODULES[spec.name])
        self._own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        """The module is the new one, already executed; importlib has just given it the alias's spec, which would
        send its relative imports astray: it gets its own back."""
        module.__spec__ = self._own_specs.pop(module.__name__)


def install_module_aliases() -> None:
    """Make the 0.6 module paths importable (once per process)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())


def moved_name(module: str, name: str):
    """The object a 0.6 name of ``module`` refers to now (a module's ``__getattr__`` asks), with a warning; raises
    AttributeError for a name that never existed."""
    if (module, name) not in MOVED_NAMES:
        raise AttributeError(f"module '{module}' has no attribute '{name}'")
    target_module, target = MOVED_NAMES[(module, name)]
    deprecated_use(f"{module}.{name}", f"{target_module}.{target}", stacklevel=4)   # past the module's __getattr__
    return getattr(importlib.import_module(target_module), target)


def renamed_keyword(old: str, new: str):
    """Accept keyword ``old`` as ``new`` (with a warning) on a function or a class's ``__init__``."""
    def decorate(func):
        @functools.wraps(func)
        def accepting(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{func.__qualname__}() got both {old}= and {new}=; give {new}= only")
                deprecated_use(f"the keyword {old}= of {func.__qualname__}()", f"{new}=")
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)
        return accepting
    return decorate
