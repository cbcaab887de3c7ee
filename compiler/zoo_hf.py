"""The real-architecture zoo: `transformers` model classes from small random configs.

fxforge's own zoo models are written here, so passing on them proves little about what users
bring. These are the model classes people deploy (text encoders and decoders, CNN and
ViT-style vision, audio), built from configs small enough for a 2-core test run, with no hub
download. Batch norms get realistic running statistics (`zoo.randomize_norms`): transformers'
init leaves them at mean 0 / var 1, where a deep BN net outputs almost nothing and every
comparison would pass.

`build(name, batch)` -> (model in eval mode, example inputs as a tuple of positional inputs or a
dict of keyword inputs, ready for `model(*x)` / `model(**x)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from fxforge.optional import require
from fxforge.zoo import randomize_norms

Inputs = tuple | dict


@dataclass(frozen=True)
class HFEntry:
    build: Callable[[int], tuple[nn.Module, Inputs]]
    kind: str  # text-encoder | text-decoder | vision-cnn | vision-transformer | audio
    description: str


def _hf() -> Any:
    return require("transformers", "the transformers zoo")


def _text(batch: int, length: int = 16, vocab: int = 128, mask: bool = True) -> dict:
    ids = torch.randint(0, vocab, (batch, length))
    inputs = {"input_ids": ids}
    if mask:  # a padded batch: the last row ends in padding
        attention = torch.ones(batch, length, dtype=torch.long)
        attention[-1, length * 3 // 4:] = 0
        inputs["attention_mask"] = attention
    return inputs


def _image(batch: int, size: int = 32, channels: int = 3) -> dict:
    return {"pixel_values": torch.randn(batch, channels, size, size)}


_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _bert(batch):
    hf = _hf()
    return hf.BertModel(hf.BertConfig(vocab_size=128, max_position_embeddings=64, **_SMALL)), \
        _text(batch)


def _roberta(batch):
    hf = _hf()
    config = hf.RobertaConfig(vocab_size=128, max_position_embeddings=64, **_SMALL)
    return hf.RobertaModel(config), _text(batch)


def _distilbert(batch):
    hf = _hf()
    config = hf.DistilBertConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                 max_position_embeddings=64)
    return hf.DistilBertModel(config), _text(batch)


def _gpt2(batch):
    hf = _hf()
    config = hf.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                           bos_token_id=0, eos_token_id=0, use_cache=False)
    return hf.GPT2Model(config), _text(batch, mask=False)


def _llama(batch):
    hf = _hf()
    config = hf.LlamaConfig(vocab_size=128, max_position_embeddings=64, num_key_value_heads=2,
                            use_cache=False, **_SMALL)
    return hf.LlamaModel(config), _text(batch, mask=False)


def _qwen2(batch):
    hf = _hf()
    config = hf.Qwen2Config(vocab_size=128, max_position_embeddings=64, num_key_value_heads=2,
                            use_cache=False, **_SMALL)
    return hf.Qwen2Model(config), _text(batch, mask=False)


def _t5_encoder(batch):
    hf = _hf()
    config = hf.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                         num_heads=4)
    return hf.T5EncoderModel(config), _text(batch)


def _vit(batch):
    hf = _hf()
    config = hf.ViTConfig(image_size=32, patch_size=8, **_SMALL)
    return hf.ViTModel(config), _image(batch)


def _deit(batch):
    hf = _hf()
    config = hf.DeiTConfig(image_size=32, patch_size=8, **_SMALL)
    return hf.DeiTModel(config), _image(batch)


def _resnet(batch):
    hf = _hf()
    config = hf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1])
    return hf.ResNetModel(config), _image(batch)


def _convnext(batch):
    hf = _hf()
    config = hf.ConvNextConfig(hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1])
    return hf.ConvNextModel(config), _image(batch)


def _mobilenet_v2(batch):
    hf = _hf()
    config = hf.MobileNetV2Config(image_size=32, depth_multiplier=0.35)
    return hf.MobileNetV2Model(config), _image(batch)


def _regnet(batch):
    hf = _hf()
    config = hf.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1],
                             groups_width=8)
    return hf.RegNetModel(config), _image(batch)


def _swin(batch):
    hf = _hf()  # 40x40 in 4x4 patches: 10x10 then 5x5 tokens, padded up to the 4x4 windows
    config = hf.SwinConfig(image_size=40, patch_size=4, embed_dim=32, depths=[2, 2],
                           num_heads=[2, 4], window_size=4, drop_path_rate=0.0)
    return hf.SwinModel(config), _image(batch, 40)


def _segformer(batch):
    hf = _hf()  # with the all-MLP decode head, where the bilinear upsampling is
    config = hf.SegformerConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                num_attention_heads=[1, 2, 2, 4], decoder_hidden_size=64,
                                drop_path_rate=0.0, num_labels=4)
    return hf.SegformerForSemanticSegmentation(config), _image(batch, 64)


def _mobilevit(batch):
    hf = _hf()  # 48x48: a 3x3 map is resized (bilinear) to 4x4, whole 2x2 patches, and back
    config = hf.MobileViTConfig(image_size=48, hidden_sizes=[32, 48, 64],
                                neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 96],
                                num_attention_heads=4)
    return hf.MobileViTModel(config), _image(batch, 48)


def _efficientnet(batch):
    hf = _hf()  # hidden_dim must equal the top conv's width, round_filters(1280)
    config = hf.EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=0.25,
                                   hidden_dim=320)
    return hf.EfficientNetModel(config), _image(batch)


def _clip_vision(batch):
    hf = _hf()
    config = hf.CLIPVisionConfig(image_size=32, patch_size=8, **_SMALL)
    return hf.CLIPVisionModel(config), _image(batch)


def _whisper_encoder(batch):
    hf = _hf()
    config = hf.WhisperConfig(num_mel_bins=16, d_model=64, encoder_layers=2,
                              encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
                              decoder_attention_heads=4, decoder_ffn_dim=128,
                              max_source_positions=16, vocab_size=128, pad_token_id=0,
                              bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)
    encoder = hf.WhisperModel(config).get_encoder()
    return encoder, {"input_features": torch.randn(batch, 16, 32)}


def _wav2vec2(batch):
    hf = _hf()
    config = hf.Wav2Vec2Config(vocab_size=32, conv_dim=(32, 32), conv_stride=(5, 2),
                               conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                               num_conv_pos_embedding_groups=4, do_stable_layer_norm=False,
                               **_SMALL)
    return hf.Wav2Vec2Model(config), {"input_values": torch.randn(batch, 400)}


HF_ZOO: dict[str, HFEntry] = {
    "bert": HFEntry(_bert, "text-encoder", "BertModel, 2 layers, hidden 64, padded mask"),
    "roberta": HFEntry(_roberta, "text-encoder", "RobertaModel, 2 layers, hidden 64"),
    "distilbert": HFEntry(_distilbert, "text-encoder", "DistilBertModel, 2 layers, dim 64"),
    "t5-encoder": HFEntry(_t5_encoder, "text-encoder", "T5EncoderModel, 2 layers, d_model 64"),
    "gpt2": HFEntry(_gpt2, "text-decoder", "GPT2Model, 2 layers, Conv1D projections"),
    "llama": HFEntry(_llama, "text-decoder", "LlamaModel, 2 layers, GQA, rotary, RMSNorm"),
    "qwen2": HFEntry(_qwen2, "text-decoder", "Qwen2Model, 2 layers, GQA, rotary"),
    "vit": HFEntry(_vit, "vision-transformer", "ViTModel, 32x32, 8x8 patches"),
    "deit": HFEntry(_deit, "vision-transformer", "DeiTModel, 32x32, distillation token"),
    "clip-vision": HFEntry(_clip_vision, "vision-transformer", "CLIPVisionModel, 32x32"),
    "swin": HFEntry(_swin, "vision-transformer", "SwinModel: shifted windows, padding, "
                                                 "patch merging"),
    "segformer": HFEntry(_segformer, "vision-transformer", "SegformerForSemanticSegmentation: "
                                                           "reduced attention, bilinear head"),
    "mobilevit": HFEntry(_mobilevit, "vision-transformer", "MobileViTModel: convs and "
                                                           "transformers over unfolded patches"),
    "resnet": HFEntry(_resnet, "vision-cnn", "ResNetModel, 4 stages, width 16-64"),
    "convnext": HFEntry(_convnext, "vision-cnn", "ConvNextModel: depthwise 7x7, layer norm"),
    "mobilenet-v2": HFEntry(_mobilenet_v2, "vision-cnn", "MobileNetV2Model, TF-style padding"),
    "regnet": HFEntry(_regnet, "vision-cnn", "RegNetModel: grouped convs, squeeze-excite"),
    "efficientnet": HFEntry(_efficientnet, "vision-cnn", "EfficientNetModel: depthwise, "
                                                         "squeeze-excite, asymmetric padding"),
    "whisper-encoder": HFEntry(_whisper_encoder, "audio", "Whisper encoder: conv1d stem"),
    "wav2vec2": HFEntry(_wav2vec2, "audio", "Wav2Vec2Model: conv feature encoder, group "
                                            "norm, weight-normed positional conv"),
}


def build(name: str, batch: int = 2) -> tuple[nn.Module, Inputs]:
    """A zoo model (eval mode, seeded weights, realistic batch-norm statistics) and inputs."""
    if name not in HF_ZOO:
        raise KeyError(f"no transformers zoo model {name!r}; available: {', '.join(HF_ZOO)}")
    with torch.random.fork_rng():  # the norms' statistics too: the same model in any process
        torch.manual_seed(0)
        model, inputs = HF_ZOO[name].build(batch)
        model = randomize_norms(model)
    return model.eval(), inputs


def sample_inputs(name: str, batch: int = 2, seed: int = 1) -> Inputs:
    """Other inputs for zoo model `name` (calibration or held-out data), drawn as `build` draws
    them, from `seed` (build's own inputs come from seed 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return HF_ZOO[name].build(batch)[1]


def with_outliers(model: nn.Module, channels: int = 4, factor: float = 30.0,
                  seed: int = 0) -> nn.Module:
    """`model` (changed in place, and returned) with outlier channels, as trained transformers
    have them: the gain (and bias) of `channels` random channels of every norm layer with a 1-D
    weight multiplied by `factor`. Trained BERT, OPT and Llama models have a few norm channels
    10-100x larger than the rest (Dettmers et al. 2022, LLM.int8(); Bondarenko et al. 2021),
    which int8's per-tensor activation scales handle badly; random-init models have none, so a
    zoo of them never shows the problem SmoothQuant (`compile(..., smooth=)`) solves."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if "norm" not in type(module).__name__.lower() or not isinstance(weight, torch.Tensor) \
                    or weight.ndim != 1:
                continue
            picked = torch.randperm(weight.shape[0], generator=generator)[:channels]
            weight[picked] *= factor
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor) and bias.shape == weight.shape:
                bias[picked] *= factor
    return model


def call(model: Callable, inputs: Inputs) -> Any:
    """`model(**inputs)` or `model(*inputs)`."""
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


# --- coverage table ------------------------------------------------------------------------------

# layers with a weight (a matmul by a constant becomes a linear in canonicalize); matmuls of two
# activations (attention scores) are not layers int8 quantizes
WEIGHT_LAYERS = frozenset({"linear", "fused_linear", "conv2d", "fused_conv2d"})


def coverage_row(name: str, batch: int = 2) -> dict[str, Any]:
    """One model through `reference`, `cpu` and calibrated `cpu-int8`: fallbacks, error vs eager
    (largest |error| over the largest |output|), the model's int8 noise floor
    (`fxforge.sensitivity`), layers with weights quantized of all."""
    from fxforge import compile
    from fxforge.sensitivity import noise_floor, relative_error

    model, inputs = build(name, batch)
    with torch.no_grad():
        want = call(model, inputs)
    row: dict[str, Any] = {"model": name, "kind": HF_ZOO[name].kind}
    for target in ("reference", "cpu"):
        fast = compile(model, target)
        row[target] = relative_error(call(fast, inputs), want)
        row["fallbacks"] = sorted({f.aten for f in fast.report.fallbacks})
    row["nodes"] = len(fast.graph.nodes)
    layers = sum(n.op in WEIGHT_LAYERS for n in fast.graph.nodes)
    positional = tuple(inputs.values()) if isinstance(inputs, dict) else inputs
    int8 = compile(model, "cpu-int8", calibration=[positional])
    row["cpu-int8"] = relative_error(call(int8, inputs), want)
    row["noise floor"] = noise_floor(model, inputs, call)
    row["int8 layers"] = f"{len(int8.report.latest.quantization.layers)}/{layers}"
    return row


def coverage_table(names: list[str] | None = None, batch: int = 2) -> str:
    """The zoo as a markdown table (`python -m fxforge.zoo_hf`)."""
    from tqdm.auto import tqdm

    lines = ["| model | kind | nodes | fallbacks | reference | cpu | cpu-int8 | int8 noise floor "
             "| int8 layers |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for name in tqdm(names or list(HF_ZOO), desc="zoo", unit="model", leave=False, disable=None):
        r = coverage_row(name, batch)
        lines.append(f"| {r['model']} | {r['kind']} | {r['nodes']} | "
                     f"{', '.join(r['fallbacks']) or 'none'} | {r['reference']:.1e} | "
                     f"{r['cpu']:.1e} | {r['cpu-int8']:.1e} | {r['noise floor']:.1e} | "
                     f"{r['int8 layers']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(coverage_table())
