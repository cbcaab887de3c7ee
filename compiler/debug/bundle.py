"""Reproducer bundles: one directory that replays a pass failure anywhere.

Written by the PassManager when a pass crashes or `check_each` finds a miscompile (into
`debug={"repro_dir": ...}` / `FXFORGE_REPRO_DIR`, else a fresh folder under the system's temp
dir; `"off"` writes none), or by `write_bundle` on request. A bundle holds:

- `00-before.ir` + `constants.npz`: the IR just before the failing pass (the dump format);
- `arrays.npz`: the input samples and array-valued pass options, keyed by content digest;
- `manifest.json`: the remaining pipeline (the failing pass first) with its options, the samples'
  digests and where they came from (the call's inputs, or seeded random ones and the seed), the
  check's tolerance, versions (fxforge, torch, numpy, triton, onnx, python) and the failure's
  signature.

Signatures say which failure, not merely that something fails (reductions that drift into
another bug are what make reducers useless): a crash is (pass, exception type, message with its
numbers blanked); a miscompile is (pass, op of the first diverging value). `strict=False`
matching (pass and kind only) is what bisecting uses, where earlier rewrites may move the first
diverging value.

A bundle is untrusted input: the manifest is size-limited JSON whose fields are checked by type,
arrays are read member by member with their digests checked and never unpickled, and pipeline
entries must be registered passes. A user's pass (`user:name`) is never imported from a bundle:
the caller supplies it (`replay(..., user_passes={"user:name": fn})`, CLI `--pass NAME=module:fn`).
"""

from __future__ import annotations

import json
import platform
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fxforge.debug.check import ATOL, RTOL
from fxforge.dumps import DumpWriter, _read_store, load_dump
from fxforge.errors import FxforgeError, MiscompileError, PipelineError
from fxforge.ir import Graph, digest_of

FORMAT = "fxforge-repro"
VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
GRAPH = "00-before.ir"
_MAX_MANIFEST = 4 << 20


# --- signatures ----------------------------------------------------------------------------------


def _normalize(message: str) -> str:
    """The first line of an error message with numbers blanked (shapes and counts change as a
    case is reduced; the words do not)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return re.sub(r"\d+", "#", first)[:300]


def crash_signature(pass_name: str, error: BaseException) -> dict[str, Any]:
    cause = error.__cause__ if isinstance(error, PipelineError) and error.__cause__ else error
    return {"kind": "crash", "pass": pass_name, "exception": type(cause).__name__,
            "message": _normalize(str(cause))}


def miscompile_signature(error: MiscompileError) -> dict[str, Any]:
    return {"kind": "miscompile", "pass": error.pass_name, "value": error.value,
            "op": error.op, "module": error.module, "tolerance": error.tolerance}


def signature_of(error: BaseException, pass_name: str) -> dict[str, Any]:
    if isinstance(error, MiscompileError):
        return miscompile_signature(error)
    return crash_signature(pass_name, error)


def matches(want: Mapping[str, Any], got: Mapping[str, Any] | None, strict: bool = True) -> bool:
    """Is `got` the failure `want` names? strict: same pass, kind and exception type and message
    (crash) or op (miscompile); not strict: same pass and kind. A bundle written on request
    from a clean run (kind "clean") matches a clean run (`got` None)."""
    if want.get("kind") == "clean":
        return got is None
    if got is None or got.get("kind") != want.get("kind") or got.get("pass") != want.get("pass"):
        return False
    if not strict:
        return True
    keys = ("exception", "message") if want["kind"] == "crash" else ("op",)
    return all(got.get(k) == want.get(k) for k in keys)


def describe_signature(sig: Mapping[str, Any]) -> str:
    if sig.get("kind") == "clean":
        return f"the pipeline from {sig.get('pass')!r} runs clean"
    if sig.get("kind") == "crash":
        return f"pass {sig['pass']!r} raises {sig['exception']}: {sig['message']}"
    return f"pass {sig['pass']!r} miscompiles %{sig.get('value')} ({sig.get('op')})"


# --- writing -------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("fxforge", "torch", "numpy", "triton", "onnx"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Pass options as JSON: arrays by digest (stored in arrays.npz), tuples as lists."""
    if isinstance(value, np.ndarray):
        key = digest_of(np.ascontiguousarray(value))
        arrays[key] = np.ascontiguousarray(value)
        return {"$array": key}
    if isinstance(value, Mapping):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"pass option of type {type(value).__name__} cannot go into a bundle")


