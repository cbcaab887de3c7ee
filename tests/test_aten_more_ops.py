"""aten ops of exported vision and text models that pick or pool by value: topk, sort, argsort,
argmax/argmin, max/min along a dim (and over everything), amin, and EmbeddingBag. Each must compile
to IR ops with no opaque fallback and agree with eager torch on the `reference` and `cpu` targets
(`compiled_matches`: floats at fp32 tolerance, indices exactly); on the cuda targets they have no
Triton kernel and run on the torch backend, as cumsum and index do.

topk and the arg-reductions get inputs without ties (a shuffled range) where torch leaves the
order of equal values open; where torch promises an order (argmax's first position, a stable sort)
the inputs have ties on purpose.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from eager_match import compiled_matches

import fxforge
from fxforge.errors import ExecutionError

TARGETS = ["reference", "cpu"]


def _ops(compiled: fxforge.CompiledModel) -> set[str]:
    return {n.op for n in compiled.graph.nodes}


def _distinct(*shape: int, seed: int = 0) -> torch.Tensor:
    """A shuffled range, centred and scaled by 1/4: distinct values, exact in float32."""
    gen = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    return ((torch.randperm(n, generator=gen) - n // 2) * 0.25).reshape(shape)


# --- topk, sort, argsort ------------------------------------------------------------------------


class TopK(nn.Module):
    """A classifier's top-5, the two smallest along dim 0, and the scores gathered back."""

    def forward(self, scores):
        values, indices = torch.topk(scores, 5)
        low, low_at = torch.topk(scores * 2 + 0.5, 2, dim=0, largest=False)
        return values, indices, low, low_at, scores.gather(1, indices)


class Detections(nn.Module):
    """A detection head: each box's best class (max over classes), the top 3 boxes by that score,
    and their boxes picked with an index op."""

    def forward(self, class_scores, boxes):
        confidence, label = class_scores.max(dim=-1)
        best, order = confidence.topk(3, dim=1)
        batch = torch.arange(boxes.shape[0])[:, None]
        return best, label.gather(1, order), boxes[batch, order]


class TopKUnsorted(nn.Module):
    """sorted=False leaves the order to torch; whatever order comes, sorting it is the same."""

    def forward(self, x):
        values, indices = torch.topk(x, 3, dim=-1, sorted=False)
        return values.sort(dim=-1).values, indices.sort(dim=-1).values


class Sorts(nn.Module):
    def forward(self, x, ids):
        down, down_at = torch.sort(x, dim=1, descending=True)
        stable, stable_at = torch.sort(ids, stable=True)  # ties keep index order: exact
        back, back_at = torch.sort(ids, dim=0, descending=True, stable=True)
        return (down, down_at, torch.argsort(x, dim=0), stable, stable_at, back, back_at,
                torch.argsort(ids, descending=True, stable=True))


@pytest.mark.parametrize("target", TARGETS)
def test_topk_classifier_scores(target):
    compiled = compiled_matches(TopK(), (_distinct(4, 10),), target)
    assert "topk" in _ops(compiled)


@pytest.mark.parametrize("target", TARGETS)
def test_topk_of_the_best_class_per_box(target):
    inputs = (_distinct(2, 6, 4, seed=1), torch.randn(2, 6, 4))
    compiled = compiled_matches(Detections(), inputs, target)
    assert {"topk", "amax", "argmax", "index"} <= _ops(compiled)


@pytest.mark.parametrize("target", TARGETS)
def test_topk_unsorted_holds_the_same_elements(target):
    compiled_matches(TopKUnsorted(), (_distinct(3, 50, seed=2),), target)


@pytest.mark.parametrize("target", TARGETS)
def test_sort_and_argsort(target):
    ids = torch.randint(0, 4, (5, 9), generator=torch.Generator().manual_seed(3))
    compiled = compiled_matches(Sorts(), (_distinct(3, 6, seed=4), ids), target)
    assert _ops(compiled) >= {"topk"} and "torch_op" not in _ops(compiled)


# --- argmax / argmin, max / min -----------------------------------------------------------------


class ArgExtremes(nn.Module):
    def forward(self, logits, ids):
        return (logits.argmax(-1), logits.argmin(dim=1, keepdim=True), logits.argmax(),
                logits.argmin(keepdim=True), ids.argmax(dim=0), ids.argmin(1))


class Extremes(nn.Module):
    """torch.max/min along a dim (values and indices), over everything, amin, and max.dim of a
    bool mask (searched as u8)."""

    def forward(self, x, ids, mask):
        top, top_at = torch.max(x, 1)
        low, low_at = torch.min(ids, 0, keepdim=True)
        any_true, first_true = mask.max(dim=-1)
        return (top, top_at, low, low_at, x.amin(dim=(1, 2)), ids.amin(-1, keepdim=True),
                x.max(), ids.min(), any_true, first_true)


@pytest.mark.parametrize("target", TARGETS)
def test_argmax_argmin(target):
    ids = torch.randint(0, 3, (4, 7), generator=torch.Generator().manual_seed(5))  # ties: first
    compiled = compiled_matches(ArgExtremes(), (_distinct(3, 8, seed=6), ids), target)
    assert {"argmax", "argmin"} <= _ops(compiled)


@pytest.mark.parametrize("target", TARGETS)
def test_max_min_along_dims_and_overall(target):
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(-3, 3, (5, 6), generator=gen)
    mask = torch.rand((3, 5), generator=gen) < 0.3
    compiled = compiled_matches(Extremes(), (_distinct(2, 4, 3, seed=8), ids, mask), target)
    assert {"amax", "amin", "argmax", "argmin"} <= _ops(compiled)


