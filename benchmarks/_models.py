"""Synthetic benchmark graphs with real (random) weights, built with onnx.helper + numpy.

Nothing here is committed as a model: benchmarks/prune_speed.py calls these builders and writes the
graphs to a temporary folder. Every builder is deterministic (fixed seed).

- resnet50_like: ResNet-50 v1.5 topology (stem, bottlenecks [3, 4, 6, 3], BatchNormalization,
  residual Add, projection shortcuts, GlobalAveragePool, Flatten, Gemm), about 25.6M params.
- vit_b16_like: ViT-B/16 (patch Conv, class token, position embedding, 12 pre-LN encoder blocks:
  LayerNormalization, Q/K/V MatMul+Add, Reshape into 12 heads of 64, Transpose, Softmax attention,
  output projection, erf-GELU MLP 768-3072-768, residual Adds, final LN, Gather class token, Gemm
  head), about 86.6M params.
- conv_blocks: a stem Conv and `units` x 8 ResNet bottleneck blocks (512-128-128-512) at 28x28,
  for the linear-scaling table.
- write_big_mlp: MatMul(8192x8192) layers with Relu between, weights in one external data file,
  written chunk by chunk (the generator never holds more than one chunk of weights).
"""
from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization needs 17


class _Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.params = 0
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, array: np.ndarray, count: bool = True) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        if count and array.dtype.kind == "f":
            self.params += array.size
        return name

    def weight(self, base: str, shape: tuple, fan_in: int) -> str:
        w = self.rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(math.sqrt(2.0 / fan_in))
        return self.const(base, w)

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        name = self.name(op.lower())
        outs = [f"{name}_out{k}" if n_out > 1 else f"{name}_out" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    # ---- CNN pieces ----------------------------------------------------------------------
    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        w = self.weight("conv_w", (cout, cin, k, k), cin * k * k)
        y = self.node("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        scale = self.const("bn_scale", self.rng.uniform(0.5, 1.5, cout).astype(np.float32))
        bias = self.const("bn_bias", self.rng.uniform(-0.1, 0.1, cout).astype(np.float32))
        mean = self.const("bn_mean", self.rng.uniform(-0.1, 0.1, cout).astype(np.float32))
        var = self.const("bn_var", self.rng.uniform(0.5, 1.5, cout).astype(np.float32))
        y = self.node("BatchNormalization", [y, scale, bias, mean, var], epsilon=1e-5)
        return self.node("Relu", [y]) if relu else y

    def bottleneck(self, x: str, cin: int, width: int, stride: int) -> str:
        cout = 4 * width
        y = self.conv_bn(x, cin, width, 1)
        y = self.conv_bn(y, width, width, 3, stride)
        y = self.conv_bn(y, width, cout, 1, relu=False)
        short = x if (cin == cout and stride == 1) else self.conv_bn(x, cin, cout, 1, stride, relu=False)
        return self.node("Relu", [self.node("Add", [y, short])])

    def head(self, x: str, cin: int, classes: int) -> str:
        y = self.node("GlobalAveragePool", [x])
        y = self.node("Flatten", [y], axis=1)
        w = self.weight("fc_w", (classes, cin), cin)
        b = self.const("fc_b", np.zeros(classes, np.float32))
        return self.node("Gemm", [y, w, b], transB=1)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], output: str, out_shape: list) -> onnx.ModelProto:
        outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)]
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="onnxprune-benchmark")
        model.ir_version = 8
        return model


def resnet50_like(seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """ResNet-50 topology with random weights; returns (model, params)."""
    b = _Builder(seed)
    x = "input"
    y = b.conv_bn(x, 3, 64, 7, 2)
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for k in range(blocks):
            y = b.bottleneck(y, cin, width, stride if k == 0 else 1)
            cin = 4 * width
    y = b.head(y, cin, 1000)
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, 224, 224])]
    return b.model("resnet50_like", inputs, y, [1, 1000]), b.params


def conv_blocks(units: int, blocks_per_unit: int = 8, seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """Stem Conv + units*blocks_per_unit bottlenecks (512-128-128-512, 28x28) + head."""
    b = _Builder(seed)
    x = "input"
    y = b.conv_bn(x, 3, 512, 3)
    for _ in range(units * blocks_per_unit):
        y = b.bottleneck(y, 512, 128, 1)
    y = b.head(y, 512, 10)
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, 28, 28])]
    return b.model(f"conv_blocks_x{units}", inputs, y, [1, 10]), b.params


