"""Calibration for static int8 quantization: calibration samples in, activation ranges out.

`compile(..., calibration=data)` runs the float IR over every sample with torch; an
`ActivationStats` given as its `observe` hook keeps one `RangeObserver` per float value, and
`ActivationStats.ranges(method)` turns their statistics into `(lo, hi)` ranges, from which
`quant_math.qparams_from_range` makes scale and zero point (docs/quantized-ir.md).

Why a histogram rather than a buffer of samples: calibration streams. An observer's memory is a
fixed `2 * bins` counts plus a few scalars, whatever the number of batches, and every method
except minmax reads only the histogram.

Why the histogram grows by powers of two: its range is `[-R, R)` with `R` a power of two, the
smallest that holds max|x|. When a batch needs more room, `R` doubles (k times) and each group of
2**k neighbouring bins merges into one. Because bin widths are powers of two, both the binning
(`x * bins / R` is exact in floating point) and the merge are exact: the histogram after any
batching and any order of samples equals the histogram of all data at once, so calibration does
not depend on the DataLoader's batch size (PyTorch's HistogramObserver re-bins by interpolation
instead, which blurs a little more on every growth). The price: up to half of the bins may lie
beyond max|x|.

Why 2048 bins per sign (the default): TensorRT's entropy calibrator uses 2048 bins. With the
growth above, the data's side with the larger magnitude spans at least 1024 of them, so a bin is
at most max|x| / 1024 wide: 8x finer than the step of a symmetric int8 range (2 max|x| / 255)
and 4x finer than that of a one-sided one, so the histogram's own rounding is a small fraction of
the int8 step for every method, and the entropy search (TensorRT starts at 128 bins for 128
levels) always has at least one bin per quantization level. Cost: 32 KiB per activation.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fxforge.errors import CalibrationError

__all__ = ["METHODS", "ActivationStats", "ChannelStats", "RangeObserver", "check_method",
           "check_sample_shapes", "iter_samples"]

METHODS = ("minmax", "percentile", "entropy", "mse")

_E_MIN, _E_MAX = -100, 1023  # R = 2**e; below 2**-100 every activation is zero for int8
_CHUNK = 1 << 24  # torch.histogram counts in the input's float dtype: exact below 2**24


# --- samples ---


def iter_samples(data: Any, n_inputs: int | None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Calibration data as a stream of input tuples, checked one sample at a time.

    An item of `data` is a tensor (a model with one input) or a tuple / list of tensors, one per
    model input (a DataLoader over TensorDataset(x) yields [x]); numpy arrays become tensors.
    `n_inputs=None` leaves the number of inputs unchecked. A non-iterable `data` fails here, at
    once; a bad item fails when the stream reaches it, naming its index (the data is never held
    in memory as a whole), and a stream that ends with no sample fails at its end.
    """
    if isinstance(data, (torch.Tensor, np.ndarray)):
        raise CalibrationError(
            f"calibration data is a single {type(data).__name__} of shape {tuple(data.shape)}; "
            "pass an iterable of samples, e.g. calibration=[x] for one batch, or a DataLoader")
    try:
        items = iter(data)
    except TypeError:
        raise CalibrationError(
            f"calibration data must be an iterable of samples (tensors or tuples of tensors, a "
            f"DataLoader works); got {type(data).__name__}") from None
    return _samples(items, n_inputs, type(data).__name__)


def _samples(items: Iterator, n_inputs: int | None, kind: str) -> Iterator[tuple]:
    count = 0
    for index in itertools.count():
        try:
            item = next(items)
        except StopIteration:
            break
        except Exception as e:  # the user's loader failed: say so, typed, naming the sample
            raise CalibrationError(f"calibration data ({kind}) raised {type(e).__name__} while "
                                   f"producing sample {index}: {e}") from e
        yield _as_sample(item, index, n_inputs)
        count += 1
    if count == 0:
        raise CalibrationError(f"calibration data is empty: the {kind} yielded no sample")