# --- EmbeddingBag -------------------------------------------------------------------------------


class TextClassifier(nn.Module):
    """torchtext's text classification model: one bag of token embeddings per text, a linear."""

    def __init__(self, mode: str, **bag_options):
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 8, mode=mode, **bag_options)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens, offsets):
        return self.fc(self.bag(tokens, offsets))


_TOKENS = torch.tensor([3, 7, 7, 1, 0, 19, 4, 4, 2, 11])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_with_offsets(mode, target):
    """Offsets are an input: the same compiled model takes other bag boundaries, empty bags
    (zeros, as torch) included."""
    model = TextClassifier(mode)
    compiled = compiled_matches(model, (_TOKENS, torch.tensor([0, 4, 7])), target)
    assert "embedding_bag" in _ops(compiled)
    offsets = torch.tensor([0, 0, 10])  # an empty first and last bag
    torch.testing.assert_close(compiled(_TOKENS, offsets), model(_TOKENS, offsets))


class BagVariants(nn.Module):
    """2-D input (bags of a fixed size), per-sample weights, include_last_offset and padding_idx,
    as nn.EmbeddingBag and F.embedding_bag take them."""

    def __init__(self):
        super().__init__()
        self.sum = nn.EmbeddingBag(12, 4, mode="sum", include_last_offset=True)
        self.mean = nn.EmbeddingBag(12, 4, mode="mean", padding_idx=0)
        self.max = nn.EmbeddingBag(12, 4, mode="max", padding_idx=0)

    def forward(self, grid, tokens, offsets, weights):
        ends = torch.cat([offsets, torch.tensor([tokens.shape[0]])])
        return (self.sum(tokens, ends, per_sample_weights=weights), self.mean(grid),
                self.max(tokens, offsets), self.mean(tokens, offsets),
                F.embedding_bag(grid, self.sum.weight, mode="sum",
                                per_sample_weights=torch.ones(grid.shape) * 0.5),
                torch.embedding_bag(self.mean.weight, tokens, offsets, False, 1)[0])


@pytest.mark.parametrize("target", TARGETS)
def test_embedding_bag_variants(target):
    grid = torch.tensor([[1, 0, 3], [0, 0, 0], [5, 5, 11]])  # the middle bag is all padding
    tokens = torch.tensor([0, 4, 0, 9, 9, 2, 0])
    inputs = (grid, tokens, torch.tensor([0, 3, 3, 5]), torch.randn(7))
    compiled = compiled_matches(BagVariants(), inputs, target)
    assert [n.op for n in compiled.graph.nodes].count("embedding_bag") == 6


class BagWithItsAuxiliaryOutputs(nn.Module):
    def forward(self, weight, tokens, offsets):
        out, _, bag_size, _ = torch.embedding_bag(weight, tokens, offsets, False, 1)
        return out, bag_size


def test_embedding_bag_whose_auxiliary_outputs_are_read_stays_on_torch():
    """Only the bag results have an IR op: reading bag_size keeps the op on torch (a listed
    fallback), with torch's values, not zeros or garbage."""
    inputs = (torch.randn(10, 3), torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 2, 2]))
    compiled = fxforge.compile(BagWithItsAuxiliaryOutputs(), "reference", example_inputs=inputs)
    (fallback,) = compiled.report.fallbacks
    assert fallback.aten == "aten.embedding_bag.default" and "bag_size" in fallback.reason
    for got, want in zip(compiled(*inputs), BagWithItsAuxiliaryOutputs()(*inputs)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("offsets, tokens", [
    ([1, 3], [1, 2, 3]),  # torch: offsets[0] has to be 0
    ([0, 4], [1, 2, 3]),  # past the end of the tokens
    ([0, 1], [1, 2, 20]),  # a row the 20-row weight does not have
], ids=["first-not-0", "past-the-end", "index-out-of-range"])
def test_embedding_bag_reference_refuses_what_torch_refuses(offsets, tokens):
    model = TextClassifier("sum")
    example = (torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    compiled = fxforge.compile(model, "reference", example_inputs=example)
    bad = (torch.tensor(tokens), torch.tensor(offsets))
    with pytest.raises((RuntimeError, IndexError)):
        model(*bad)
    with pytest.raises(ExecutionError, match="embedding_bag"):
        compiled(*bad)


# --- cuda targets: no Triton kernel, the torch backend runs them --------------------------------


def test_cuda_target_runs_them_on_the_torch_backend():
    """As cumsum and index: the report names each node's reason, and the results are eager's.
    (On Triton's CPU interpreter here; real kernels around them on a GPU.)"""
    from fxforge.kernels.triton import jit

    if not (jit.interpreting() or torch.cuda.is_available()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    model = TextClassifier("mean")
    compiled = compiled_matches(model, (_TOKENS, torch.tensor([0, 4, 7])), "cuda")
    detections = compiled_matches(Detections(), (_distinct(2, 6, 4), torch.randn(2, 6, 4)),
                                  "cuda")
    kernels = [*compiled.report.latest.kernels, *detections.report.latest.kernels]
    reasons = {k.op: (k.kernel, k.reason) for k in kernels}
    for op in ("embedding_bag", "topk", "argmax"):
        assert reasons[op] == (None, "no Triton kernel for this op"), reasons
