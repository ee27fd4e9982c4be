"""The torch-free part of the autodiff engine: its error (``NotOnTensors``), which modules are
the user's, and stand-ins put in place of the user's arrays by identity.

The autodiff reference (``sides.autodiff``) uses it to run the user's unmodified
code on tensors. ``Rebinding`` walks what the user's callables reach (closures, bound
instances and their attributes, dicts/lists/tuples, module globals) to a bounded depth, puts a
stand-in wherever one of the given arrays is referenced, and on ``restore()`` puts back every
container it walked as it was (also what the run added, such as a layer's cache), so nothing
the user holds keeps a trace of the run.
"""

from __future__ import annotations

import enum
import functools
import gc
import importlib
import sys
import sysconfig
import types
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

MAX_DEPTH = 6


class NotOnTensors(Exception):
    """The user's NumPy code cannot run on tensors. ``str(exc)`` is one line naming the call
    and where; ``call``: the call ("np.random.rand"), ``where``: "path:line" or ""."""

    def __init__(self, call: str, where: str, message: str | None = None) -> None:
        self.call, self.where = call, where
        if message is None:
            message = f"{call} at {where or 'the forward'} has no tensor version"
        super().__init__(message)


_LIBRARY_ROOTS = tuple(
    str(Path(p).resolve())
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))
)


@cache
def _library_file(file: str) -> bool:
    resolved = str(Path(file).resolve())
    if "site-packages" in resolved or "dist-packages" in resolved:
        return True
    return any(resolved.startswith(root + "/") for root in _LIBRARY_ROOTS)


def is_user_module(module: types.ModuleType) -> bool:
    """Whether ``module`` is the user's code: not the standard library, not an installed
    package, not gradparity's harness (its NumPy framework ``gradparity.ours`` and the bug
    corpus ``gradparity.corpus``, written as users write, are user code: they are what a
    comparison checks)."""
    name = module.__name__
    if name in sys.builtin_module_names or name.split(".")[0] in ("numpy", "torch"):
        return False
    if name == "gradparity" or name.startswith("gradparity."):
        return name.startswith(("gradparity.ours", "gradparity.corpus"))
    file = getattr(module, "__file__", None)
    return not (file and _library_file(file))


def _owner_modules(value: Any, depth: int = 0) -> list[types.ModuleType]:
    """The modules defining ``value``: a function's, a class's and its bases', an object's
    class's; a bound method's function and instance; what a closure, an object's attributes
    or a container hold (two steps deep: a wrapped layer inside an adapter, a net's layers)."""
    if depth > 2:
        return []
    if isinstance(value, types.MethodType):
        return _owner_modules(value.__func__, depth) + _owner_modules(value.__self__, depth)
    if isinstance(value, types.ModuleType):
        return [value]
    if isinstance(value, types.FunctionType):
        found = [m for m in [_defining_module(value)] if m is not None]
        return found + [m for v in _cell_contents(value) for m in _owner_modules(v, depth + 1)]
    if isinstance(value, dict | list | tuple):
        items = value.values() if isinstance(value, dict) else value
        return [m for v in items for m in _owner_modules(v, depth + 1)]
    if isinstance(value, str | bytes | int | float | complex) or value is None:
        return []
    cls = value if isinstance(value, type) else type(value)
    found = [m for c in cls.__mro__ if (m := _class_module(c)) is not None]
    attributes = getattr(value, "__dict__", None)
    if not isinstance(value, type) and isinstance(attributes, dict):
        found += [m for v in attributes.values() for m in _owner_modules(v, depth + 1)]
    return found


def _defining_module(function: types.FunctionType) -> types.ModuleType | None:
    """The module whose globals ``function`` reads: the one ``sys.modules`` holds under its
    name, else (code loaded from a file without registering it, or a module of that name
    replaced since) the module object owning those globals."""
    module = sys.modules.get(function.__module__)
    if module is not None and vars(module) is function.__globals__:
        return module
    return _module_of_namespace(function.__globals__)


def _class_module(cls: type) -> types.ModuleType | None:
    """The module defining ``cls``: by name, else through the globals of one of its methods."""
    module = sys.modules.get(cls.__module__)
    if module is not None:
        return module
    for attribute in vars(cls).values():
        if isinstance(attribute, types.FunctionType):
            return _defining_module(attribute)
    return None


# id(globals dict) -> its module, for modules missing from sys.modules (found once: the search
# asks the garbage collector for every object referring to the dict).
_UNREGISTERED: dict[int, types.ModuleType] = {}


