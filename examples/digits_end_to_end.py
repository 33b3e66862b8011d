"""From a trained PyTorch CNN to a smaller ONNX model, end to end, on scikit-learn's handwritten digits.

    python examples/digits_end_to_end.py            # the full run: a few minutes on 2 CPU cores
    python examples/digits_end_to_end.py --quick    # a smoke run in well under a minute (accuracy meaningless)
    python examples/digits_end_to_end.py --out runs/digits   # also save the ONNX models, sensitivity JSON/PNG

Needs: pip install "onnxprune[torch]" scikit-learn   (matplotlib too for the sensitivity plot with --out)
No download: load_digits ships with scikit-learn (1797 8x8 images of the digits 0-9).

The steps, each one printed as it runs and summed up in one table at the end:

  1. train a small CNN in PyTorch;
  2. export it to ONNX so that the initializers keep the PyTorch parameter names;
  3. sensitivity analysis: prune each layer alone at several ratios, measure the accuracy lost
     (op.sensitivity), and turn the curves into per-layer ratios for 50% fewer MACs (result.recommend);
  4. prune with those ratios (op.prune) and evaluate (op.evaluate);
  5. apply the same pruning to the PyTorch module (onnxprune.torch.apply_pruning), fine-tune it one epoch,
     re-export and evaluate again;
  6. decompose the most expensive remaining convolution with Tucker-2 (op.decompose);
  7. print accuracy, params, MACs and onnxruntime latency (op.bench) after every step.

Accuracy is always measured on the held-out test split; the sensitivity analysis uses a separate
validation split, so no decision is taken on the test images.
"""
from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import onnxprune as op
import onnxprune.torch

METHOD = "bn_scale"  # the pruning criterion (see step 3)
# Channel counts are kept at multiples of 8: onnxruntime's CPU convolutions work on blocks of 8 or 16
# channels, and a layer pruned to, say, 26 channels can run SLOWER than the 32-channel original.
OPTIONS = op.Options(step_size=8)
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the ratios the sensitivity analysis measures per layer

# --------------------------------------------------------------------------- 0. data

def load_data(size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Digits upsampled to size x size, split train / validation / test, standardised by the training set.

    Returns float32 images (N, 1, size, size) and int64 labels: 1077 train, 270 validation, 450 test.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32))[:, None]  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).numpy()
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=450, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=270, random_state=seed,
                                                      stratify=y_train)
    mean, std = x_train.mean(), x_train.std()
    norm = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return {"x_train": norm(x_train), "y_train": y_train, "x_val": norm(x_val), "y_val": y_val,
            "x_test": norm(x_test), "y_test": y_test}


# --------------------------------------------------------------------------- 1. the model

