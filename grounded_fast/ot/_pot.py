"""The link to the installed POT (top-level ``ot``): delegation of the names we do not implement,
and ``patch_pot`` / ``unpatch_pot``, which swap POT's own functions for ours in place.

Delegation: each drop-in module ``grounded_fast.ot[.X]`` mirrors POT's ``ot[.X]``. A module-level
``__getattr__`` (PEP 562) answers every public name the module does not define with POT's object
at the same path (``grounded_fast.ot.emd`` is ``ot.emd``); ``_AliasFinder`` makes ``import
grounded_fast.ot.lp`` (and ``from grounded_fast.ot.gromov import ...``) bind POT's module itself.
Without POT installed, such names raise an ImportError saying ``pip install pot``.

Patching: the accelerated functions are derived, never listed by hand: every function in a drop-in
module's ``__all__`` for which POT defines a function at the same path. Every POT module
(``sys.modules`` entries ``ot`` and ``ot.*``) attribute that is one of those POT functions, by
identity, is replaced by ours (POT re-exports: ``ot.sinkhorn is ot.bregman.sinkhorn is
ot.bregman._sinkhorn.sinkhorn``); undoing puts the identical original objects back.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types

_PKG = "grounded_fast.ot"
_POT = "ot"


def _pot_name(our_name: str) -> str:
    """'grounded_fast.ot.partial' -> 'ot.partial'."""
    return _POT + our_name[len(_PKG):]


def _missing_pot(what: str) -> ImportError:
    return ImportError(f"{what} is not accelerated by grounded_fast and is delegated to POT, which is not "
                       f"installed: pip install pot")


def _is_pot_missing(exc: ImportError) -> bool:
    return isinstance(exc, ModuleNotFoundError) and exc.name == _POT


def _pot_module(pot_name: str):
    """POT's module ``pot_name``, or None when POT has no such module. Raises ImportError when POT
    itself is not installed."""
    importlib.import_module(_POT)  # first POT itself: its absence is ModuleNotFoundError named 'ot'
    try:
        return importlib.import_module(pot_name)
    except ModuleNotFoundError as exc:
        if exc.name == pot_name:
            return None
        raise


def _delegated(our_name: str, name: str):
    """POT's object for the name ``name`` that module ``our_name`` does not define."""
    if name.startswith("_"):  # dunder probes (__path__, __wrapped__, ...) and private names stay ours
        raise AttributeError(f"module {our_name!r} has no attribute {name!r}")
    pot_name = _pot_name(our_name)
    try:
        mod = _pot_module(pot_name)
    except ImportError as exc:
        if _is_pot_missing(exc):
            raise _missing_pot(f"{our_name}.{name} (POT's {pot_name}.{name})") from None
        raise
    if mod is not None:
        try:
            return getattr(mod, name)
        except AttributeError:
            pass
        sub = _pot_module(f"{pot_name}.{name}")  # a POT submodule its package does not import itself
        if sub is not None:
            return sub
    raise AttributeError(f"module {our_name!r} has no attribute {name!r}")


def _pot_public(pot_name: str) -> list:
    try:
        mod = _pot_module(pot_name)
    except ImportError:
        return []
    if mod is None:
        return []
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [k for k, v in vars(mod).items() if not isinstance(v, types.ModuleType)]
    return [k for k in names if not k.startswith("_") and hasattr(mod, k)]  # POT's ot.__all__ names a missing one


def delegating(our_name: str):
    """``(__getattr__, __dir__)`` for the drop-in module ``our_name``: its ``__getattr__`` answers
    the names it does not define from POT's module at the same path; its ``__dir__`` lists its
    ``__all__`` and POT's public names (so no helper imports)."""

    def __getattr__(name: str):
        if getattr(getattr(sys.modules.get(our_name), "__spec__", None), "_initializing", False):
            # a circular import reached a name not yet defined: an error, not POT's function
            raise AttributeError(f"partially initialised module {our_name!r} has no attribute {name!r}")
        return _delegated(our_name, name)

    def __dir__() -> list:
        return sorted(set(sys.modules[our_name].__all__) | set(_pot_public(_pot_name(our_name))))

    return __getattr__, __dir__


class _AliasLoader(importlib.abc.Loader):
    """Binds ``grounded_fast.ot.<path>`` in sys.modules to POT's module ``ot.<path>`` itself."""

    def __init__(self, pot_name: str):
        self.pot_name = pot_name

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # The import system returns whatever sys.modules holds under the name after exec_module.
        sys.modules[module.__name__] = importlib.import_module(self.pot_name)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """``import grounded_fast.ot.lp``: a submodule path we do not have resolves to POT's module.

    Sits first on sys.meta_path so that below an aliased POT package (whose ``__path__`` is POT's
    directory) POT's files are never loaded a second time under our name."""

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(_PKG + "."):
            return None
        parent = fullname.rpartition(".")[0]
        pmod = sys.modules.get(parent)
        if getattr(pmod, "__name__", None) == parent and \
                importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
            return None  # one of our own modules
        pot_name = _pot_name(fullname)
        try:
            importlib.import_module(_POT)
            found = importlib.util.find_spec(pot_name)
        except ImportError as exc:
            if _is_pot_missing(exc):
                raise ModuleNotFoundError(str(_missing_pot(f"{fullname} (POT's {pot_name})")), name=fullname) from None
            if isinstance(exc, ModuleNotFoundError):
                return None
            raise
        if found is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(pot_name))