def _decode(value: Any, arrays: Mapping[str, np.ndarray], depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError("options nested deeper than 32")
    if isinstance(value, dict):
        if set(value) == {"$array"}:
            key = value["$array"]
            if not isinstance(key, str) or key not in arrays:
                raise ValueError(f"option array {key!r} is not in {ARRAYS}")
            return arrays[key]
        return {k: _decode(v, arrays, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays, depth + 1) for v in value]
    return value


@dataclass
class Bundle:
    graph: Graph
    pipeline: list[str]  # pass names, the failing pass first
    options: dict[str, dict[str, Any]]
    samples: list[list[np.ndarray]]
    signature: dict[str, Any]
    check_each: bool = False
    rtol: float = RTOL
    atol: float = ATOL
    versions: dict[str, str] = field(default_factory=dict)
    samples_from: str = "seeded random inputs (fxforge.debug.check.default_samples, seed 0)"
    path: Path | None = None


def write_bundle(bundle: Bundle, root: str | Path | None = None) -> Path:
    """Write `bundle` into a new folder under `root` (default: the temp dir); returns it."""
    base = Path(root) if root else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", str(bundle.signature.get("pass", "pass")))[:40]
    folder = Path(tempfile.mkdtemp(prefix=f"fxforge-repro-{stem}-", dir=base))
    writer = DumpWriter(folder, "")
    writer.write(0, "before", bundle.graph)
    if writer.off:
        raise OSError(f"could not write the bundle's IR into {folder}")
    arrays: dict[str, np.ndarray] = {}
    sample_keys = [[_encode(np.asarray(a), arrays)["$array"] for a in s] for s in bundle.samples]
    options = {k: _encode(dict(v), arrays) for k, v in bundle.options.items()}
    np.savez(folder / ARRAYS, **arrays)
    manifest = {"format": FORMAT, "version": VERSION,
                "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "pipeline": list(bundle.pipeline), "options": options, "samples": sample_keys,
                "samples_from": bundle.samples_from,
                "check_each": bool(bundle.check_each), "rtol": bundle.rtol, "atol": bundle.atol,
                "signature": dict(bundle.signature), "versions": bundle.versions or versions()}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    bundle.path = folder
    return folder


# --- reading -------------------------------------------------------------------------------------


def _field(manifest: Mapping, key: str, kind: type | tuple, where: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise PipelineError(f"{where}: field {key!r} is missing or not a {kind}")
    return value


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder written by `write_bundle`; PipelineError naming the file for
    anything malformed."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    try:
        raw = manifest_path.read_bytes()
    except OSError as e:
        raise PipelineError(f"cannot read the bundle {folder}: {e.strerror or e}") from e
    if len(raw) > _MAX_MANIFEST:
        raise PipelineError(f"{manifest_path} is larger than {_MAX_MANIFEST} bytes")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PipelineError(f"{manifest_path} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PipelineError(f"{manifest_path} is not an fxforge reproducer manifest")
    if manifest.get("version") != VERSION:
        raise PipelineError(f"{manifest_path}: bundle version {manifest.get('version')!r}, this "
                            f"fxforge reads version {VERSION}")
    pipeline = _field(manifest, "pipeline", list, manifest_path)
    if not pipeline or not all(isinstance(p, str) for p in pipeline):
        raise PipelineError(f"{manifest_path}: 'pipeline' must be a non-empty list of names")
    signature = _field(manifest, "signature", dict, manifest_path)
    if signature.get("kind") not in ("crash", "miscompile", "clean") or \
            not all(isinstance(v, (str, int, float, type(None))) for v in signature.values()):
        raise PipelineError(f"{manifest_path}: malformed 'signature'")
    arrays = _read_store(folder / ARRAYS) if (folder / ARRAYS).exists() else {}
    try:
        samples = [[arrays[k] for k in s] for s in _field(manifest, "samples", list,
                                                            manifest_path)]
        options = _decode(_field(manifest, "options", dict, manifest_path), arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{manifest_path}: samples or options reference arrays that "
                            f"{ARRAYS} lacks or are malformed ({e})") from e
    if not all(isinstance(v, dict) for v in options.values()):
        raise PipelineError(f"{manifest_path}: 'options' must map pass names to dicts")
    graph = load_dump(folder / GRAPH)
    if any(len(s) != len(graph.inputs) for s in samples):
        raise PipelineError(f"{manifest_path}: a sample does not have one array per graph input")
    return Bundle(graph, list(pipeline), options, samples, signature,
                  bool(manifest.get("check_each")), float(manifest.get("rtol", RTOL)),
                  float(manifest.get("atol", ATOL)), dict(manifest.get("versions") or {}),
                  str(manifest.get("samples_from", "")), folder)


# --- running -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    signature: dict[str, Any] | None  # None: the pipeline ran clean
    error: BaseException | None
    budget: Any = None  # the bisect Budget of the run, when one was kept


def resolve_pipeline(names: Sequence[str], user_passes: Mapping[str, Callable] | None
                     ) -> list[Any]:
    from fxforge.passes import registry

    entries = []
    for name in names:
        if name in registry.PASSES:
            entries.append(name)
        elif user_passes and name in user_passes:
            entries.append(user_passes[name])
        else:
            hint = (" (a user's pass: supply it, e.g. --pass NAME=module:function)"
                    if name.startswith("user:") else "")
            raise PipelineError(f"the bundle's pipeline names {name!r}, which is not a "
                                f"registered pass{hint}")
    return entries


def run_bundle(bundle: Bundle, graph: Graph | None = None, samples: list | None = None, *,
               pipeline: Sequence[Any] | None = None, bisect_limit: int | None = None,
               keep_budget: bool = False, user_passes: Mapping[str, Callable] | None = None
               ) -> Outcome:
    """Run the bundle's pipeline (or `pipeline`) on its graph (or `graph`, with `samples`),
    checked as the failure was, and say which failure happened."""
    from fxforge.debug import bisect
    from fxforge.pipeline import DebugOptions, PassManager

    entries = list(pipeline) if pipeline is not None else resolve_pipeline(bundle.pipeline,
                                                                           user_passes)
    debug = DebugOptions(check_each=bundle.check_each or bundle.signature["kind"] == "miscompile",
                         check_rtol=bundle.rtol, check_atol=bundle.atol, repro_dir="off")
    manager = PassManager(entries, debug, bundle.options)
    budget = bisect.Budget(bisect_limit) if keep_budget or bisect_limit is not None else None
    with bisect.active(budget):
        try:
            manager.run(graph if graph is not None else bundle.graph,
                        samples=samples if samples is not None else bundle.samples)
        except FxforgeError as e:
            failing = getattr(e, "pass_name", None) or _failed_pass(e)
            return Outcome(signature_of(e, failing), e, budget)
    return Outcome(None, None, budget)


def _failed_pass(error: BaseException) -> str:
    m = re.match(r"pass '([^']*)' failed", str(error))
    return m.group(1) if m else ""


@dataclass
class ReplayResult:
    reproduced: bool
    expected: dict[str, Any]
    got: dict[str, Any] | None
    error: BaseException | None

    def describe(self) -> str:
        want = describe_signature(self.expected)
        if self.reproduced:
            return f"reproduced: {want}"
        got = describe_signature(self.got) if self.got else "the pipeline ran clean"
        return f"did not reproduce: expected {want}; got {got}"


def replay(path: str | Path | Bundle, user_passes: Mapping[str, Callable] | None = None
           ) -> ReplayResult:
    """Rerun a bundle and say whether the same failure (strict signature) happens."""
    bundle = path if isinstance(path, Bundle) else load_bundle(path)
    outcome = run_bundle(bundle, user_passes=user_passes)
    return ReplayResult(matches(bundle.signature, outcome.signature), bundle.signature,
                        outcome.signature, outcome.error)


def bundle_before(compiled: Any, pass_name: str, root: str | Path | None = None,
                  samples: list | None = None) -> Path:
    """A bundle on request: the latest capture of `compiled` just before its pass `pass_name`,
    with the rest of its pipeline; the signature is what that run does under check_each (a
    crash, a miscompile, or "clean"), so `replay` tells whether a later fxforge still does it."""
    from fxforge.debug.check import default_samples
    from fxforge.errors import OptionError
    from fxforge.pipeline import DebugOptions, PassManager, pass_names

    entry = getattr(compiled, "_latest", None)
    if entry is None:
        raise OptionError("the model has not been compiled yet: call it once first")
    manager = compiled._manager
    names = list(pass_names(manager.names))
    if pass_name not in names:
        raise OptionError(f"no pass {pass_name!r} in the pipeline [{', '.join(names)}]")
    index = names.index(pass_name)
    quiet = DebugOptions(repro_dir="off")
    graph, _ = PassManager(manager.names[:index], quiet, manager.options).run(
        entry.captured.graph)
    options = {k: v for k, v in manager.options.items() if k in names[index:]}
    bundle = Bundle(graph, names[index:], options,
                    [list(s) for s in samples] if samples else default_samples(graph),
                    {"kind": "clean", "pass": pass_name}, check_each=True)
    outcome = run_bundle(bundle, pipeline=manager.names[index:])
    if outcome.signature is not None:
        bundle.signature = outcome.signature
    return write_bundle(bundle, root)
