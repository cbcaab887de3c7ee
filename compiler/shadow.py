"""The module tree torch.export sees: a shadow of the user's, with safe names.

Why not export the user's module itself:

- **Names reach generated code.** torch writes module, parameter and buffer names into Python
  source that it executes (`GraphModule` code, `getattr(self, "<name>")`, during
  `run_decompositions`), escaping nothing but `\\n`. A name holding a quote, a backslash, a
  carriage return or another line break could run code. In the shadow, such a name (see
  `needs_stand_in`) is replaced by a stand-in (`fxforge_alias3_`); `real_names` turns the
  stand-ins in a module path back into the user's names for provenance, reports and
  `keep_float`. Names torch writes as they are ("box-reg", "a b", "ü") keep their own name, so a
  forward that iterates a ModuleDict still sees its real keys.
- **Nothing is lost.** Non-strict export swaps a module's parameters and buffers for fake tensors
  while it traces, and flips training flags. Done on the shadow, none of that touches the
  user's module, whatever fails half-way and however many threads capture at once.

Input structures are names too: torch writes the path of every input (`batch['<key>']`) into
the guard code it executes. When a key on an input's path needs a stand-in, `flat_inputs` wraps
the shadow in a module that takes the flat list of leaves and rebuilds the user's structure
before calling it (its hooks and its own forward included), so torch sees positional inputs only.

The shadow shares the user's tensors (no weights are copied) and, for every module, has its own
`__dict__` (slots copied too) and its own dicts of parameters, buffers, submodules and hooks.
References to the user's modules held in plain attributes (a list of blocks, a bound or partial
`forward`, accelerate's `_old_forward`) are pointed at their shadows; one held only in a
closure cannot be, and runs as it is (its training flag included). A forward that looks a child
up by its real name (`getattr(self, name)`, `self._modules[name]`) still finds it: renamed dicts
answer to the real names too. A class with `__del__` gets a shadow whose `__del__` does nothing:
the shadow shares state with the user's module, which its finalizer must not tear down.
"""

from __future__ import annotations

import functools
import keyword
import re
import types
import unicodedata
from collections import OrderedDict
from typing import Any

import torch
import torch.utils._pytree as pytree

_ALIAS = re.compile(r"(?<![A-Za-z0-9_])fxforge_alias[0-9]+_(?![A-Za-z0-9_])")
_QUOTES = frozenset("\"'\\")
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
# attributes of the GraphModule torch builds (class and instance): a child of that name would
# shadow them
_GRAPH_MODULE = frozenset(dir(torch.fx.GraphModule)) | frozenset(
    vars(torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())))
FLAT_ROOT = "fxforge_root_"  # the shadow's name inside the flat-input wrapper


def needs_stand_in(name: str) -> bool:
    """True for names torch may not write into generated code as they are: quotes, backslashes,
    control / format / line-separator characters, keywords (`self.class`), identifiers that
    Python's NFKC normalization would change (`self.ﬁ` is `self.fi`), GraphModule attribute
    names, and anything that looks like one of fxforge's own stand-ins."""
    if any(c in _QUOTES or unicodedata.category(c) in _INVISIBLE for c in name):
        return True
    if name.isidentifier() and (keyword.iskeyword(name) or keyword.issoftkeyword(name)
                                or unicodedata.normalize("NFKC", name) != name):
        return True
    return name in _GRAPH_MODULE or "fxforge_alias" in name or name == FLAT_ROOT


class _AliasDict(dict):
    """A dict keyed by stand-in names that also answers to the real ones (for lookups only)."""

    def __init__(self, items: dict, aliases: dict[str, str]):
        super().__init__(items)
        self.aliases = aliases  # real name -> stand-in

    def _key(self, key: Any) -> Any:
        return self.aliases.get(key, key) if isinstance(key, str) else key

    def __contains__(self, key: Any) -> bool:
        return super().__contains__(self._key(key))

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._key(key), default)


def _no_finalizer(self: Any) -> None:
    """The shadow's __del__: the user's module owns whatever a finalizer would release."""