def install_finder() -> None:
    """Put one ``_AliasFinder`` first on sys.meta_path (idempotent, also across reloads)."""
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_AliasFinder"
                        or type(f).__module__ != __name__]
    sys.meta_path.insert(0, _AliasFinder())


# ----------------------------------------------------------------------------------------- patching

def _dropin_modules() -> list:
    """``grounded_fast.ot`` and its submodules named in its ``__all__`` (our modules only)."""
    pkg = importlib.import_module(_PKG)
    mods = [pkg]
    for name in pkg.__all__:
        obj = getattr(pkg, name, None)
        if isinstance(obj, types.ModuleType) and obj.__name__.startswith(_PKG + "."):
            mods.append(obj)
    return mods


def _is_function(obj) -> bool:
    return callable(obj) and not isinstance(obj, (type, types.ModuleType))


def accelerated() -> dict:
    """``{POT path: (POT's original function, our function)}`` for every function in a drop-in
    module's ``__all__`` that POT also defines at the same path, e.g. ``'ot.bregman.sinkhorn'``.
    Raises ImportError without POT."""
    out = {}
    for mod in _dropin_modules():
        pot_name = _pot_name(mod.__name__)
        try:
            pot_mod = _pot_module(pot_name)
        except ImportError as exc:
            if _is_pot_missing(exc):
                raise _missing_pot("patching POT") from None
            raise
        if pot_mod is None:
            continue
        for name in mod.__all__:
            ours, theirs = getattr(mod, name), getattr(pot_mod, name, None)
            if _is_function(ours) and _is_function(theirs):
                out[f"{pot_name}.{name}"] = (_original(theirs), ours)
    return out


def accelerated_pot_names() -> list:
    """Sorted POT paths (``'ot.sinkhorn'``, ``'ot.bregman.sinkhorn_log'``, ...) that ``patch_pot``
    replaces by grounded_fast's functions. Raises ImportError without POT."""
    return sorted(accelerated())


_LOCK = threading.RLock()
_PATCHED: dict | None = None  # while patched: {id(ours): (ours, original)}


def _original(obj):
    """POT's original for ``obj`` if ``obj`` is one of ours patched into POT, else ``obj``."""
    hit = _PATCHED.get(id(obj)) if _PATCHED else None
    return hit[1] if hit is not None and hit[0] is obj else obj


def pot_original(pot_module: str, name: str):
    """POT's own function ``pot_module.name`` even while POT is patched (for our fallbacks)."""
    try:
        mod = importlib.import_module(pot_module)
    except ImportError as exc:
        if _is_pot_missing(exc):
            raise _missing_pot(f"{pot_module}.{name}") from None
        raise
    return _original(getattr(mod, name))


def _pot_modules() -> list:
    mods, seen = [], set()
    for key, mod in list(sys.modules.items()):
        if (key == _POT or key.startswith(_POT + ".")) and isinstance(mod, types.ModuleType) and id(mod) not in seen:
            seen.add(id(mod))
            mods.append(mod)
    return mods


class PotPatch:
    """What :func:`patch_pot` returns: also a context manager whose exit undoes the patch if this
    call applied it (``with grounded_fast.patch_pot(): ...``)."""

    def __init__(self, applied: bool):
        self.applied = applied

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.applied:
            unpatch_pot()
        return False

    def __repr__(self):
        return f"PotPatch(applied={self.applied}, active={is_pot_patched()})"


def patch_pot() -> PotPatch:
    """Make the installed POT run grounded_fast's kernels: every POT module attribute that is one of
    the accelerated POT functions (see :func:`accelerated_pot_names`) is replaced by ours, so
    ``import ot; ot.sinkhorn(...)`` and ``from ot.partial import entropic_partial_wasserstein``
    (imported after patching) call grounded_fast, as do POT's own internal calls. Idempotent.
    Returns a :class:`PotPatch`, usable as a context manager. Raises ImportError without POT."""
    global _PATCHED
    with _LOCK:
        if _PATCHED is not None:
            return PotPatch(applied=False)
        by_original, by_ours = {}, {}
        for path, (orig, ours) in accelerated().items():
            if by_original.setdefault(id(orig), (orig, ours))[1] is not ours or \
                    by_ours.setdefault(id(ours), (ours, orig))[1] is not orig:
                raise RuntimeError(f"{path}: POT's function and grounded_fast's are not paired one to one")
        _swap(by_original)
        _PATCHED = by_ours
        return PotPatch(applied=True)


def unpatch_pot() -> None:
    """Undo :func:`patch_pot`: every POT module attribute holding one of our functions gets POT's
    identical original object back (also in POT modules imported while patched). No-op when POT
    is not patched."""
    global _PATCHED
    with _LOCK:
        if _PATCHED is None:
            return
        _swap(_PATCHED)
        _PATCHED = None


def _swap(pairs: dict) -> None:
    """In every loaded POT module, replace each attribute that is (by identity) the first object of a
    pair in ``pairs`` ({id(obj): (obj, replacement)}) with its replacement."""
    for mod in _pot_modules():
        for name, val in list(vars(mod).items()):
            hit = pairs.get(id(val))
            if hit is not None and hit[0] is val:
                setattr(mod, name, hit[1])


def is_pot_patched() -> bool:
    """Whether :func:`patch_pot` is in effect."""
    return _PATCHED is not None