def _module_of_namespace(namespace: dict) -> types.ModuleType | None:
    known = _UNREGISTERED.get(id(namespace))
    if known is not None and vars(known) is namespace:
        return known
    for referrer in gc.get_referrers(namespace):
        if isinstance(referrer, types.ModuleType) and vars(referrer) is namespace:
            _UNREGISTERED[id(namespace)] = referrer
            return referrer
    return None


def _cell_contents(function: types.FunctionType) -> list[Any]:
    """What ``function``'s closure cells hold (empty cells left out)."""
    contents = []
    for cell in function.__closure__ or ():
        try:
            contents.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return contents


def user_modules(
    callables: Sequence[Any], modules: Sequence[str | types.ModuleType] | None = None
) -> list[types.ModuleType]:
    """The user's modules whose NumPy globals the autodiff run rebinds: ``modules`` when given
    (names or module objects), else the modules defining ``callables`` and the user modules
    those reference as globals (a module, or a function or class defined in one), found
    transitively; never the standard library, installed packages or gradparity's harness."""
    if modules is not None:
        return [importlib.import_module(m) if isinstance(m, str) else m for m in modules]
    found: dict[str, types.ModuleType] = {}
    checked: set[str] = set()  # module names judged once (most are reached many times)
    pending = [m for c in callables for m in _owner_modules(c)]
    while pending:
        module = pending.pop()
        if module.__name__ in checked:
            continue
        checked.add(module.__name__)
        if not is_user_module(module):
            continue
        found[module.__name__] = module
        pending += _referenced_modules(module)
    return list(found.values())


# module name -> (its module, function and class globals: kept so that their ids stay theirs,
# the modules those reference). Valid while the module binds the same such globals.
_REFERENCES: dict[str, tuple[list[Any], list[types.ModuleType]]] = {}


def _referenced_modules(module: types.ModuleType) -> list[types.ModuleType]:
    """The modules ``module``'s globals reference (a module, or a function or class defined
    in one), remembered while its module, function and class globals stay the same objects;
    a module with a module-level closure is never remembered (its cells may change)."""
    code = [
        v
        for v in list(vars(module).values())
        if isinstance(v, types.ModuleType | types.FunctionType | type)
    ]
    cached = _REFERENCES.get(module.__name__)
    if (
        cached is not None
        and len(cached[0]) == len(code)
        and all(a is b for a, b in zip(cached[0], code, strict=True))
    ):
        return cached[1]
    referenced = [m for value in code for m in _owner_modules(value)]
    # each once, at its last place: the walk pops from the end, so the order found is kept
    referenced = list(reversed(dict.fromkeys(reversed(referenced))))
    if not any(isinstance(v, types.FunctionType) and v.__closure__ for v in code):
        _REFERENCES[module.__name__] = (code, referenced)
    return referenced


def module_files(modules: Sequence[types.ModuleType], callables: Sequence[Any]) -> set[str]:
    """The source files of ``modules`` and of the callables' code (to name call sites)."""
    files = {f for m in modules if (f := getattr(m, "__file__", None))}
    for c in callables:
        code = getattr(getattr(c, "__func__", c), "__code__", None)
        if code is not None:
            files.add(code.co_filename)
    return files