def vit_b16_like(seed: int = 0, layers: int = 12, dim: int = 768, heads: int = 12, mlp: int = 3072,
                 image: int = 224, patch: int = 16, classes: int = 1000) -> tuple[onnx.ModelProto, int]:
    """ViT-B/16 encoder stack with random weights; returns (model, params)."""
    b = _Builder(seed)
    tokens = (image // patch) ** 2
    seq = tokens + 1
    hd = dim // heads
    x = "pixel_values"
    w = b.weight("patch_w", (dim, 3, patch, patch), 3 * patch * patch)
    pb = b.const("patch_b", np.zeros(dim, np.float32))
    y = b.node("Conv", [x, w, pb], kernel_shape=[patch, patch], strides=[patch, patch])
    y = b.node("Reshape", [y, b.const("shape", np.array([1, dim, tokens], np.int64))])
    y = b.node("Transpose", [y], perm=[0, 2, 1])
    cls = b.const("cls_token", b.rng.standard_normal((1, 1, dim), dtype=np.float32) * np.float32(0.02))
    y = b.node("Concat", [cls, y], axis=1)
    pos = b.const("pos_embed", b.rng.standard_normal((1, seq, dim), dtype=np.float32) * np.float32(0.02))
    y = b.node("Add", [y, pos])
    heads_shape = b.const("heads_shape", np.array([1, seq, heads, hd], np.int64))
    merge_shape = b.const("merge_shape", np.array([1, seq, dim], np.int64))
    scale = b.const("attn_scale", np.array(1.0 / math.sqrt(hd), np.float32), count=False)
    sqrt2 = b.const("sqrt2", np.array(math.sqrt(2.0), np.float32), count=False)
    one = b.const("one", np.array(1.0, np.float32), count=False)
    half = b.const("half", np.array(0.5, np.float32), count=False)

    def layer_norm(t: str) -> str:
        g = b.const("ln_g", np.ones(dim, np.float32))
        beta = b.const("ln_b", np.zeros(dim, np.float32))
        return b.node("LayerNormalization", [t, g, beta], axis=-1, epsilon=1e-6)

    def linear(t: str, cin: int, cout: int) -> str:
        wt = b.weight("w", (cin, cout), cin)
        bias = b.const("b", np.zeros(cout, np.float32))
        return b.node("Add", [b.node("MatMul", [t, wt]), bias])

    for _ in range(layers):
        h = layer_norm(y)
        q, k, v = (linear(h, dim, dim) for _ in range(3))
        q = b.node("Transpose", [b.node("Reshape", [q, heads_shape])], perm=[0, 2, 1, 3])
        k = b.node("Transpose", [b.node("Reshape", [k, heads_shape])], perm=[0, 2, 3, 1])
        v = b.node("Transpose", [b.node("Reshape", [v, heads_shape])], perm=[0, 2, 1, 3])
        s = b.node("Mul", [b.node("MatMul", [q, k]), scale])
        p = b.node("Softmax", [s], axis=-1)
        a = b.node("Transpose", [b.node("MatMul", [p, v])], perm=[0, 2, 1, 3])
        a = b.node("Reshape", [a, merge_shape])
        y = b.node("Add", [y, linear(a, dim, dim)])
        h = linear(layer_norm(y), dim, mlp)
        gelu = b.node("Mul", [b.node("Mul", [h, b.node("Add", [b.node("Erf", [b.node("Div", [h, sqrt2])]), one])]),
                              half])
        y = b.node("Add", [y, linear(gelu, mlp, dim)])
    y = layer_norm(y)
    first = b.const("cls_index", np.array(0, np.int64), count=False)
    y = b.node("Gather", [y, first], axis=1)
    hw = b.weight("head_w", (classes, dim), dim)
    hb = b.const("head_b", np.zeros(classes, np.float32))
    y = b.node("Gemm", [y, hw, hb], transB=1)
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, image, image])]
    return b.model("vit_b16_like", inputs, y, [1, classes]), b.params


