"""How close models stay to an original on data: the relative error of their graph outputs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from onnxprune.calibration import batches
from onnxprune.runtime import session


def output_errors(original: onnx.ModelProto, candidates: Sequence[onnx.ModelProto], data: Any) -> list[float]:
    """Per candidate, ||y - y_original|| / ||y_original|| over every graph output and every batch of `data`
    (calibration data in any form prune() takes), in one streamed pass: the candidates must read the original's
    inputs and give its outputs."""
    names = [o.name for o in original.graph.output]
    runs = [session(m) for m in (original, *candidates)]
    squared = np.zeros(len(candidates))
    energy = 0.0
    for _, feed in batches(original, data):
        reference = [np.asarray(y, dtype=np.float64) for y in runs[0].run(names, feed)]
        energy += sum(float(np.sum(y * y)) for y in reference)
        for k, run in enumerate(runs[1:]):
            outputs = run.run(names, feed)
            squared[k] += sum(float(np.sum((np.asarray(y, dtype=np.float64) - r) ** 2))
                              for y, r in zip(outputs, reference))
    return [float(np.sqrt(e / energy)) if energy > 0 else float(np.sqrt(e)) for e in squared]
