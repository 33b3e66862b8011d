"""onnxprune.workflows.evaluate: accuracy against numpy, top-5, user metrics, fidelity and clear data errors."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import InvalidRequestError
from onnxprune.workflows.evaluate import evaluate

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 7)).astype(np.float32)
B = RNG.standard_normal(7).astype(np.float32)


def classifier(w=W, b=B, batch="batch") -> onnx.ModelProto:
    """x (batch, 6) -> Gemm -> logits (batch, classes)."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["logits"], name="fc")], "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, w.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, w.shape[1]])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def data(n=103, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = rng.integers(0, 7, n)
    return x, y


def numpy_topk(x, y, k):
    logits = x @ W + B
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def test_accuracy_matches_numpy():
    x, y = data()
    result = evaluate(classifier(), (x, y), batch_size=16)
    assert result["n"] == len(x)
    assert result["top1"] == pytest.approx(numpy_topk(x, y, 1))
    assert result["top5"] == pytest.approx(numpy_topk(x, y, 5))
    assert 0 < result["top1"] <= result["top5"] <= 1


def test_iterable_of_batches_dict_inputs_and_one_hot_labels():
    x, y = data()
    batches = [({"x": x[i:i + 20]}, np.eye(7)[y[i:i + 20]]) for i in range(0, len(x), 20)]
    result = evaluate(classifier(), batches)
    assert result["n"] == len(x)
    assert result["top1"] == pytest.approx(numpy_topk(x, y, 1))
    # a generator works too (no len: no total in the progress bar)
    gen = ((x[i:i + 10], y[i:i + 10]) for i in range(0, len(x), 10))
    assert evaluate(classifier(), gen)["top1"] == pytest.approx(numpy_topk(x, y, 1))


def test_no_top5_with_fewer_than_five_classes():
    w, b = W[:, :3].copy(), B[:3].copy()
    x, _ = data()
    y = np.argmax(x @ w + b, axis=1)
    result = evaluate(classifier(w, b), (x, y))
    assert result == {"top1": 1.0, "n": len(x)}


def test_fixed_batch_model_gets_the_dataset_in_its_batches():
    x, y = data(n=12)
    result = evaluate(classifier(batch=4), (x, y))
    assert result["n"] == 12 and result["top1"] == pytest.approx(numpy_topk(x, y, 1))


def test_custom_metric_weighted_by_batch_size():
    x, y = data(n=50)

    def mse(outputs, labels):
        return float(np.mean((outputs.max(axis=1) - labels) ** 2))

    got = evaluate(classifier(), (x, y), metric=mse, batch_size=16)  # batches 16, 16, 16, 2
    per_sample = ((x @ W + B).max(axis=1) - y) ** 2
    assert got["n"] == 50
    assert got["mse"] == pytest.approx(per_sample.mean(), rel=1e-5)

    both = evaluate(classifier(), (x, y), metric=lambda o, l: {"acc": np.mean(o.argmax(1) == l), "one": 1.0})
    assert both["acc"] == pytest.approx(numpy_topk(x, y, 1)) and both["one"] == 1.0
    assert evaluate(classifier(), (x, y), metric=lambda o, l: 0.5)["metric"] == 0.5


def test_fidelity_against_reference():
    x, y = data()
    same = evaluate(classifier(), (x, y), reference=classifier())
    assert same["agreement"] == 1.0
    assert same["cosine"] == pytest.approx(1.0)
    assert same["max_rel_error"] == 0.0
    noisy_w = W + 0.3 * np.random.default_rng(5).standard_normal(W.shape).astype(np.float32)
    other = evaluate(classifier(noisy_w), (x, None), reference=classifier())
    assert "top1" not in other
    assert 0 < other["agreement"] < 1 and other["cosine"] < 1 and other["max_rel_error"] > 0
    a, r = x @ noisy_w + B, x @ W + B
    assert other["agreement"] == pytest.approx(np.mean(a.argmax(1) == r.argmax(1)))
    assert other["max_rel_error"] == pytest.approx(np.abs(a - r).max() / np.abs(r).max(), rel=1e-4)


def test_progress_bar_only_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    x, y = data()
    tty, plain = Tty(), io.StringIO()
    evaluate(classifier(), (x, y), batch_size=10, stream=tty)
    evaluate(classifier(), [(x[:10], y[:10])] * 5, stream=tty)
    evaluate(classifier(), (x, y), batch_size=10, stream=plain)
    assert "evaluate" in tty.getvalue() and "5/5" in tty.getvalue()
    assert plain.getvalue() == ""


@pytest.mark.parametrize("bad, message", [
    ((np.zeros((4, 5), np.float32), np.zeros(4, int)), "axis 1 differs"),
    ((np.zeros((4, 6), np.float64), np.zeros(4, int)), "dtype float64"),
    ((np.zeros((4, 6, 1), np.float32), np.zeros(4, int)), "rank 3"),
    (({"y": np.zeros((4, 6), np.float32)}, np.zeros(4, int)), "unknown: ['y']"),
    ((np.zeros((4, 6), np.float32), np.zeros(3, int)), "3 labels for 4 samples"),
    ((np.zeros((4, 6), np.float32), np.full(4, 9)), "7 classes"),
    ((np.zeros((4, 6), np.float32), np.full(4, 0.5)), "not class ids"),
    ((np.zeros((4, 6), np.float32), None), "no labels"),
    ([np.zeros((4, 6), np.float32)], "pair (inputs, labels)"),
    ([], "empty"),
    (np.zeros((4, 6), np.float32), "pair (inputs, labels)"),
])
def test_bad_data_errors(bad, message):
    with pytest.raises(InvalidRequestError, match=None) as info:
        evaluate(classifier(), bad)
    assert message in str(info.value)


def test_bad_arguments():
    x, y = data()
    with pytest.raises(InvalidRequestError, match="unknown metric"):
        evaluate(classifier(), (x, y), metric="f1")
    with pytest.raises(InvalidRequestError, match="no graph output"):
        evaluate(classifier(), (x, y), output="nope")
    with pytest.raises(InvalidRequestError, match="batch_size"):
        evaluate(classifier(), (x, y), batch_size=0)