def write_big_mlp(path: str, min_bytes: int, dim: int = 8192, chunk_rows: int = 1024,
                  seed: int = 0) -> tuple[int, int]:
    """Write MatMul(dim x dim) layers with Relu between, weights in external data `<path>.data`.

    Enough layers for at least `min_bytes` of float32 weights. Weights are generated and written
    `chunk_rows` rows at a time. Returns (weight bytes, params).
    """
    per_layer = dim * dim * 4
    n = max(2, math.ceil(min_bytes / per_layer))
    data_name = os.path.basename(path) + ".data"
    rng = np.random.default_rng(seed)
    scale = np.float32(math.sqrt(2.0 / dim))
    nodes, inits = [], []
    x = "input"
    with open(os.path.join(os.path.dirname(path), data_name), "wb") as f:
        for i in range(n):
            offset = f.tell()
            for _ in range(0, dim, chunk_rows):
                block = rng.standard_normal((chunk_rows, dim), dtype=np.float32)
                block *= scale
                f.write(block.tobytes())
            t = TensorProto(name=f"w{i}", dims=[dim, dim], data_type=TensorProto.FLOAT)
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(per_layer))):
                e = t.external_data.add()
                e.key, e.value = key, value
            inits.append(t)
            y = f"mm{i}_out"
            nodes.append(helper.make_node("MatMul", [x, t.name], [y], name=f"mm{i}"))
            if i < n - 1:
                nodes.append(helper.make_node("Relu", [y], [f"relu{i}_out"], name=f"relu{i}"))
                y = f"relu{i}_out"
            x = y
    graph = helper.make_graph(nodes, "big_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxprune-benchmark")
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return n * per_layer, n * dim * dim


# =========================================================================================================
# Mobile / dense CNNs for benchmarks/latency_targets.py (224x224, batch 1, random weights, deterministic)
#
# - mobilenet_v2_like: MobileNetV2 1.0 (stem 3x3/2 to 32, 17 inverted residuals (expand 1x1, depthwise 3x3,
#   project 1x1; residual Add when stride 1 and cin == cout), 1x1 to 1280, head), BN after every Conv,
#   ReLU6 as Clip(0, 6); about 3.5M params.
# - densenet121_like: DenseNet-121 (stem 7x7/2 + MaxPool, dense blocks [6, 12, 24, 16] of BN-ReLU-Conv1x1(128)
#   -BN-ReLU-Conv3x3(32) whose output is Concat-ed to the block's features, transitions BN-ReLU-Conv1x1(half)
#   -AveragePool 2/2, final BN-ReLU, head); about 8.0M params.
# - efficientnet_b0_like: EfficientNet-B0 (stem 3x3/2 to 32, 16 MBConv blocks: expand 1x1 (ratio 6, none in
#   the first stage), depthwise 3x3 / 5x5, squeeze-excitation GlobalAveragePool -> Conv(+bias) -> Swish ->
#   Conv(+bias) -> Sigmoid -> Mul with squeeze = block input channels / 4, project 1x1, residual Add; 1x1 to
#   1280, head), BN after every Conv, Swish as x * Sigmoid(x); about 5.3M params.
# =========================================================================================================

class _MobileBuilder(_Builder):
    """_Builder plus grouped convs, ReLU6 / Swish activations and pre-activation BN (the pieces above unchanged)."""

    def bn(self, x: str, channels: int) -> str:
        scale = self.const("bn_scale", self.rng.uniform(0.5, 1.5, channels).astype(np.float32))
        bias = self.const("bn_bias", self.rng.uniform(-0.1, 0.1, channels).astype(np.float32))
        mean = self.const("bn_mean", self.rng.uniform(-0.1, 0.1, channels).astype(np.float32))
        var = self.const("bn_var", self.rng.uniform(0.5, 1.5, channels).astype(np.float32))
        return self.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)

    def act(self, x: str, kind: str | None) -> str:
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "relu6":
            lo = self.const("clip_min", np.array(0.0, np.float32), count=False)
            hi = self.const("clip_max", np.array(6.0, np.float32), count=False)
            return self.node("Clip", [x, lo, hi])
        if kind == "swish":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        return x

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             bias: bool = False) -> str:
        w = self.weight("conv_w", (cout, cin // groups, k, k), cin // groups * k * k)
        inputs = [x, w] + ([self.const("conv_b", np.zeros(cout, np.float32))] if bias else [])
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
                         group=groups)

    def conv_bn_act(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                    act: str | None = "relu") -> str:
        return self.act(self.bn(self.conv(x, cin, cout, k, stride, groups), cout), act)

    def squeeze_excite(self, x: str, channels: int, squeeze: int) -> str:
        s = self.node("GlobalAveragePool", [x])
        s = self.act(self.conv(s, channels, squeeze, 1, bias=True), "swish")
        s = self.node("Sigmoid", [self.conv(s, squeeze, channels, 1, bias=True)])
        return self.node("Mul", [x, s])


def _image_model(b: _MobileBuilder, name: str, y: str, x: str) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, 224, 224])]
    return b.model(name, inputs, y, [1, 1000])


