"""The bench zoo: which models, at which size, with which inputs and batch sizes.

Two sizes of every model: the full one that `fxforge bench` runs by default, and a tiny one for
`--quick` (smoke runs, the test). Real architectures come from `transformers` model classes
built from a config (random weights, nothing downloaded); the rest from `fxforge.zoo`. Each
factory is deterministic (seed 0, the caller's RNG untouched) and returns an eval-mode module
whose output is a tensor or a tuple of tensors (transformers' ModelOutput is unwrapped to the
fields named in the spec), so every system is compared on the same computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from fxforge import zoo
from fxforge.optional import require


@dataclass(frozen=True)
class BenchModel:
    name: str
    description: str
    source: str
    build: Callable[[int], tuple[nn.Module, tuple]]  # batch -> (module, example inputs)
    batches: tuple[int, ...]  # default batch sizes on CPU
    gpu_batches: tuple[int, ...]  # default batch sizes on CUDA
    reference_ok: bool = False  # the numpy reference interpreter finishes in a few seconds
    accuracy: bool = False  # held-out accuracy is measured (digits)
    notes: str = ""
    # example inputs -> calibration batches (int8 systems)
    calibration: Callable[[tuple], list[tuple]] | None = field(default=None, repr=False)


class Outputs(nn.Module):
    """Unwrap a transformers ModelOutput into a tuple of named tensor fields."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, x):
        out = self.model(x)
        values = tuple(getattr(out, k) for k in self.keys)
        return values[0] if len(values) == 1 else values


def _seeded(fn: Callable[[int], tuple[nn.Module, tuple]]) -> Callable[[int], tuple]:
    def build(batch: int) -> tuple[nn.Module, tuple]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model, inputs = fn(batch)
        return model.eval(), inputs

    return build


def _images(batch: int, size: int) -> tuple:
    return (torch.randn(batch, 3, size, size),)


# --- full-size factories (transformers classes, random weights from a config) -----------------


def _hf_resnet(depths: list[int], layer_type: str, size: int) -> Callable[[int], tuple]:
    def build(batch: int):
        hf = require("transformers", "the bench model zoo")
        hidden = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
        config = hf.ResNetConfig(depths=depths, layer_type=layer_type, hidden_sizes=hidden)
        return Outputs(hf.ResNetModel(config), ("pooler_output",)), _images(batch, size)

    return build


def _hf_mobilenetv2(size: int) -> Callable[[int], tuple]:
    def build(batch: int):
        hf = require("transformers", "the bench model zoo")
        config = hf.MobileNetV2Config(image_size=size)
        return Outputs(hf.MobileNetV2Model(config), ("pooler_output",)), _images(batch, size)

    return build


def _hf_vit(hidden: int, layers: int, heads: int, size: int, patch: int) -> Callable:
    def build(batch: int):
        hf = require("transformers", "the bench model zoo")
        config = hf.ViTConfig(hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=4 * hidden,
                              image_size=size, patch_size=patch)
        model = hf.ViTModel(config, add_pooling_layer=False)
        return Outputs(model, ("last_hidden_state",)), _images(batch, size)

    return build


def _hf_bert(hidden: int, layers: int, heads: int, seq: int, vocab: int = 30522) -> Callable:
    def build(batch: int):
        hf = require("transformers", "the bench model zoo")
        config = hf.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=4 * hidden,
                               max_position_embeddings=max(512, seq))
        ids = torch.randint(0, vocab, (batch, seq))
        return Outputs(hf.BertModel(config), ("last_hidden_state", "pooler_output")), (ids,)

    return build


def _zoo(name: str) -> Callable[[int], tuple]:
    return lambda batch: zoo.build(name, batch)


