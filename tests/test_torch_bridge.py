"""onnxprune.torch.apply_pruning: the pruned torch module computes what the pruned ONNX model computes, and trains."""
from __future__ import annotations

import builtins
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import onnxprune as op  # noqa: E402
from onnxprune.errors import InvalidRequestError, OnnxPruneError  # noqa: E402
from onnxprune.torch import BridgeError, apply_pruning  # noqa: E402


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.ln = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(y + self.bn2(self.conv2(y)))
        y = torch.relu(self.conv3(y)).mean((2, 3))
        return self.fc(self.ln(y))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 24, 1)
        self.bn0 = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.project = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.bn0(self.expand(x)))
        y = torch.relu(self.bn1(self.dw(y)))
        return self.head(self.project(y).mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(20)
        self.c = nn.Conv1d(20, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        y = self.c(y.flatten(2))
        return self.fc(torch.relu(y).mean(2))


def randomized(module):
    """Non-trivial BatchNorm statistics and affine values, so that pruning them wrongly shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    return module.eval()


def export(module, x, **kwargs) -> onnx.ModelProto:
    options = dict(opset_version=17, dynamo=False, input_names=["x"], output_names=["y"],
                   dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                   training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    options.update(kwargs)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, **options)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("make", [Residual, Depthwise, Concat])
def test_pruned_module_matches_pruned_onnx_and_trains(make):
    torch.manual_seed(0)
    module = randomized(make())
    x = torch.randn(4, 3, 8, 8)
    model = export(module, x)
    result = op.prune(model, "l2", ratio=0.5)
    assert result.pruned_groups and result.weights
    params_before = sum(p.numel() for p in module.parameters())
    assert apply_pruning(module, result) is module
    assert sum(p.numel() for p in module.parameters()) < params_before
    with torch.no_grad():
        mine = module.eval()(x).numpy()
    onnx_out = ort.InferenceSession(result.model.SerializeToString()).run(None, {"x": x.numpy()})[0]
    assert mine.shape == onnx_out.shape
    assert np.abs(mine - onnx_out).max() <= 1e-4 * max(1.0, np.abs(onnx_out).max())
    # the attributes follow the shapes: re-exporting works and gives the same graph sizes
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels and m.weight.shape[1] * m.groups == m.in_channels
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0]
        if isinstance(m, nn.Linear):
            assert tuple(m.weight.shape) == (m.out_features, m.in_features)
    assert op.stats(export(module, x)).params == op.stats(result.model).params
    # one training step
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(module(x), torch.zeros(4, dtype=torch.long))
    optimizer.zero_grad()
    loss.backward()
    before = [p.detach().clone() for p in module.parameters()]
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, module.parameters()))


def test_depthwise_groups_follow(tmp_path):
    module = randomized(Depthwise())
    result = op.prune(export(module, torch.randn(1, 3, 8, 8)), "l2", ratio=0.5)
    apply_pruning(module, result)
    assert module.dw.groups == module.dw.in_channels == module.dw.out_channels == 12


def test_plan_needs_the_model_and_works_with_it(tmp_path):
    module = randomized(Residual())
    x = torch.randn(2, 3, 8, 8)
    model = export(module, x)
    result = op.prune(model, "l2", ratio=0.5)
    result.plan.save(tmp_path / "plan.json")
    with pytest.raises(InvalidRequestError, match="model="):
        apply_pruning(module, str(tmp_path / "plan.json"))
    apply_pruning(module, str(tmp_path / "plan.json"), model=model)
    with torch.no_grad():
        mine = module(x).numpy()
    onnx_out = ort.InferenceSession(result.model.SerializeToString()).run(None, {"x": x.numpy()})[0]
    assert np.abs(mine - onnx_out).max() <= 1e-4 * max(1.0, np.abs(onnx_out).max())


def test_folded_batchnorm_is_explained_and_nothing_changes():
    module = randomized(Residual())
    x = torch.randn(1, 3, 8, 8)
    folded = export(module, x, training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    result = op.prune(folded, "l2", ratio=0.5)
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    with pytest.raises(BridgeError, match="TrainingMode.PRESERVE") as info:
        apply_pruning(module, result)
    assert "BatchNorm" in str(info.value) and isinstance(info.value, OnnxPruneError)
    assert shapes == {n: tuple(p.shape) for n, p in module.named_parameters()}


def test_already_pruned_module_is_refused():
    module = randomized(Residual())
    result = op.prune(export(module, torch.randn(1, 3, 8, 8)), "l2", ratio=0.5)
    apply_pruning(module, result)
    with pytest.raises(BridgeError, match="already pruned"):
        apply_pruning(module, result)


def test_missing_torch_names_the_extra(monkeypatch):
    from onnxprune.torch import bridge

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(OnnxPruneError, match=r'pip install "onnxprune\[torch\]" \(torch==2.13.0\)'):
        bridge.apply_pruning(object(), None)
