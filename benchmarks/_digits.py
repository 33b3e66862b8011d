"""Small CNNs on scikit-learn's load_digits: data, models, deterministic CPU training, ONNX export, ORT accuracy.

Shared by the benchmarks that need a *trained* model (so accuracy after pruning means something) without
any download: load_digits ships with scikit-learn (1797 real 8x8 handwritten digits, 10 classes).

    data = load_data(size=16)                       # fixed stratified split, 1347 train / 450 test
    net = build("residual")                         # or "dwse", "concat"; see MODELS
    log = train(net, data, seconds=60)              # deterministic for a given epoch count (log.epochs)
    folded = export_onnx(net, data.size)            # eval export, BN folded into the Convs
    with_bn = export_onnx(net, data.size, fold_bn=False)   # BN kept, initializers named like the parameters
    onnx_accuracy(folded, data.x_test, data.y_test)
    grads = onnx_gradients(net, with_bn, data.x_train[:256], data.y_train[:256])   # {initializer: dL/dw}

Models (all NCHW, input (batch, 1, size, size), output logits (batch, 10)):
  residual: conv-BN-ReLU stem, three basic residual blocks (the second strided, with a 1x1 projection
            shortcut), GlobalAveragePool, Linear.
  dwse:     MobileNet-style: stem, three blocks of 1x1 expand - depthwise 3x3 - squeeze-and-excitation
            (HardSigmoid gate) - 1x1 project, residual where shapes allow, GAP, Linear.
  concat:   inception-style: stem, two blocks of four parallel branches (1x1, 1x1-3x3, 1x1-3x3-3x3,
            maxpool-1x1) joined by Concat, a strided max pool between them, GAP, Linear.

Determinism: `train` seeds torch and its own generators and enables torch.use_deterministic_algorithms;
with `seconds` the number of epochs is derived from the first epoch's time (machine dependent), pass
`epochs=` to fix it. Inputs are the digits scaled to [0, 1] (bilinear upsampling when size > 8), then
standardised by the training set's mean and std (stored on `Digits`).
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from torch import nn
import torch.nn.functional as F

NUM_CLASSES = 10


# --------------------------------------------------------------------------- data

@dataclass
class Digits:
    x_train: np.ndarray  # (N, 1, size, size) float32, standardised
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    size: int
    mean: float
    std: float

    def calibration(self, n: int = 256, seed: int = 0) -> np.ndarray:
        """n training images (never test images), a fixed random subset, for data-based criteria."""
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(len(self.x_train), size=min(n, len(self.x_train)), replace=False))
        return self.x_train[index]


def load_data(size: int = 8, test_size: float = 0.25, seed: int = 0) -> Digits:
    """load_digits with a fixed stratified train/test split, upsampled to size x size and standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    mean, std = float(x_train.mean()), float(x_train.std())
    norm = lambda a: np.ascontiguousarray((a - mean) / std, dtype=np.float32)  # noqa: E731
    return Digits(norm(x_train), y_train, norm(x_test), y_test, size, mean, std)


# --------------------------------------------------------------------------- models

