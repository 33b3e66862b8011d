#!/usr/bin/env python
"""File size of the onnx package's nine light zoo graphs (weights made by ConstantOfShape) pruned at 0.3.

    python benchmarks/light_zoo_size.py [--ratio 0.3]

Each graph is pruned (`op.prune(model, ratio=..., verify=True)`: the mask oracle runs) and written with
`op.save_model` (validated); the baseline in the same run is the original file. A pruned file is never to be
larger than its original (issue 18: computed weights stay computed).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import onnx  # noqa: E402

import onnxprune as op  # noqa: E402

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ["resnet50", "squeezenet", "densenet121", "shufflenet", "inception_v1", "inception_v2", "vgg19",
          "bvlc_alexnet", "zfnet512"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            path = os.path.join(LIGHT, f"light_{name}.onnx")
            original = op.load_model(path)
            result = op.prune(original, ratio=args.ratio, verify=True)
            out = os.path.join(tmp, f"{name}.onnx")
            op.save_model(result.model, out, reference=original)
            before, after = os.path.getsize(path), os.path.getsize(out)
            macs = result.summary.after.macs / result.summary.before.macs
            rows.append([name, f"{before:,}", f"{after:,}", f"{after / before:.3f}", f"{macs:.3f}",
                         "pass" if result.verification.ok else "FAIL"])
    header = ["graph", "original B", "pruned B", "size ratio", "MACs kept", "mask oracle"]
    widths = [max(len(str(r[k])) for r in rows + [header]) for k in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    return 0 if all(float(r[3]) <= 1.0 and r[5] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
