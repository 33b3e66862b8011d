#!/usr/bin/env python
"""Depth pruning on trained models: remove one residual block chosen by block influence, vs every other choice.

    python benchmarks/depth.py [--seconds 40] [--epochs N] [--depth 2] [--calibration 256]

The digits ViT of benchmarks/recovery.py (4x4 patches, pre-norm encoder blocks, 4 heads, class token; trained on
scikit-learn's load_digits, benchmarks/_digits.py) and its residual CNN are exported; `op.find_blocks` lists their
residual blocks (each attention and MLP sub-block of the ViT, the CNN's blocks without downsampling) and transformer
layers (an attention block and the MLP block after it). Each is removed alone (`op.prune_blocks(blocks=[name],
verify=True)`: the zero-branch oracle checks every result) and the test accuracy is measured with onnxruntime;
`op.prune_blocks(n=1, calibration=...)` picks the candidate (layers, and blocks outside layers) of least influence
(1 - cos(input, output) per token on --calibration training images) and the table marks it. Baseline in the same
run: the unpruned model's test accuracy. The pick without data (branch norm on generated inputs) is shown too.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

import onnxprune as op  # noqa: E402
from onnxprune.blocks import block_scores, candidates  # noqa: E402

import _digits  # noqa: E402
from recovery import TinyViT  # noqa: E402


def run_model(name: str, data: _digits.Digits, args) -> None:
    if name == "vit":
        torch.manual_seed(0)
        net = TinyViT(size=data.size, depth=args.depth)
        log = _digits.train(net, data, args.seconds, epochs=args.epochs, lr=1e-3, weight_decay=0.05)
    else:
        net = _digits.build(name)
        log = _digits.train(net, data, args.seconds, epochs=args.epochs)
    model = _digits.export_onnx(net, data.size)
    base = _digits.onnx_accuracy(model, data.x_test, data.y_test)
    calibration = data.calibration(args.calibration)
    chosen = op.prune_blocks(model, n=1, calibration=calibration, verify=True)
    influence, _ = block_scores(model, chosen.blocks, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blind = op.prune_blocks(model, n=1, verify=True)
        norms, _ = block_scores(model, chosen.blocks)
    pool = {b.name for b in candidates(chosen.blocks)}
    print(f"\n{name}: {log.epochs} epochs, test accuracy {base:.3f}; {len(chosen.blocks)} blocks "
          f"({len(pool)} candidates for n=)")
    print(f"{'block':<48} {'kind':<9} {'influence':>9} {'norm ratio':>10} {'accuracy':>8}  picked by")
    rows = []
    for block in chosen.blocks:
        removed = op.prune_blocks(model, blocks=[block.name], verify=True)
        acc = _digits.onnx_accuracy(removed.model, data.x_test, data.y_test)
        if block.name in pool:
            rows.append((block.name, acc))
        picked = ", ".join(k for k, r in (("influence", chosen), ("no data", blind)) if r.removed == [block.name])
        print(f"{block.name + ('' if block.name in pool else ' (part)'):<48} {block.kind:<9} "
              f"{influence[block.name]:>9.4f} {norms[block.name]:>10.3f} {acc:>8.3f}  {picked}")
    worst, best = min(rows, key=lambda r: r[1]), max(rows, key=lambda r: r[1])
    mine = dict(rows)[chosen.removed[0]]
    print(f"n=1 by influence keeps {mine:.3f} (best candidate {best[1]:.3f}, worst {worst[1]:.3f} = {worst[0]}); "
          f"unpruned {base:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="training time per model (default 40)")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epoch count (fully deterministic training)")
    parser.add_argument("--depth", type=int, default=2, help="ViT encoder layers (default 2, as recovery.py)")
    parser.add_argument("--models", default="vit,residual")
    parser.add_argument("--size", type=int, default=16, help="input size (digits are 8x8, upsampled bilinearly)")
    parser.add_argument("--calibration", type=int, default=256, help="training images for block influence")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = _digits.load_data(size=args.size)
    for name in [m for m in args.models.split(",") if m]:
        run_model(name, data, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
