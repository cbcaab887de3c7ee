"""A small zoo of model definitions, written here (torchvision does not work with the pinned torch).

Used by the demo, the tests and the benchmarks. Every factory is deterministic (its own seed,
without touching the caller's RNG), puts the model in eval mode, gives batch norms non-trivial
running statistics (so folding them is a real test), and returns `(model, example_inputs)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def _randomize_norms(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


# --- MLP ----------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = self.drop(F.relu(self.fc1(x)))
        x = F.gelu(self.fc2(x))
        return self.head(x)


# --- ResNet -------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv_bn(cin, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.conv3 = conv_bn(width, cout, 1, act=None)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[nn.Module], layers: list[int], width: int = 64,
                 classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, width, 3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, count in enumerate(layers):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(cin, width * 2**i, stride))
                cin = width * 2**i * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --- MobileNetV2 --------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    # (expand ratio, channels, repeats, stride), MobileNetV2's table scaled by `width_mult`
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width_mult: float = 1.0, classes: int = 10, depth: int = 7):
        super().__init__()
        scale = lambda c: max(8, int(c * width_mult + 4) // 8 * 8)  # noqa: E731
        cin = scale(32)
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
        for expand, channels, repeats, stride in self.SETTINGS[:depth]:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, scale(channels), stride if i == 0 else 1,
                                               expand))
                cin = scale(channels)
        last = scale(1280) if width_mult > 1.0 else 1280
        layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --- Transformer encoder ------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # the pattern a fusion pass should recognize
            scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(0.1))

    def forward(self, x, mask=None):
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Token ids -> pre-norm encoder layers -> mean-pooled logits, and the hidden states."""

    def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, depth: int = 2,
                 max_len: int = 64, classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, fused=i % 2 == 0)
                                    for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids, mask=None):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.pos(positions)
        attn_mask = None if mask is None else mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, attn_mask)
        x = self.norm(x)
        return {"logits": self.head(x.mean(dim=1)), "hidden": x}


# --- registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[int], tuple[nn.Module, tuple]]
    description: str


def _seeded(fn: Callable[[int], tuple[nn.Module, tuple]]) -> Callable[[int], tuple]:
    def build(batch: int = 1) -> tuple[nn.Module, tuple]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model, inputs = fn(batch)
        return _randomize_norms(model), inputs

    return build


def _image(batch: int, size: int = 32) -> tuple:
    return (torch.randn(batch, 3, size, size),)


def _bert(batch: int) -> tuple[nn.Module, tuple]:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model = BertModel(config)
    ids = torch.randint(0, 128, (batch, 16))
    return model, (ids,)


ZOO: dict[str, ZooEntry] = {
    "mlp": ZooEntry(_seeded(lambda b: (MLP(), (torch.randn(b, 64),))),
                    "3-layer MLP with ReLU, GELU, dropout"),
    "resnet18": ZooEntry(_seeded(lambda b: (ResNet(BasicBlock, [2, 2, 2, 2], width=16),
                                            _image(b))),
                         "ResNet-18-style CNN (width 16, 32x32 input): BN, residual adds"),
    "resnet50": ZooEntry(_seeded(lambda b: (ResNet(Bottleneck, [3, 4, 6, 3], width=16),
                                            _image(b))),
                         "ResNet-50-style CNN with bottlenecks (width 16, 32x32 input)"),
    "mobilenetv2": ZooEntry(_seeded(lambda b: (MobileNetV2(0.5), _image(b))),
                            "MobileNetV2-style (width 0.5): depthwise convs, ReLU6, inverted "
                            "residuals"),
    "transformer": ZooEntry(_seeded(lambda b: (TransformerEncoder(),
                                               (torch.randint(0, 100, (b, 16)),))),
                            "pre-norm transformer encoder: embeddings, layer norm, attention "
                            "(sdpa and explicit softmax), GELU; dict output"),
    "bert": ZooEntry(_seeded(_bert), "transformers BertModel, small random config "
                                     "(2 layers, hidden 64); ModelOutput"),
}


def build(name: str, batch: int = 1) -> tuple[nn.Module, tuple]:
    if name not in ZOO:
        raise KeyError(f"no zoo model {name!r}; available: {', '.join(ZOO)}")
    return ZOO[name].build(batch)