def mobilenet_v2_like(seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """MobileNetV2 1.0 topology with random weights; returns (model, params)."""
    b = _MobileBuilder(seed)
    x = "input"
    y = b.conv_bn_act(x, 3, 32, 3, 2, act="relu6")
    cin = 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for k in range(repeats):
            s = stride if k == 0 else 1
            hidden = cin * expand
            h = b.conv_bn_act(y, cin, hidden, 1, act="relu6") if expand != 1 else y
            h = b.conv_bn_act(h, hidden, hidden, 3, s, groups=hidden, act="relu6")
            h = b.conv_bn_act(h, hidden, cout, 1, act=None)
            y = b.node("Add", [y, h]) if s == 1 and cin == cout else h
            cin = cout
    y = b.conv_bn_act(y, cin, 1280, 1, act="relu6")
    return _image_model(b, "mobilenet_v2_like", b.head(y, 1280, 1000), x), b.params


def densenet121_like(seed: int = 0, growth: int = 32, bottleneck: int = 4) -> tuple[onnx.ModelProto, int]:
    """DenseNet-121 topology with random weights; returns (model, params)."""
    b = _MobileBuilder(seed)
    x = "input"
    y = b.conv_bn_act(x, 3, 64, 7, 2)
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    blocks = (6, 12, 24, 16)
    for i, layers in enumerate(blocks):
        for _ in range(layers):
            h = b.conv(b.act(b.bn(y, channels), "relu"), channels, bottleneck * growth, 1)
            h = b.conv(b.act(b.bn(h, bottleneck * growth), "relu"), bottleneck * growth, growth, 3)
            y = b.node("Concat", [y, h], axis=1)
            channels += growth
        if i < len(blocks) - 1:
            y = b.conv(b.act(b.bn(y, channels), "relu"), channels, channels // 2, 1)
            y = b.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
            channels //= 2
    y = b.act(b.bn(y, channels), "relu")
    return _image_model(b, "densenet121_like", b.head(y, channels, 1000), x), b.params


def efficientnet_b0_like(seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """EfficientNet-B0 topology with random weights; returns (model, params)."""
    b = _MobileBuilder(seed)
    x = "input"
    y = b.conv_bn_act(x, 3, 32, 3, 2, act="swish")
    cin = 32
    for expand, k, stride, cout, repeats in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                                             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)):
        for r in range(repeats):
            s = stride if r == 0 else 1
            hidden = cin * expand
            h = b.conv_bn_act(y, cin, hidden, 1, act="swish") if expand != 1 else y
            h = b.conv_bn_act(h, hidden, hidden, k, s, groups=hidden, act="swish")
            h = b.squeeze_excite(h, hidden, max(1, cin // 4))
            h = b.conv_bn_act(h, hidden, cout, 1, act=None)
            y = b.node("Add", [y, h]) if s == 1 and cin == cout else h
            cin = cout
    y = b.conv_bn_act(y, cin, 1280, 1, act="swish")
    return _image_model(b, "efficientnet_b0_like", b.head(y, 1280, 1000), x), b.params


# --------------------------------------------------------------------------- decomposition benchmark (decompose_latency.py)

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg_like(seed: int = 0, image: int = 64, classes: int = 10) -> tuple[onnx.ModelProto, int]:
    """VGG-16 topology (13 3x3 Conv + bias + Relu, 5 MaxPools, Flatten, Gemm 512 - Relu - Gemm) with random
    weights at `image` x `image` input; returns (model, params)."""
    b = _Builder(seed)
    x = "input"
    y, cin = x, 3
    for item in VGG16:
        if item == "M":
            y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
            continue
        w = b.weight("conv_w", (item, cin, 3, 3), cin * 9)
        bias = b.const("conv_b", np.zeros(item, np.float32))
        y = b.node("Relu", [b.node("Conv", [y, w, bias], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
        cin = item
    y = b.node("Flatten", [y], axis=1)
    features = cin * (image // 32) ** 2
    y = b.node("Relu", [b.node("Gemm", [y, b.weight("fc_w", (512, features), features),
                                        b.const("fc_b", np.zeros(512, np.float32))], transB=1)])
    y = b.node("Gemm", [y, b.weight("fc_w", (classes, 512), 512), b.const("fc_b", np.zeros(classes, np.float32))],
               transB=1)
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, image, image])]
    return b.model("vgg_like", inputs, y, [1, classes]), b.params