def _calibrate_random(example: tuple, samples: int = 4) -> list[tuple]:
    """Calibration inputs for int8: fresh random inputs like the example (another seed):
    normal floats, integers (token ids) in the example's range."""
    batch = example[0].shape[0]
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        for _ in range(max(1, samples // batch)):
            out.append(tuple(torch.randn_like(x) if x.is_floating_point()
                             else torch.randint_like(x, 0, int(x.max()) + 1) for x in example))
    return out


def _digits_calibration(example: tuple) -> list[tuple]:
    """The digits model calibrates on 128 training images."""
    batch = example[0].shape[0]
    x = zoo.digits_data().x_train[:128]
    return [(x[i:i + batch],) for i in range(0, len(x) - batch + 1, batch)][:max(1, 128 // batch)]


def _spec(name: str, description: str, source: str, build: Callable, batches: tuple[int, ...],
          gpu_batches: tuple[int, ...], **kw) -> BenchModel:
    build = _seeded(build)
    calibration = kw.pop("calibration", None) or _calibrate_random
    return BenchModel(name, description, source, build, batches, gpu_batches,
                      calibration=calibration, **kw)


def _overhead(batch: int) -> tuple[nn.Module, tuple]:
    """An almost empty model: its time per call is each system's per-call overhead."""
    return nn.Sequential(nn.ReLU()).eval(), (torch.randn(batch, 8),)


def full_models() -> dict[str, BenchModel]:
    specs = [
        _spec("overhead", "one ReLU on a [1, 8] tensor: the time is per-call overhead",
              "bench.models", _overhead, (1,), (1,), reference_ok=True),
        _spec("mlp", "3-layer MLP, 64 -> 128 -> 128 -> 10", "fxforge.zoo mlp", _zoo("mlp"),
              (1, 64), (1, 256), reference_ok=True),
        _spec("digits", "small CNN trained on sklearn load_digits (8x8): BN, depthwise residual, "
                        "concat", "fxforge.zoo digits", _zoo("digits"), (1, 64), (1, 256),
              reference_ok=True, accuracy=True, calibration=_digits_calibration),
        _spec("resnet18", "ResNet-18 (basic blocks [2,2,2,2], widths 64-512), 112x112 input",
              "transformers ResNetModel", _hf_resnet([2, 2, 2, 2], "basic", 112), (1, 8),
              (1, 64)),
        _spec("resnet50", "ResNet-50 (bottlenecks [3,4,6,3], widths 256-2048), 112x112 input",
              "transformers ResNetModel", _hf_resnet([3, 4, 6, 3], "bottleneck", 112), (1,),
              (1, 64)),
        _spec("mobilenetv2", "MobileNetV2 1.0 (inverted residuals, depthwise, ReLU6), 160x160",
              "transformers MobileNetV2Model", _hf_mobilenetv2(160), (1,), (1, 64)),
        _spec("vit", "ViT-Ti/16 (hidden 192, 12 layers, 3 heads), 224x224 input",
              "transformers ViTModel", _hf_vit(192, 12, 3, 224, 16), (1,), (1, 64)),
        _spec("bert-base", "BERT-base encoder (hidden 768, 12 layers, 12 heads), sequence 128",
              "transformers BertModel", _hf_bert(768, 12, 12, 128), (1,), (1, 32)),
    ]
    return {s.name: s for s in specs}


def quick_models() -> dict[str, BenchModel]:
    """Tiny configs of the same models, one batch size: a smoke run in seconds."""
    specs = [
        _spec("mlp", "3-layer MLP, 64 -> 128 -> 128 -> 10", "fxforge.zoo mlp", _zoo("mlp"),
              (8,), (8,), reference_ok=True),
        _spec("digits", "small CNN trained on sklearn load_digits (8x8)", "fxforge.zoo digits",
              _zoo("digits"), (8,), (8,), reference_ok=True, accuracy=True,
              calibration=_digits_calibration),
        _spec("resnet18", "ResNet-18-style, width 16, 32x32", "fxforge.zoo resnet18",
              _zoo("resnet18"), (2,), (2,), reference_ok=True),
        _spec("resnet50", "ResNet-50-style, width 16, 32x32", "fxforge.zoo resnet50",
              _zoo("resnet50"), (2,), (2,), reference_ok=True),
        _spec("mobilenetv2", "MobileNetV2-style, width 0.5, 32x32", "fxforge.zoo mobilenetv2",
              _zoo("mobilenetv2"), (2,), (2,), reference_ok=True),
        _spec("vit", "ViT-style, 32x32, 4x4 patches, 2 layers", "fxforge.zoo vit", _zoo("vit"),
              (2,), (2,), reference_ok=True),
        _spec("bert-base", "BERT, tiny config (hidden 64, 2 layers), sequence 16",
              "transformers BertModel", _hf_bert(64, 2, 4, 16, vocab=128), (2,), (2,),
              reference_ok=True),
    ]
    return {s.name: s for s in specs}


DEFAULT_MODELS = ("overhead", "mlp", "digits", "resnet18", "resnet50", "mobilenetv2", "vit",
                  "bert-base")
QUICK_MODELS = ("mlp", "digits")


def get_models(quick: bool) -> dict[str, BenchModel]:
    return quick_models() if quick else full_models()