class Rebinding:
    """Stand-ins put in place of arrays by identity, and everything walked put back."""

    def __init__(self, stand_ins: Mapping[int, Any], originals: Sequence[Any]) -> None:
        self.stand_ins = stand_ins  # id(original array) -> its stand-in
        self._originals = list(originals)  # kept alive so their ids stay theirs
        self._undo: list[Callable[[], None]] = []
        self._seen: set[int] = set()

    def replace_in(self, roots: Sequence[Any]) -> None:
        """Put the stand-ins wherever ``roots`` reach the arrays (to ``MAX_DEPTH`` steps)."""
        for root in roots:
            self._visit(root, 0)

    def replace_globals(self, module: types.ModuleType, rebound: Mapping[str, Any]) -> None:
        """Bind ``rebound`` names in ``module`` and put stand-ins in its globals (and what they
        reach); ``restore`` puts every global back, removing any the run added."""
        namespace = vars(module)
        before = dict(namespace)

        def undo() -> None:
            for name in [n for n in namespace if n not in before]:
                del namespace[name]
            for name, value in before.items():
                if namespace.get(name, _MISSING) is not value:
                    namespace[name] = value

        self._undo.append(undo)
        namespace.update(rebound)
        for name, value in before.items():
            if name in rebound or self._passes_over(value):
                continue
            new = self._visit(value, 1)
            if new is not None:
                namespace[name] = new

    def restore(self) -> None:
        """Put back every reference and container content the run changed, newest first."""
        while self._undo:
            self._undo.pop()()
        self._seen.clear()

    def _visit(self, value: Any, depth: int) -> Any | None:
        """The stand-in for ``value`` (itself replaced, or a new tuple holding stand-ins), or
        None; containers reached are changed in place, with their undo recorded."""
        stand_in = self.stand_ins.get(id(value))
        if stand_in is not None:
            return stand_in
        kind = _kind(type(value))
        if kind is _Kind.OPAQUE or depth > MAX_DEPTH or id(value) in self._seen:
            return None
        self._seen.add(id(value))
        if kind is _Kind.DICT:
            self._walk_dict(value, depth)
        elif kind is _Kind.LIST:
            self._walk_list(value, depth)
        elif kind is _Kind.TUPLE:
            items = [self._visit(v, depth + 1) for v in value]
            if any(i is not None for i in items):
                rebuilt = [v if i is None else i for v, i in zip(value, items, strict=True)]
                return type(value)(*rebuilt) if hasattr(value, "_fields") else tuple(rebuilt)
        elif kind is _Kind.METHOD:
            self._visit(value.__func__, depth + 1)
            self._visit(value.__self__, depth + 1)
        elif kind is _Kind.FUNCTION:
            self._walk_function(value, depth)
        elif isinstance(getattr(value, "__dict__", None), dict):
            self._walk_dict(vars(value), depth)
        return None

    def _passes_over(self, value: Any) -> bool:
        """Whether ``value`` is of a type known never to be walked into and is no stand-in
        target, or a function holding nothing (no closure, no defaults): most of what the
        walk meets, decided without a ``_visit`` call."""
        kind = _KINDS.get(type(value))
        if kind is _Kind.OPAQUE:
            return id(value) not in self.stand_ins
        return kind is _Kind.FUNCTION and value.__closure__ is None and not value.__defaults__

    def _walk_dict(self, d: dict, depth: int) -> None:
        before = dict(d)

        def undo() -> None:
            d.clear()
            d.update(before)

        self._undo.append(undo)
        for key, item in before.items():
            if self._passes_over(item):
                continue
            new = self._visit(item, depth + 1)
            if new is not None:
                d[key] = new

    def _walk_list(self, items: list, depth: int) -> None:
        before = list(items)

        def undo() -> None:
            items[:] = before

        self._undo.append(undo)
        for index, item in enumerate(before):
            if self._passes_over(item):
                continue
            new = self._visit(item, depth + 1)
            if new is not None:
                items[index] = new

    def _walk_function(self, function: types.FunctionType, depth: int) -> None:
        for cell in function.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            self._undo.append(functools.partial(_set_cell, cell, content))
            new = self._visit(content, depth + 1)
            if new is not None:
                cell.cell_contents = new
        defaults = function.__defaults__
        if defaults:
            new = self._visit(defaults, depth + 1)
            if new is not None:
                self._undo.append(lambda: setattr(function, "__defaults__", defaults))
                function.__defaults__ = new


_MISSING = object()


def _set_cell(cell: types.CellType, content: Any) -> None:
    cell.cell_contents = content


class _Kind(enum.Enum):
    """How the walk treats a value, decided by its type alone."""

    OPAQUE = "never walked into"
    DICT = "dict"
    LIST = "list"
    TUPLE = "tuple"
    METHOD = "bound method"
    FUNCTION = "function"
    OBJECT = "an object whose attributes are walked"


# The walk meets the same few types hundreds of times per run: their kind is decided once.
_KINDS: dict[type, _Kind] = {}
_CONTAINER_KINDS = (
    (dict, _Kind.DICT),
    (list, _Kind.LIST),
    (tuple, _Kind.TUPLE),
    (types.MethodType, _Kind.METHOD),
    (types.FunctionType, _Kind.FUNCTION),
    (types.SimpleNamespace, _Kind.OBJECT),
)


def _kind(cls: type) -> _Kind:
    """The kind of values of class ``cls``: scalars, text, modules, classes, arrays that are
    not stand-in targets and objects of library classes (their state is not the user's) are
    never walked into."""
    known = _KINDS.get(cls)
    if known is not None:
        return known
    if issubclass(cls, str | bytes | int | float | complex | type | types.ModuleType):
        return _KINDS.setdefault(cls, _Kind.OPAQUE)
    for base, kind in _CONTAINER_KINDS:
        if issubclass(cls, base):
            return _KINDS.setdefault(cls, kind)
    module = _class_module(cls)
    if module is None:  # the user's code run without a module (exec): walked, not cached
        return _Kind.OBJECT
    user = is_user_module(module) or module.__name__ == "gradparity"
    user = user or module.__name__.startswith("gradparity.")
    return _KINDS.setdefault(cls, _Kind.OBJECT if user else _Kind.OPAQUE)
