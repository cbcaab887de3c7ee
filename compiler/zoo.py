"""A small zoo of model definitions, written here (torchvision does not work with the pinned torch).

Used by the demo, the tests and the benchmarks. Every factory is deterministic (its own seed,
without touching the caller's RNG), puts the model in eval mode, gives batch norms non-trivial
running statistics (so folding them is a real test), and returns `(model, example_inputs)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxforge.optional import require


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm2d non-trivial statistics (so folding it is a real test); eval mode."""
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


# --- ViT ----------------------------------------------------------------------------------------


class ViT(nn.Module):
    """Vision transformer: patch-embedding conv -> [class token; patches] + learned positions ->
    pre-norm encoder layers -> class-token logits. Defaults are small (32x32 input, 4x4
    patches); `ViT(224, 16, dim=192, depth=12, heads=3)` is ViT-Ti/16-size."""

    def __init__(self, image: int = 32, patch: int = 4, dim: int = 64, depth: int = 2,
                 heads: int = 4, classes: int = 10, channels: int = 3):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, fused=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0])


# --- digits CNN (trained) -----------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits: conv-BN, a depthwise-separable residual block,
    two branches joined by a concat, pooling and a linear head."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, width, 3)
        self.block = nn.Sequential(conv_bn(width, width, 3, groups=width),
                                   conv_bn(width, width, 1, act=None))
        self.relu = nn.ReLU()
        self.branch1 = conv_bn(width, width, 1)
        self.branch3 = conv_bn(width, width, 3)
        self.pool = nn.MaxPool2d(2)
        self.mix = conv_bn(2 * width, 2 * width, 3)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(x + self.block(x))
        x = torch.cat([self.branch1(x), self.branch3(x)], dim=1)
        x = self.mix(self.pool(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class DigitsData:
    """scikit-learn's `load_digits` as float images in [0, 1], shape (N, 1, 8, 8), split
    80/20 (stratified, fixed seed) into train and held-out test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@functools.lru_cache(maxsize=1)
def digits_data() -> DigitsData:
    load_digits = require("sklearn.datasets", "the digits model").load_digits
    train_test_split = require("sklearn.model_selection", "the digits model").train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train, test = train_test_split(list(range(len(labels))), test_size=0.2, random_state=0,
                                   stratify=digits.target)
    train, test = torch.tensor(train), torch.tensor(test)
    return DigitsData(images[train], labels[train], images[test], labels[test])


@functools.lru_cache(maxsize=1)
def _trained_digits_state() -> tuple[tuple[str, torch.Tensor], ...]:
    """Train DigitsCNN on the training split: Adam, 8 epochs of batches of 64, fixed seed, one
    thread (a few CPU seconds). Kept in memory only, as a tuple of (name, tensor) pairs."""
    data = digits_data()
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.set_num_threads(1)  # tiny ops: one thread is faster and deterministic
        try:
            model = DigitsCNN()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            n = len(data.y_train)
            model.train()
            for _ in range(8):
                order = torch.randperm(n)
                for start in range(0, n, 64):
                    idx = order[start:start + 64]
                    loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        finally:
            torch.set_num_threads(threads)
    return tuple((k, v.detach().clone()) for k, v in model.eval().state_dict().items())


def digits_accuracy(model: Callable[[torch.Tensor], torch.Tensor], batch: int = 64) -> float:
    """Held-out accuracy of a model of (N, 1, 8, 8) images at a fixed batch size: the last chunk
    is padded with zeros so compiled models see one input shape."""
    data = digits_data()
    correct = 0
    for start in range(0, len(data.y_test), batch):
        x = data.x_test[start:start + batch]
        n = len(x)
        if n < batch:
            x = torch.cat([x, x.new_zeros(batch - n, *x.shape[1:])])
        with torch.no_grad():
            logits = model(x)[:n]
        correct += int((logits.argmax(dim=1) == data.y_test[start:start + n]).sum())
    return correct / len(data.y_test)


def _digits(batch: int) -> tuple[nn.Module, tuple]:
    model = DigitsCNN()
    model.load_state_dict(dict(_trained_digits_state()))
    x = digits_data().x_test
    reps = -(-batch // len(x))
    return model.eval(), (x.repeat(reps, 1, 1, 1)[:batch].clone(),)


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
        return randomize_norms(model), inputs

    return build


def _image(batch: int, size: int = 32) -> tuple:
    return (torch.randn(batch, 3, size, size),)


def _bert(batch: int) -> tuple[nn.Module, tuple]:
    hf = require("transformers", "the bert model")

    config = hf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    model = hf.BertModel(config)
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
    "vit": ZooEntry(_seeded(lambda b: (ViT(), _image(b))),
                    "ViT-style vision transformer (32x32 input, 4x4 patches, 2 layers): patch "
                    "conv, class token concat, learned positions, sdpa"),
    "digits": ZooEntry(_digits, "small CNN trained on scikit-learn's 8x8 digits (BN, depthwise "
                                "residual block, concat); inputs are held-out test images"),
}


def build(name: str, batch: int = 1) -> tuple[nn.Module, tuple]:
    if name not in ZOO:
        raise KeyError(f"no zoo model {name!r}; available: {', '.join(ZOO)}")
    return ZOO[name].build(batch)


def calibration_data(name: str, batch: int = 1, batches: int = 8) -> list[tuple]:
    """Calibration samples for a zoo model: the digits model gets batches of its training
    images; other models random inputs like their example (normal floats; integer token ids in
    the example's range), which is what their random weights were made for."""
    if name == "digits":
        x = digits_data().x_train
        reps = -(-batch * batches // len(x))
        x = x.repeat(reps, 1, 1, 1)
        return [(x[i * batch:(i + 1) * batch].clone(),) for i in range(batches)]
    _, example = build(name, batch)
    generator = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(batches):
        sample = []
        for t in example:
            if t.is_floating_point():
                sample.append(torch.randn(t.shape, generator=generator, dtype=t.dtype))
            else:
                high = int(t.max()) + 1
                sample.append(torch.randint(0, high, t.shape, generator=generator, dtype=t.dtype))
        samples.append(tuple(sample))
    return samples