@functools.cache
def _without_del(cls: type) -> type:
    return type(cls.__name__, (cls,), {"__del__": _no_finalizer, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


class ShadowTree:
    """`ShadowTree(model).root` is the module to export; `real_names(path)` undoes stand-ins."""

    def __init__(self, model: torch.nn.Module):
        self._memo: dict[int, torch.nn.Module] = {}  # id(user's module) -> its shadow
        self._real: dict[str, str] = {}  # stand-in -> real name
        self.root = self._shadow(model)
        for twin in list(self._memo.values()):
            self._repoint(twin)

    def real_names(self, text: str) -> str:
        """`text` (a module path, a message) with every stand-in replaced by the real name and
        the flat-input wrapper's prefix dropped."""
        text = text.replace(FLAT_ROOT + ".", "").replace(FLAT_ROOT, "")
        if not self._real:
            return text
        return _ALIAS.sub(lambda m: self._real.get(m.group(0), m.group(0)), text)

    def _stand_in(self, name: str) -> str:
        alias = f"fxforge_alias{len(self._real)}_"
        self._real[alias] = name
        return alias

    def _renamed(self, items: dict, convert: Any = None) -> dict:
        aliases: dict[str, str] = {}
        out = {}
        for name, item in items.items():
            key = name
            if needs_stand_in(name):
                key = aliases[name] = self._stand_in(name)
            out[key] = convert(item) if convert is not None and item is not None else item
        return _AliasDict(out, aliases) if aliases else dict(out)

    def _shadow(self, module: torch.nn.Module) -> torch.nn.Module:
        found = self._memo.get(id(module))
        if found is not None:
            return found
        cls = type(module)
        twin = object.__new__(_without_del(cls) if hasattr(cls, "__del__") else cls)
        self._memo[id(module)] = twin
        state = twin.__dict__
        for key, item in module.__dict__.items():  # hook dicts and the like: a copy of each
            state[key] = type(item)(item) if type(item) in (dict, OrderedDict) else item
        _copy_slots(module, twin)
        state["_parameters"] = self._renamed(module._parameters)
        state["_buffers"] = self._renamed(module._buffers)
        renamed = {self._real_key(k, state["_buffers"]) for k in module._non_persistent_buffers_set}
        state["_non_persistent_buffers_set"] = renamed
        state["_modules"] = self._renamed(module._modules, self._shadow)
        return twin

    def _repoint(self, twin: torch.nn.Module) -> None:
        """Plain attributes that reach the user's modules (a list of blocks, a bound or partial
        forward) are pointed at the shadows, so the export never runs the originals."""
        state = twin.__dict__
        for key, value in list(state.items()):
            if key not in ("_parameters", "_buffers", "_modules"):
                state[key] = self._mapped(value, 3)

    def _mapped(self, value: Any, depth: int) -> Any:
        if isinstance(value, torch.nn.Module):
            return self._memo.get(id(value), value)
        if depth == 0:
            return value
        if isinstance(value, types.MethodType) and isinstance(value.__self__, torch.nn.Module):
            owner = self._memo.get(id(value.__self__))
            return value if owner is None else types.MethodType(value.__func__, owner)
        if type(value) is functools.partial:
            args = tuple(self._mapped(a, depth - 1) for a in value.args)
            kwargs = {k: self._mapped(v, depth - 1) for k, v in value.keywords.items()}
            if all(a is b for a, b in zip(args, value.args)) and all(
                    kwargs[k] is v for k, v in value.keywords.items()):
                return value
            return functools.partial(value.func, *args, **kwargs)
        if type(value) in (list, tuple):
            items = [self._mapped(v, depth - 1) for v in value]
            return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
        return value

    @staticmethod
    def _real_key(name: str, renamed: dict) -> str:
        if isinstance(renamed, _AliasDict):
            return renamed.aliases.get(name, name)
        return name


def _copy_slots(module: torch.nn.Module, twin: torch.nn.Module) -> None:
    """Values in `__slots__` live outside `__dict__`: copy each one that is set."""
    for cls in type(module).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            name = f"_{cls.__name__.lstrip('_')}{slot}" if slot.startswith("__") else slot
            descriptor = cls.__dict__.get(name)
            try:
                descriptor.__set__(twin, descriptor.__get__(module, cls))
            except AttributeError:  # a slot never set
                continue


def _safe_key(key: Any) -> bool:
    if isinstance(key, pytree.SequenceKey):
        return True
    if isinstance(key, pytree.MappingKey):
        k = key.key
        return (isinstance(k, int) and not isinstance(k, bool)) or (
            isinstance(k, str) and not needs_stand_in(k))
    if isinstance(key, pytree.GetAttrKey):
        return not needs_stand_in(key.name)
    return False


class _FlatCall(torch.nn.Module):
    """Takes the flat leaves of a call and calls the shadow with the user's structure."""

    def __init__(self, root: torch.nn.Module, spec: pytree.TreeSpec):
        super().__init__()
        self.add_module(FLAT_ROOT, root)
        self._spec = spec

    def forward(self, *leaves: Any) -> Any:
        args, kwargs = pytree.tree_unflatten(list(leaves), self._spec)
        return getattr(self, FLAT_ROOT)(*args, **kwargs)


def flat_inputs(root: torch.nn.Module, args: tuple, kwargs: dict
                ) -> tuple[torch.nn.Module, tuple, dict]:
    """(module to export, args, kwargs): `root` and the inputs unchanged when every key on every
    input's path is safe; otherwise a wrapper taking the flat leaves. The leaves are in the
    order of `pytree.tree_flatten((args, kwargs))` either way, so the graph's inputs map to the
    same call leaves."""
    paths, spec = pytree.tree_flatten_with_path((args, kwargs))
    if all(_safe_key(key) for path, _ in paths for key in path[1:]):
        return root, args, kwargs
    return _FlatCall(root, spec), tuple(leaf for _, leaf in paths), {}