def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, act=False)
        self.shortcut = conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResidualCNN(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stem = conv_bn(1, w, 3)
        self.blocks = nn.Sequential(BasicBlock(w, w), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.fc = nn.Linear(2 * w, NUM_CLASSES)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


class InvertedResidualSE(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1):
        super().__init__()
        hidden = cin * expand
        self.expand = conv_bn(cin, hidden, 1)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(8, hidden // 4))
        self.project = conv_bn(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class DepthwiseSECNN(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stem = conv_bn(1, w, 3)
        self.blocks = nn.Sequential(InvertedResidualSE(w, w, 3), InvertedResidualSE(w, 2 * w, 3, 2),
                                    InvertedResidualSE(2 * w, 2 * w, 3))
        self.head = conv_bn(2 * w, 4 * w, 1)
        self.fc = nn.Linear(4 * w, NUM_CLASSES)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, b1: int, b3: tuple[int, int], b5: tuple[int, int], bp: int):
        super().__init__()
        self.branch1 = conv_bn(cin, b1, 1)
        self.branch3 = nn.Sequential(conv_bn(cin, b3[0], 1), conv_bn(b3[0], b3[1], 3))
        self.branch5 = nn.Sequential(conv_bn(cin, b5[0], 1), conv_bn(b5[0], b5[1], 3), conv_bn(b5[1], b5[1], 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, bp, 1))
        self.channels = b1 + b3[1] + b5[1] + bp

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.pool(x)], 1)


class ConcatCNN(nn.Module):
    def __init__(self, width: int = 12):
        super().__init__()
        w = width
        self.stem = conv_bn(1, 2 * w, 3)
        self.block1 = InceptionBlock(2 * w, w, (w, 2 * w), (w // 2, w), w)
        self.pool = nn.MaxPool2d(2)
        self.block2 = InceptionBlock(self.block1.channels, 2 * w, (w, 2 * w), (w // 2, w), w)
        self.fc = nn.Linear(self.block2.channels, NUM_CLASSES)

    def forward(self, x):
        x = self.block2(self.pool(self.block1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {
    "residual": ResidualCNN,
    "dwse": DepthwiseSECNN,
    "concat": ConcatCNN,
}


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A freshly initialised model from MODELS, seeded."""
    torch.manual_seed(seed)
    return MODELS[name](**kwargs)


# --------------------------------------------------------------------------- training

def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class TrainLog:
    epochs: int
    seconds: float
    train_accuracy: float
    test_accuracy: float
    losses: list[float] = field(default_factory=list)


def _shifted(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random integer translation per sample (zero padding in the standardised space = background)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    background = float(x.min())
    padded = F.pad(x, (max_shift,) * 4, value=background)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    crop = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, 1, h, w)
    return torch.gather(crop, 3, cols)


def train(model: nn.Module, data: Digits, seconds: float = 60.0, *, epochs: int | None = None, seed: int = 0,
          batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.01, max_shift: int = 1,
          max_epochs: int = 200, verbose: bool = False) -> TrainLog:
    """AdamW + cosine schedule, cross-entropy, random +-max_shift pixel shifts. Leaves the model in eval mode.

    epochs=None: the first epoch is timed and the total is set to fit `seconds` (at least 2, at most
    max_epochs); with a fixed `epochs` the run is fully deterministic.
    """
    set_determinism(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs
    start = time.perf_counter()
    losses = []
    epoch = 0
    while total is None or epoch < total:
        # cosine over the planned epochs; the first (timing) epoch runs at the full rate
        if total is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / total))
        model.train()
        order = torch.randperm(len(x), generator=generator)
        running = 0.0
        for i in range(0, len(x), batch_size):
            index = order[i:i + batch_size]
            xb = _shifted(x[index], generator, max_shift)
            loss = F.cross_entropy(model(xb), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(index)
        losses.append(running / len(x))
        epoch += 1
        if total is None:
            per_epoch = time.perf_counter() - start
            total = int(min(max_epochs, max(2, seconds // max(per_epoch, 1e-6))))
        if verbose:
            print(f"  epoch {epoch}/{total} loss {losses[-1]:.4f}", flush=True)
    model.eval()
    elapsed = time.perf_counter() - start
    return TrainLog(epoch, elapsed, torch_accuracy(model, data.x_train, data.y_train),
                    torch_accuracy(model, data.x_test, data.y_test), losses)


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i:i + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch_size]).sum())
    return correct / len(x)


# --------------------------------------------------------------------------- ONNX

def export_onnx(model: nn.Module, size: int, *, fold_bn: bool = True, opset: int = 17) -> onnx.ModelProto:
    """Legacy (TorchScript) export in eval mode with a dynamic batch axis.

    fold_bn=True: the default export, BatchNormalization folded into the Conv weights (initializers get
    generated names such as onnx::Conv_123). fold_bn=False: do_constant_folding=False and
    TrainingMode.PRESERVE on the eval model, so BatchNormalization nodes survive and parameters keep their
    torch names (e.g. blocks.0.conv1.0.weight).
    """
    model.eval()
    buffer = io.BytesIO()
    dummy = torch.zeros(1, 1, size, size)
    extra = {} if fold_bn else {"do_constant_folding": False, "training": torch.onnx.TrainingMode.PRESERVE}
    torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=opset, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      **extra)
    return onnx.load_from_string(buffer.getvalue())


def onnx_session(model: onnx.ModelProto | bytes | str, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def onnx_predict(model, x: np.ndarray, batch_size: int = 512, threads: int = 1) -> np.ndarray:
    """Logits from onnxruntime (CPU), batch by batch."""
    sess = model if hasattr(model, "run") else onnx_session(model, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def onnx_accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 512, threads: int = 1) -> float:
    return float((onnx_predict(model, x, batch_size, threads).argmax(1) == y).mean())


def onnx_gradients(model: nn.Module, onnx_model: onnx.ModelProto, x: np.ndarray, y: np.ndarray,
                   batch_size: int = 128) -> tuple[dict[str, np.ndarray], list[str]]:
    """dL/dw of the cross-entropy loss summed over (x, y), in eval mode (BN on running statistics, as in
    the exported graph), keyed by ONNX initializer name.

    A torch parameter maps to the initializer of the same name and shape (the legacy exporter keeps
    parameter names when nothing is folded: export_onnx(..., fold_bn=False)). Returns (gradients,
    names of the float initializers with rank >= 2 that no parameter maps to); with BN folded most Conv
    weights are unmapped.
    """
    model.eval()
    model.zero_grad(set_to_none=True)
    for i in range(0, len(x), batch_size):
        loss = F.cross_entropy(model(torch.from_numpy(x[i:i + batch_size])), torch.from_numpy(y[i:i + batch_size]),
                               reduction="sum")
        loss.backward()
    params = dict(model.named_parameters())
    grads, unmapped = {}, []
    for init in onnx_model.graph.initializer:
        p = params.get(init.name)
        if p is not None and p.grad is not None and tuple(p.shape) == tuple(init.dims):
            grads[init.name] = p.grad.detach().numpy().astype(np.float32).copy()
        elif len(init.dims) >= 2 and init.data_type == onnx.TensorProto.FLOAT:
            unmapped.append(init.name)
    model.zero_grad(set_to_none=True)
    return grads, unmapped


def macs(model: onnx.ModelProto) -> int:
    """MACs (Conv, Gemm, MatMul; batch 1) as counted by onnxprune.stats."""
    from onnxprune.stats import stats

    return stats(model).macs
