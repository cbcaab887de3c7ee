"""The module tree torch.export sees: a shadow of the user's, with safe names.

Why not export the user's module itself:

- **Names reach generated code.** torch writes module, parameter and buffer names into Python
  source that it executes (`GraphModule` code, `getattr(self, "<name>")`, during
  `run_decompositions`), escaping nothing but `\\n`. A name holding a quote, a backslash, a
  carriage return or another line break could run code. In the shadow, every name that is not a
  plain ASCII identifier (or a ModuleList index) is replaced by a stand-in (`fxforge_alias3_`);
  `real_names` turns the stand-ins in a module path back into the user's names for provenance,
  reports and `keep_float`.
- **Nothing is lost.** Non-strict export swaps a module's parameters and buffers for fake tensors
  while it traces, and flips training flags. Done on the shadow, none of that touches the
  user's module, whatever fails half-way and however many threads capture at once.

Input structures are names too: torch writes the path of every input (`batch['<key>']`) into
the guard code it executes. When a dict key (or attribute name) on an input's path is not a safe
name, `flat_inputs` gives the shadow a forward that takes the flat list of leaves and rebuilds
the user's structure inside, so torch sees positional inputs only.

The shadow shares the user's tensors (no weights are copied) and, for every module, has its own
`__dict__` and its own dicts of parameters, buffers, submodules and hooks. A forward that looks a
child up by its real name (`getattr(self, name)`, `self._modules[name]`) still finds it: the
renamed dicts answer to the real names too.
"""

from __future__ import annotations

import re
import types
from collections import OrderedDict
from typing import Any

import torch
import torch.utils._pytree as pytree

_SAFE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_ALIAS = re.compile(r"fxforge_alias[0-9]+_")


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


def is_safe_name(name: str) -> bool:
    """True for names torch may write into generated code as they are."""
    return _SAFE.fullmatch(name) is not None


class ShadowTree:
    """`ShadowTree(model).root` is the module to export; `real_names(path)` undoes stand-ins."""

    def __init__(self, model: torch.nn.Module):
        self._memo: dict[int, torch.nn.Module] = {}
        self._real: dict[str, str] = {}  # stand-in -> real name
        self.originals: dict[int, torch.nn.Module] = {}  # id(shadow) -> user's module
        self.root = self._shadow(model)

    @property
    def renamed(self) -> bool:
        return bool(self._real)

    def real_names(self, text: str) -> str:
        """`text` (a module path, a message) with every stand-in replaced by the real name."""
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
            if not is_safe_name(name) or _ALIAS.fullmatch(name):
                key = aliases[name] = self._stand_in(name)
            out[key] = convert(item) if convert is not None and item is not None else item
        return _AliasDict(out, aliases) if aliases else dict(out)

    def _shadow(self, module: torch.nn.Module) -> torch.nn.Module:
        found = self._memo.get(id(module))
        if found is not None:
            return found
        twin = object.__new__(type(module))
        self._memo[id(module)] = twin
        self.originals[id(twin)] = module
        state = twin.__dict__
        for key, item in module.__dict__.items():  # hook dicts and the like: a copy of each
            state[key] = type(item)(item) if type(item) in (dict, OrderedDict) else item
        state["_parameters"] = self._renamed(module._parameters)
        state["_buffers"] = self._renamed(module._buffers)
        renamed = {self._real_key(k, state["_buffers"]) for k in module._non_persistent_buffers_set}
        state["_non_persistent_buffers_set"] = renamed
        state["_modules"] = self._renamed(module._modules, self._shadow)
        return twin

    @staticmethod
    def _real_key(name: str, renamed: dict) -> str:
        if isinstance(renamed, _AliasDict):
            return renamed.aliases.get(name, name)
        return name


def _safe_key(key: Any) -> bool:
    if isinstance(key, pytree.SequenceKey):
        return True
    if isinstance(key, pytree.MappingKey):
        k = key.key
        return (isinstance(k, int) and not isinstance(k, bool)) or (
            isinstance(k, str) and is_safe_name(k))
    if isinstance(key, pytree.GetAttrKey):
        return is_safe_name(key.name)
    return False


def flat_inputs(root: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The inputs to export `root` with. Unchanged when every key on every input's path is a
    safe name; otherwise the flat leaves, with `root` (a shadow) given a forward that rebuilds
    the structure, so no key reaches torch's generated code. The leaves are in the order of
    `pytree.tree_flatten((args, kwargs))` either way, so the graph's inputs map to the same
    call leaves."""
    paths, spec = pytree.tree_flatten_with_path((args, kwargs))
    if all(_safe_key(key) for path, _ in paths for key in path[1:]):
        return args, kwargs
    forward = type(root).forward

    def flat_forward(self: torch.nn.Module, *leaves: Any) -> Any:
        inner_args, inner_kwargs = pytree.tree_unflatten(list(leaves), spec)
        return forward(self, *inner_args, **inner_kwargs)

    root.__dict__["forward"] = types.MethodType(flat_forward, root)
    return tuple(leaf for _, leaf in paths), {}