def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers (a max pool after the second), global average pool, one Linear.

    Note that forward() never hard-codes a channel count: after pruning, the layers get fewer channels
    and the same forward() still works.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(1, width), conv_bn_relu(width, width), nn.MaxPool2d(2),
                                      conv_bn_relu(width, 2 * width), conv_bn_relu(2 * width, 2 * width))
        self.classifier = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0,
          batch_size: int = 32) -> None:
    """AdamW with a cosine learning-rate schedule to zero, cross-entropy, +-1 pixel random shifts."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    background = float(x.min())
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), batch_size):
            index = order[i:i + batch_size]
            dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()  # shift the whole batch
            xb = F.pad(x[index], (1, 1, 1, 1), value=background)[:, :, 1 + dy:1 + dy + x.shape[2],
                                                                 1 + dx:1 + dx + x.shape[3]]
            loss = F.cross_entropy(net(xb), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", flush=True)
    net.eval()


# --------------------------------------------------------------------------- 2. export

def export(net: nn.Module, size: int):
    """ONNX (an onnx.ModelProto) from the PyTorch module, with the parameter names kept.

    The options matter for step 5: the legacy exporter (dynamo=False) names every initializer after its
    parameter ("features.0.0.weight"), TrainingMode.PRESERVE on the eval-mode module keeps BatchNorm as
    its own node, and do_constant_folding=False stops the exporter from folding BatchNorm into the
    convolution weights (which would rename them "onnx::Conv_123" and hide them from the bridge).
    """
    import io

    import onnx

    net.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, size, size),), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


# --------------------------------------------------------------------------- 7. the table

def measure(name: str, model, data: dict, rows: list, repeats: int) -> dict:
    """Accuracy (op.evaluate), params / MACs (op.stats) and latency (op.bench) of one ONNX model."""
    accuracy = op.evaluate(model, (data["x_test"], data["y_test"]))["top1"]
    counts = op.stats(model)
    # onnxruntime on the CPU, one thread, median of `repeats` runs: one image at a time (a request), where a
    # model this small is dominated by per-node overheads, and a batch of 32, where the arithmetic shows
    single = op.bench(model, repeats=repeats, warmup=max(5, repeats // 10), threads=1, batch_size=1)
    batch = op.bench(model, repeats=max(5, repeats // 4), warmup=5, threads=1, batch_size=32)
    row = {"step": name, "top1": accuracy, "params": counts.params, "macs": counts.macs,
           "latency_ms": single.median_ms, "latency32_ms": batch.median_ms}
    rows.append(row)
    print(f"  -> {name}: test top-1 {accuracy:.2%}, params {counts.params:,}, MACs {counts.macs:,}, "
          f"latency {single.median_ms:.3f} ms (batch 1), {batch.median_ms:.3f} ms (batch 32)", flush=True)
    return row


def table(rows: list[dict]) -> str:
    first = rows[0]
    header = ["step", "test top-1", "params", "MACs", "MACs vs orig.", "ms b=1", "vs orig.", "ms b=32", "vs orig."]
    lines = [[r["step"], f"{r['top1']:.2%}", f"{r['params']:,}", f"{r['macs']:,}", f"{r['macs'] / first['macs']:.1%}",
              f"{r['latency_ms']:.3f}", f"{r['latency_ms'] / first['latency_ms']:.2f}x",
              f"{r['latency32_ms']:.3f}", f"{r['latency32_ms'] / first['latency32_ms']:.2f}x"] for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


# --------------------------------------------------------------------------- the walk-through

def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few epochs, few timing repeats")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 30, --quick 2)")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of MACs to remove (default 0.5)")
    parser.add_argument("--out", default=None, help="a directory for the ONNX models and the sensitivity JSON/PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 30)
    repeats = 20 if args.quick else 300
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    size = 16
    data = load_data(size, args.seed)
    rows: list[dict] = []

    print(f"\n[1/7] train a small CNN for {epochs} epochs on {len(data['x_train'])} digits", flush=True)
    net = DigitsCNN()
    train(net, data["x_train"], data["y_train"], epochs=epochs, lr=3e-3, seed=args.seed)

    print("\n[2/7] export to ONNX (parameter names kept) and measure", flush=True)
    original = export(net, size)
    measure("original", original, data, rows, repeats)

    print("\n[3/7] sensitivity: prune each layer alone, measure the validation accuracy lost", flush=True)
    validation = (data["x_val"], data["y_val"])
    # The criterion: "bn_scale" ranks a layer's channels by |gamma| of the BatchNorm that follows it (network
    # slimming). With BatchNorm after every conv the scale of a conv filter carries no information (BatchNorm
    # divides it away, and weight decay shrinks it freely), so the filter-norm criteria ("l2", "l1") rank
    # channels almost at random here; try METHOD = "l2" to see the difference.
    sens = op.sensitivity(original, validation, ratios=RATIOS, method=METHOD, options=OPTIONS)
    print(sens.table())
    plan = sens.recommend(args.target)  # per-layer ratios for `target` fewer MACs, least sensitive layers first
    print(plan)

    print(f"\n[4/7] prune to {args.target:.0%} fewer MACs with the recommended ratios", flush=True)
    pruned = op.prune(original, METHOD, ratios=plan.ratios, options=OPTIONS)
    print(pruned.summary)
    measure(f"pruned -{1 - op.stats(pruned.model).macs / op.stats(original).macs:.0%} MACs", pruned.model, data,
            rows, repeats)

    print("\n[5/7] the same pruning on the PyTorch module, fine-tune one epoch, re-export", flush=True)
    onnxprune.torch.apply_pruning(net, pruned)  # slices the parameters, BatchNorm buffers and layer sizes
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            print(f"  {name}: {module}")
    # check: the sliced module, re-exported, computes what the pruned ONNX model computes (before any training)
    check = op.evaluate(export(net, size), (data["x_test"], None), reference=pruned.model)
    print(f"  re-exported module vs pruned ONNX model: top-1 agreement {check['agreement']:.0%}, "
          f"max relative error {check['max_rel_error']:.1e}")
    # a new optimizer is made inside train(): the bridge replaced the parameter objects
    train(net, data["x_train"], data["y_train"], epochs=1, lr=3e-3, seed=args.seed + 1, batch_size=16)
    tuned = export(net, size)
    measure("pruned + 1 epoch fine-tune", tuned, data, rows, repeats)

    print("\n[6/7] Tucker-2 decomposition of the convolution with the most MACs", flush=True)
    layers = {layer.name for layer in op.decomposable_layers(tuned) if "tucker" in layer.full_ranks}
    nodes = op.stats(tuned).nodes
    heaviest = max(layers, key=lambda name: nodes[name].macs)
    # half of the input and output ranks (rounded up to multiples of 8, as the channels above);
    # reconstruct=True re-fits the last factor of the chain on training images, so it matches the layer's output
    decomposed = op.decompose(tuned, "tucker", rank_ratio=0.5, layers=[heaviest], rank_step=8,
                              reconstruct=True, calibration=data["x_train"][:512])
    for layer in decomposed.layers:
        status = (f"ranks {layer.ranks} of {layer.full_ranks}, kernel error {layer.rel_error:.3f}, "
                  f"MACs {layer.macs_before:,} -> {layer.macs_after:,}") if layer.decomposed else layer.skipped
        print(f"  {layer.name}: {status}")
    measure(f"+ Tucker-2 on {heaviest}", decomposed.model, data, rows, repeats)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, model in [("original", original), ("pruned", pruned.model), ("finetuned", tuned),
                            ("decomposed", decomposed.model)]:
            op.save_model(model, os.path.join(args.out, f"digits_{name}.onnx"))
        sens.save_json(os.path.join(args.out, "sensitivity.json"))
        try:
            sens.plot(os.path.join(args.out, "sensitivity.png"))
        except op.OnnxPruneError as exc:  # matplotlib missing: the message names the extra to install
            print(f"  (no plot: {exc})")
        print(f"\n  models and sensitivity results written to {args.out}/")

    print(f"\n[7/7] summary: top-1 on the {len(data['x_test'])} test images; latency: onnxruntime CPU, 1 thread, "
          f"median ms per run at batch 1 and batch 32\n", flush=True)
    print(table(rows))
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