def _as_sample(item: Any, index: int, n_inputs: int | None) -> tuple[torch.Tensor, ...]:
    if isinstance(item, (torch.Tensor, np.ndarray)):
        parts: Sequence = (item,)
    elif isinstance(item, (tuple, list)):
        parts = item
    else:
        hint = (" (a dict batch: pass its tensors in the model's input order)"
                if isinstance(item, dict) else "")
        raise CalibrationError(f"calibration sample {index} is a {type(item).__name__}; expected "
                               f"a tensor or a tuple/list of tensors{hint}")
    if n_inputs is not None and len(parts) != n_inputs:
        hint = (" A DataLoader yielding (inputs, labels) must be given the inputs only, e.g. "
                "calibration=(x for x, _ in loader)." if len(parts) > n_inputs else "")
        raise CalibrationError(f"calibration sample {index} has {len(parts)} input(s); the model "
                               f"takes {n_inputs}.{hint}")
    sample = []
    for j, part in enumerate(parts):
        where = f"calibration sample {index}, input {j}"
        if isinstance(part, np.ndarray):
            try:
                part = torch.from_numpy(part)
            except TypeError as e:
                raise CalibrationError(f"{where}: numpy array of dtype {part.dtype} cannot become "
                                       f"a tensor ({e})") from None
        if not isinstance(part, torch.Tensor):
            raise CalibrationError(f"{where} is a {type(part).__name__}; expected a tensor")
        if part.is_floating_point() or part.is_complex():
            bad = ~torch.isfinite(part)
            if bool(bad.any()):
                n_nan = int(torch.isnan(part).sum())
                raise CalibrationError(f"{where} has {n_nan} NaN and {int(bad.sum()) - n_nan} "
                                       f"infinite value(s) among {part.numel()}")
        sample.append(part)
    return tuple(sample)


def check_sample_shapes(sample: Sequence[torch.Tensor], expected_shapes: Sequence[Sequence[int]],
                        index: int) -> None:
    """Raise unless every input of `sample` has exactly the expected shape (the compiled graph's
    shapes are static)."""
    if len(sample) != len(expected_shapes):
        raise CalibrationError(f"calibration sample {index} has {len(sample)} input(s); the "
                               f"model takes {len(expected_shapes)}")
    for j, (t, shape) in enumerate(zip(sample, expected_shapes)):
        got, want = tuple(t.shape), tuple(int(d) for d in shape)
        if got != want:
            hint = ""
            if len(got) == len(want) and got[1:] == want[1:]:
                hint = (" (only the batch size differs: a DataLoader's short last batch? "
                        "use drop_last=True)")
            raise CalibrationError(f"calibration sample {index}, input {j}: shape {got} does not "
                                   f"match the compiled shape {want}{hint}")


def check_method(method: str, percentile: float = 99.99) -> None:
    """Fail early, before any sample runs, on an unknown method or a percentile outside (0, 100].
    """
    if method not in METHODS:
        raise CalibrationError(f"calibration_method={method!r}; choose one of {', '.join(METHODS)}")
    ok = isinstance(percentile, numbers.Real) and not isinstance(percentile, bool)
    if not (ok and 0 < percentile <= 100):
        raise CalibrationError(f"percentile={percentile!r} must be a number in (0, 100]")


# --- one activation ---


class RangeObserver:
    """Streaming statistics of one activation: exact running min / max, count of exact zeros,
    count of non-finite values (left out of everything else), and a histogram of `2 * bins`
    counts over [-R, R) that grows by exact merging (see the module docstring).

    Bin k of `counts` covers [(k - bins) * w, (k - bins + 1) * w) with w = R / bins: the first
    `bins` hold negative values, the rest non-negative ones. `bins` must be a power of two (for
    exact binning and merging) and at least 256 (the entropy search needs 128 bins per sign).
    """

    def __init__(self, bins: int = 2048):
        if not (isinstance(bins, int) and bins >= 256 and bins & (bins - 1) == 0):
            raise CalibrationError(f"bins={bins!r} must be a power of two >= 256")
        self.bins = bins
        self.exponent = _E_MIN  # R = 2.0 ** exponent
        self.counts = torch.zeros(2 * bins, dtype=torch.int64)
        self.min = math.inf
        self.max = -math.inf
        self.n = 0  # finite values seen
        self.zeros = 0
        self.nonfinite = 0
        self.updates = 0

    @property
    def radius(self) -> float:
        return math.ldexp(1.0, self.exponent)

    def update(self, x: torch.Tensor) -> None:
        self.updates += 1
        x = x.detach().reshape(-1)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        if x.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):  # aminmax propagates NaN
            finite = torch.isfinite(x)
            self.nonfinite += int(x.numel() - finite.sum())
            x = x[finite]
            if x.numel() == 0:
                return
            lo, hi = (float(v) for v in torch.aminmax(x))
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.n += x.numel()
        self.zeros += x.numel() - int(torch.count_nonzero(x))
        self._grow(max(-lo, hi))
        self.counts = self.counts.to(x.device)
        self.counts += self._histogram(x)

    def _grow(self, amax: float) -> None:
        """Make R >= amax: double R as often as needed, merging neighbouring bins."""
        if amax <= self.radius:
            return
        mantissa, e = math.frexp(amax)  # amax = mantissa * 2**e, mantissa in [0.5, 1)
        e = min(e - 1 if mantissa == 0.5 else e, _E_MAX)
        shift = min(e - self.exponent, int(math.log2(self.bins)) + 1)  # beyond: all in 2 bins
        self.exponent = e
        if shift <= 0:
            return
        b = self.bins
        old = torch.arange(2 * b, device=self.counts.device)
        new = torch.div(old - b, 1 << shift, rounding_mode="floor") + b  # exact: ints
        self.counts = torch.zeros_like(self.counts).index_add_(0, new, self.counts)

    def _histogram(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        if r >= 2.0 ** 128 and x.dtype == torch.float32:  # R itself would overflow float32
            x = x.double()
        if self.exponent == _E_MAX:  # R was capped: fold what lies beyond into the end bins
            x = x.clamp(-r, r)
        if x.device.type == "cpu":
            return _histogram_cpu(x, self.bins, r)
        return _histogram_bincount(x, self.bins, r)

    # --- ranges ---

    def range(self, method: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
        """The clipping range `(lo, hi)` by `method`; always finite with lo <= 0 <= hi, inside
        the observed [min, max] widened to 0. Only zeros seen: (0.0, 0.0)."""
        check_method(method, percentile)
        if self.n == 0:
            why = (f"all {self.nonfinite} values were NaN or infinite" if self.nonfinite
                   else "no value" if self.updates == 0 else "only empty tensors")
            raise CalibrationError(f"cannot calibrate an activation that saw {why}")
        mn, mx = min(self.min, 0.0), max(self.max, 0.0)
        if mn == mx:
            return 0.0, 0.0
        if method == "minmax":
            return mn, mx
        counts = self.counts.cpu().numpy().astype(np.float64)
        w = self.radius / self.bins
        # Everything below works in units of one bin (w), where numbers stay small.
        if method == "percentile":
            lo, hi = _percentile(counts, self.bins, min(percentile, 100 - percentile) / 100,
                                 max(percentile, 100 - percentile) / 100, mn / w, mx / w)
        elif method == "entropy":
            lo, hi = _entropy(counts, self.bins, mn / w, mx / w, self.zeros)
        else:
            lo, hi = _mse(counts, self.bins, mn / w, mx / w, self.zeros)
        lo = min(max(float(lo) * w, mn), 0.0) + 0.0  # + 0.0: no -0.0
        hi = max(min(float(hi) * w, mx), 0.0)
        if lo == hi:  # e.g. the 99.99th percentile of a mostly-zero tensor: keep a real range
            return mn, mx
        return lo, hi


def _histogram_cpu(x: torch.Tensor, b: int, r: float) -> torch.Tensor:
    """2b bins over [-r, r]. torch.histogram (unlike histc, which rounds x - min) checks each
    value against the exact power-of-two edges; it counts in x's dtype, exact below 2**24."""
    total = torch.zeros(2 * b, dtype=torch.int64)
    for chunk in x.split(_CHUNK):
        total += torch.histogram(chunk, bins=2 * b, range=(-r, r)).hist.to(torch.int64)
    return total


def _histogram_bincount(x: torch.Tensor, b: int, r: float) -> torch.Tensor:
    """The same bins on any device (torch.histogram is CPU-only): x * b / r is exact."""
    idx = torch.floor(x * (b / r)).clamp_(-b, b - 1).to(torch.int64) + b
    return torch.bincount(idx, minlength=2 * b)


def _percentile(counts: np.ndarray, b: int, f_lo: float, f_hi: float, mn: float, mx: float
                ) -> tuple[float, float]:
    """Quantiles of the histogram, linear within a bin (values spread evenly inside it)."""
    cum = np.cumsum(counts)

    def quantile(f: float) -> float:
        if f <= 0:
            return mn
        if f >= 1:
            return mx
        target = f * cum[-1]
        k = int(np.searchsorted(cum, target, side="left"))  # cum[k-1] < target <= cum[k]
        before = cum[k - 1] if k else 0.0
        return (k - b) + (target - before) / counts[k]

    return quantile(f_lo), quantile(f_hi)


def _entropy(counts: np.ndarray, b: int, mn: float, mx: float, zeros: int
             ) -> tuple[float, float]:
    """TensorRT's KL-divergence calibration ("8-bit Inference with TensorRT", Migacz 2017) on
    the histogram h of |x|, all candidates at once.

    For a threshold of i bins (i from 128 up, as TensorRT): P = h[:i] with the outliers h[i:]
    folded into its last bin (the distribution after clipping); Q = h[:i] *without* the outliers,
    merged into n groups (the quantization levels) and spread back evenly over the bins of each
    group where P is nonzero. KL(P || Q), both normalized, weighs clipping (the folded outliers
    are missing from Q) against rounding (the merge); the smallest KL wins, and the threshold
    applies to both signs, clipped by the observed min / max. Details:
    - Groups are i / n bins wide, rounded per group (like pytorch-quantization), not TensorRT's
      i // n with the remainder all in the last group, whose flat tail level at i just below 2n
      misreads a heavy tail as cheap to round.
    - Where Q = 0 but P > 0 (a last group empty but for the folded outliers, e.g. a threshold in
      the gap between the bulk and far outliers) Q gets 1e-4 counts, as TensorRT's and MXNet's
      smoothing gives it; skipping such thresholds would forbid clipping across any gap.
    - Exact zeros are left out: int8 represents 0 exactly whatever the threshold, and the spike
      of a ReLU output's zeros, averaged with its neighbours in Q, would otherwise dominate the
      KL of every threshold with more than one bin per level at 0 and force a needless clip.
    - Thresholds that clip more than half of the (nonzero) data are skipped. There P is mostly
      the folded outliers, and KL compares two spikes: for data away from 0 (say |x| in [1, 2])
      a threshold keeping one bin makes P and Q the same single spike, KL = 0, and TensorRT's
      argmin would clip everything to the smallest value.
    - Written in closed form over groups (Q is constant on a group): no per-candidate loop.

    Levels: TensorRT's symmetric int8 has 128 levels on [0, t]. Our int8 is asymmetric: its 256
    codes spread over the final range [max(-t, min), min(t, max)], so [0, t] gets
    n = 256 * t / (hi - lo) of them: 128 for a symmetric range, 256 for a one-sided one such as a
    ReLU output (all codes on one side, twice the resolution; pytorch-quantization also uses 256
    for unsigned), in between for a lopsided one. KL with the levels the quantizer will really
    have does not clip harder than the rounding calls for.
    """
    eps = 1e-4
    h = counts[b:].copy()
    h[:b] += counts[b - 1 :: -1]  # |x|: negative bin b-1-j mirrors to j
    h[0] -= zeros  # exact zeros: see the docstring
    total = h.sum()
    last = int(np.flatnonzero(h)[-1])
    i = np.arange(128, last + 2)  # candidates: number of bins kept
    t = i.astype(np.float64)
    span = np.minimum(t, mx) - np.maximum(-t, mn)
    n = np.clip(np.rint(256 * t / span), 128, 256).astype(np.int64)
    i, n = i[n <= i], n[n <= i]
    if i.size == 0:
        return -max(-mn, mx), max(-mn, mx)

    cum_h = np.concatenate([[0.0], np.cumsum(h)])
    cum_nz = np.concatenate([[0], np.cumsum(h > 0)])
    hlogh = h * np.log(np.where(h > 0, h, 1.0))
    cum_hlogh = np.concatenate([[0.0], np.cumsum(hlogh)])

    g = np.arange(257)
    edges = np.minimum(g[None, :], n[:, None]) * i[:, None] // n[:, None]  # group g: [e_g, e_g+1)
    s = cum_h[edges[:, 1:]] - cum_h[edges[:, :-1]]  # Q's mass per group (no outliers)
    nz = (cum_nz[edges[:, 1:]] - cum_nz[edges[:, :-1]]).astype(np.float64)
    outliers = total - cum_h[i]
    p_last = h[i - 1] + outliers
    is_last = g[None, :-1] == (n - 1)[:, None]
    nz += is_last * ((h[i - 1] == 0) & (outliers > 0))[:, None]  # P's last bin became nonzero
    mass = s + is_last * outliers[:, None]  # P's mass per group
    smoothed = (s == 0) & (mass > 0)  # then P > 0 only in bin i-1, and Q there is eps
    log_q = np.log(np.where(s > 0, s, eps) / np.maximum(nz, 1.0))
    plogp = cum_hlogh[i - 1] + p_last * np.log(p_last)  # p_last > 0: h[last] is in bin <= i-1
    plogq = np.where(mass > 0, mass * log_q, 0.0).sum(axis=1)
    q_total = total - outliers + eps * smoothed.any(axis=1)
    with np.errstate(divide="ignore"):
        kl = (plogp - plogq) / total + np.log(q_total / total)
    kl[2 * outliers > total] = np.inf  # clips most of the data: see the docstring
    best = int(np.argmin(kl))
    threshold = float(i[best]) if np.isfinite(kl[best]) else max(-mn, mx)
    return -threshold, threshold


def _mse(counts: np.ndarray, b: int, mn: float, mx: float, zeros: int) -> tuple[float, float]:
    """The range minimizing the expected squared error of quantize-dequantize, estimated from
    the histogram, over a grid of bin edges on each side (up to 512 per side, always including
    the observed min / max): values above hi (below lo) cost (x - hi)**2 each (clipping, x the
    bin's centre), values inside cost step**2 / 12 each (uniform rounding error, step =
    (hi - lo) / 255) except exact zeros, which int8 represents exactly. Prefix sums of count,
    count * x and count * x**2 make each (lo, hi) pair O(1)."""
    x = np.clip(np.arange(2 * b) - b + 0.5, mn, mx)  # bin centres inside the observed range

    def side(values: np.ndarray, c: np.ndarray, end: float) -> tuple[np.ndarray, ...]:
        """Candidates on one side (|edge| from 1 bin to |end|) and, for each, the count and the
        squared clipping error of the values beyond it (`values`, `c`: that side, from 0 out)."""
        if end == 0:
            return np.zeros(1), np.zeros(1), np.zeros(1)
        last = math.ceil(end)
        j = np.unique(np.append(np.arange(1, last, -(-last // 512)), last))
        edge = np.minimum(j, end)
        tail = lambda a: np.concatenate([np.cumsum(a[::-1])[::-1], [0.0]])[j]  # noqa: E731
        n_out, s1, s2 = tail(c), tail(c * values), tail(c * values ** 2)
        return edge, n_out, s2 - 2 * edge * s1 + edge ** 2 * n_out

    hi, n_hi, e_hi = side(x[b:], counts[b:], mx)
    lo, n_lo, e_lo = side(-x[b - 1 :: -1], counts[b - 1 :: -1], -mn)
    inside = counts.sum() - zeros - n_lo[:, None] - n_hi[None, :]
    step = (hi[None, :] + lo[:, None]) / 255
    err = step ** 2 / 12 * inside + e_lo[:, None] + e_hi[None, :]
    k_lo, k_hi = np.unravel_index(int(np.argmin(err)), err.shape)
    return -float(lo[k_lo]), float(hi[k_hi])


# --- all activations of a graph ---


class ActivationStats:
    """The `observe(name, tensor)` hook of a calibration run: keeps a `RangeObserver` for each
    tracked value name and ignores other names and non-floating tensors."""

    def __init__(self, names: Iterable[str], bins: int = 2048):
        self.observers = {name: RangeObserver(bins) for name in names}
        self.unranged: dict[str, str] = {}  # filled by ranges(): value -> why it has no range

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        observer = self.observers.get(name)
        if observer is not None and isinstance(tensor, torch.Tensor) \
                and tensor.is_floating_point():
            observer.update(tensor)

    @property
    def count(self) -> int:
        """Samples seen: each run of the graph observes each tracked value once."""
        return max((o.updates for o in self.observers.values()), default=0)

    def ranges(self, method: str = "minmax", percentile: float = 99.99
               ) -> dict[str, tuple[float, float]]:
        """`(lo, hi)` per tracked value. A value whose samples held no finite number (only NaN /
        inf, or empty tensors) has no range: it is left out and listed in `self.unranged`, to
        stay float. A tracked value never observed at all is an error."""
        check_method(method, percentile)
        never = [name for name, o in self.observers.items() if o.updates == 0]
        if never:
            shown = ", ".join(never[:5]) + (f" and {len(never) - 5} more" if len(never) > 5
                                               else "")
            raise CalibrationError(f"no calibration sample produced a floating-point value for "
                                   f"{shown} ({self.count} sample(s) seen)")
        self.unranged = {}
        out = {}
        for name, observer in self.observers.items():
            try:
                out[name] = observer.range(method, percentile)
            except CalibrationError as e:
                self.unranged[name] = str(e)
        return out


class ChannelStats:
    """An `observe` hook for SmoothQuant (passes/smooth.py): min and max per channel of the last
    dim of the named values, and a sample of up to `rows` of their rows, kept in two folds (the
    value's even and odd observations, i.e. alternate calibration samples).

    Why folds: `smooth="auto"` judges a scaling by its int8 error on rows the scaling was not
    fitted to. Per-channel maxima from a few samples are noisy, and a strong smoothing that
    flattens every channel to its calibrated maximum leaves no headroom for new data: fitted and
    judged on the same rows it always looks best, and on held-out data it can be worse than none.
    Memory: four floats per channel plus the rows."""

    def __init__(self, names: Iterable[str], rows: int = 512):
        self.names = frozenset(names)
        self.rows = rows
        self._seen: dict[str, int] = {}
        self._folds: dict[str, list[list]] = {}  # name -> per fold [lo, hi, [row arrays]]

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.names or tensor.numel() == 0 or tensor.ndim == 0:
            return
        x = tensor.detach().reshape(-1, tensor.shape[-1])
        lo, hi = x.amin(0).double().cpu().numpy(), x.amax(0).double().cpu().numpy()
        index = self._seen.get(name, 0)
        self._seen[name] = index + 1
        fold = self._folds.setdefault(name, [[None, None, []], [None, None, []]])[index % 2]
        if fold[0] is not None:
            lo, hi = np.fmin(fold[0], lo), np.fmax(fold[1], hi)
        fold[0], fold[1] = lo, hi
        room = min(self.rows // 2 - sum(len(r) for r in fold[2]), max(1, self.rows // 8), len(x))
        if room > 0:
            picked = torch.linspace(0, len(x) - 1, room).round().long()
            fold[2].append(x[picked].float().cpu().numpy())

    def folds(self, name: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(lo, hi, sampled rows) of each fold that saw data."""
        return [(lo, hi, np.concatenate(rows)) for lo, hi, rows in self._folds.get(name, ())
                if lo is not None and rows]

    def range(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel (min, max) over all observations."""
        folds = self.folds(name)
        if not folds:
            return None
        return (np.fmin.reduce([f[0] for f in folds]), np.fmax.reduce([f[1] for f in folds]))
