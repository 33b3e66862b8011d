"""A Llama-shaped decoder built with onnx.helper: the prefill graph of a KV-cache-free causal LM.

    model = llama_decoder(LlamaConfig.small())                       # a few hundred KB, weights inline
    nbytes, params = write_llama(path, LlamaConfig.big(2.5e9))       # >= 2.5 GB, weights in <path>.data

The graph is what Llama exports look like (legacy torch.onnx.export of transformers' LlamaForCausalLM,
opset 17, decomposed ops): input_ids (batch, sequence) -> Gather from the embedding table -> `layers` x
[RMSNorm -> q/k/v MatMul -> Reshape into heads (target computed from Shape/Gather/Unsqueeze/Concat) ->
Transpose -> RoPE (cos/sin computed ONCE from Range(0, sequence) and the inverse frequencies, shared by every
layer; rotate_half by two Slices, Neg, Concat) -> GQA repeat_kv (Unsqueeze, Expand, Reshape) -> q @ k^T * scale
+ causal mask (made from the sequence length: ConstantOfShape, Trilu) -> Softmax -> @ v -> Transpose, Reshape
-> o_proj, residual Add; RMSNorm -> SwiGLU MLP (gate * Sigmoid(gate) * up -> down), residual Add] -> RMSNorm ->
lm_head MatMul to `vocab` logits. RMSNorm is x * 1/Sqrt(ReduceMean(x*x) + eps) * weight.

Weights are random (seeded); big models are written to the external data file one chunk of rows at a time,
so the generator never holds more than one chunk. `tied=True` makes lm_head read the embedding table through
a Transpose (tied embeddings).
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CHUNK_BYTES = 64 << 20  # rows generated and written at a time


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    layers: int = 2
    dim: int = 64
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    vocab: int = 512
    tied: bool = False
    theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def params(self) -> int:
        kv = self.kv_heads * self.head_dim
        per_layer = self.dim * (2 * self.dim + 2 * kv) + 3 * self.dim * self.ffn + 2 * self.dim
        heads = 1 if self.tied else 2
        return self.layers * per_layer + heads * self.vocab * self.dim + self.dim

    @classmethod
    def small(cls, layers: int = 2, tied: bool = False) -> "LlamaConfig":
        """A few hundred KB: for tests (4 query heads of 16, 2 KV heads, vocabulary 512)."""
        return cls(layers=layers, tied=tied)

    @classmethod
    def big(cls, min_bytes: float = 2.5e9) -> "LlamaConfig":
        """TinyLlama-1.1B widths (dim 2048, 32 heads of 64, 4 KV heads, SwiGLU 5632, vocabulary 32000) with as
        many layers as it takes for `min_bytes` of float32 weights."""
        base = cls(layers=0, dim=2048, heads=32, kv_heads=4, ffn=5632, vocab=32000)
        per_layer = (cls(layers=1, dim=2048, heads=32, kv_heads=4, ffn=5632, vocab=32000).params - base.params) * 4
        layers = max(1, math.ceil((min_bytes - base.params * 4) / per_layer))
        return dataclasses.replace(base, layers=layers)


class _Weights:
    """Makes weight initializers: inline arrays, or rows appended chunk by chunk to an external data file."""

    def __init__(self, seed: int, data_file=None, data_name: str | None = None):
        self.rng = np.random.default_rng(seed)
        self.file = data_file
        self.data_name = data_name
        self.inits: list[TensorProto] = []

    def add(self, name: str, shape: tuple[int, ...], scale: float, offset: float = 0.0) -> str:
        if self.file is None:
            array = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) + np.float32(offset)
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        rows, row_elems = shape[0], math.prod(shape[1:])
        step = max(1, CHUNK_BYTES // (4 * max(row_elems, 1)))
        start = self.file.tell()
        for r in range(0, rows, step):
            block = self.rng.standard_normal((min(step, rows - r), row_elems), dtype=np.float32)
            block *= np.float32(scale)
            if offset:
                block += np.float32(offset)
            self.file.write(block.tobytes())
        t = TensorProto(name=name, dims=list(shape), data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.data_name), ("offset", str(start)),
                           ("length", str(4 * math.prod(shape)))):
            t.external_data.add(key=key, value=value)
        self.inits.append(t)
        return name


class _Graph:
    def __init__(self, weights: _Weights):
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[TensorProto] = []
        self._n = 0

    def const(self, name: str, array) -> str:
        self.consts.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str = "", n_out: int = 1, **attrs) -> str:
        self._n += 1
        name = f"{prefix}{op.lower()}_{self._n}"
        outs = [f"{name}_out{k}" if n_out > 1 else f"{name}_out" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]


def llama_decoder(config: LlamaConfig, *, seed: int = 0, data_file=None,
                  data_name: str | None = None) -> onnx.ModelProto:
    """The decoder's ModelProto; weights inline, or appended to the open binary `data_file` (external data
    named `data_name`, relative to the model file)."""
    c = config
    hd, kv_dim = c.head_dim, c.kv_heads * c.head_dim
    w = _Weights(seed, data_file, data_name)
    g = _Graph(w)
    embed = w.add("model.embed_tokens.weight", (c.vocab, c.dim), 0.02)
    x = g.node("Gather", [embed, "input_ids"], "embed/", axis=0)

    # shared pieces computed from the input: batch and sequence dims, RoPE cos/sin, causal mask
    shape = g.node("Shape", ["input_ids"], "dims/")
    zero, one = g.const("idx0", np.array(0, np.int64)), g.const("idx1", np.array(1, np.int64))
    batch = g.node("Unsqueeze", [g.node("Gather", [shape, zero], "dims/", axis=0), g.const("ax0", np.array([0]))],
                   "dims/")
    seq_scalar = g.node("Gather", [shape, one], "dims/", axis=0)
    seq = g.node("Unsqueeze", [seq_scalar, "ax0"], "dims/")
    positions = g.node("Cast", [g.node("Range", [g.const("start", np.array(0, np.int64)), seq_scalar,
                                                 g.const("delta", np.array(1, np.int64))], "rope/")],
                       "rope/", to=TensorProto.FLOAT)
    inv_freq = g.const("rope.inv_freq", (1.0 / c.theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
                       .astype(np.float32).reshape(1, hd // 2))
    freqs = g.node("Mul", [g.node("Unsqueeze", [positions, g.const("ax1", np.array([1]))], "rope/"), inv_freq],
                   "rope/")
    emb = g.node("Concat", [freqs, freqs], "rope/", axis=-1)
    cos = g.node("Unsqueeze", [g.node("Cos", [emb], "rope/"), g.const("ax01", np.array([0, 1]))], "rope/")
    sin = g.node("Unsqueeze", [g.node("Sin", [emb], "rope/"), "ax01"], "rope/")
    square = g.node("Concat", [seq, seq], "mask/", axis=0)
    neg_inf = helper.make_tensor("fill", TensorProto.FLOAT, [1], [np.finfo(np.float32).min])
    mask = g.node("Trilu", [g.node("ConstantOfShape", [square], "mask/", value=neg_inf), one], "mask/", upper=1)
    heads_shape = g.node("Concat", [batch, seq, g.const("heads", np.array([c.heads, hd], np.int64))], "dims/", axis=0)
    kv_shape = g.node("Concat", [batch, seq, g.const("kv_heads", np.array([c.kv_heads, hd], np.int64))], "dims/",
                      axis=0)
    rep = c.heads // c.kv_heads
    expand_shape = g.node("Concat", [batch, g.const("kv_rep", np.array([c.kv_heads, rep], np.int64)), seq,
                                     g.const("hd", np.array([hd], np.int64))], "dims/", axis=0)
    repeated_shape = g.node("Concat", [batch, g.const("all_heads", np.array([c.heads], np.int64)), seq, "hd"],
                            "dims/", axis=0)
    merged_shape = g.node("Concat", [batch, seq, g.const("dim", np.array([c.dim], np.int64))], "dims/", axis=0)
    eps = g.const("eps", np.array(1e-6, np.float32))
    scale = g.const("attn_scale", np.array(1.0 / math.sqrt(hd), np.float32))
    half = hd // 2
    lo, mid, hi, last = (g.const(n, np.array([v], np.int64)) for n, v in
                         (("rot_lo", 0), ("rot_mid", half), ("rot_hi", hd), ("rot_axis", -1)))

    def rms_norm(t: str, name: str, p: str) -> str:
        weight = w.add(name, (c.dim,), 0.1, offset=1.0)
        var = g.node("ReduceMean", [g.node("Mul", [t, t], p)], p, axes=[-1], keepdims=1)
        inv = g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [var, eps], p)], p)], p)
        return g.node("Mul", [g.node("Mul", [t, inv], p), weight], p)

    def linear(t: str, name: str, cin: int, cout: int, p: str) -> str:
        return g.node("MatMul", [t, w.add(name, (cin, cout), 1.0 / math.sqrt(cin))], p)

    def rope(t: str, p: str) -> str:
        first = g.node("Slice", [t, lo, mid, last], p)
        second = g.node("Slice", [t, mid, hi, last], p)
        rotated = g.node("Concat", [g.node("Neg", [second], p), first], p, axis=-1)
        return g.node("Add", [g.node("Mul", [t, cos], p), g.node("Mul", [rotated, sin], p)], p)

    ax2 = g.const("ax2", np.array([2]))

    def repeat_kv(t: str, p: str) -> str:
        if rep == 1:
            return t
        t = g.node("Expand", [g.node("Unsqueeze", [t, ax2], p), expand_shape], p)
        return g.node("Reshape", [t, repeated_shape], p)

    for i in range(c.layers):
        p = f"layers.{i}/"
        h = rms_norm(x, f"model.layers.{i}.input_layernorm.weight", p)
        q = linear(h, f"model.layers.{i}.self_attn.q_proj.weight", c.dim, c.dim, p)
        k = linear(h, f"model.layers.{i}.self_attn.k_proj.weight", c.dim, kv_dim, p)
        v = linear(h, f"model.layers.{i}.self_attn.v_proj.weight", c.dim, kv_dim, p)
        q = g.node("Transpose", [g.node("Reshape", [q, heads_shape], p)], p, perm=[0, 2, 1, 3])
        k = g.node("Transpose", [g.node("Reshape", [k, kv_shape], p)], p, perm=[0, 2, 1, 3])
        v = g.node("Transpose", [g.node("Reshape", [v, kv_shape], p)], p, perm=[0, 2, 1, 3])
        q, k = rope(q, p), rope(k, p)
        k, v = repeat_kv(k, p), repeat_kv(v, p)
        s = g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [k], p, perm=[0, 1, 3, 2])], p), scale], p)
        probs = g.node("Softmax", [g.node("Add", [s, mask], p)], p, axis=-1)
        a = g.node("Transpose", [g.node("MatMul", [probs, v], p)], p, perm=[0, 2, 1, 3])
        a = g.node("Reshape", [a, merged_shape], p)
        x = g.node("Add", [x, linear(a, f"model.layers.{i}.self_attn.o_proj.weight", c.dim, c.dim, p)], p)
        h = rms_norm(x, f"model.layers.{i}.post_attention_layernorm.weight", p)
        gate = linear(h, f"model.layers.{i}.mlp.gate_proj.weight", c.dim, c.ffn, p)
        up = linear(h, f"model.layers.{i}.mlp.up_proj.weight", c.dim, c.ffn, p)
        act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate], p)], p), up], p)
        x = g.node("Add", [x, linear(act, f"model.layers.{i}.mlp.down_proj.weight", c.ffn, c.dim, p)], p)
    x = rms_norm(x, "model.norm.weight", "final/")
    if c.tied:
        logits = g.node("MatMul", [x, g.node("Transpose", [embed], "lm_head/", perm=[1, 0])], "lm_head/")
    else:
        logits = linear(x, "lm_head.weight", c.dim, c.vocab, "lm_head/")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    graph = helper.make_graph(
        g.nodes, "llama_decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", c.vocab])],
        w.inits + g.consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxprune-benchmark")
    model.ir_version = 8
    return model


def write_llama(path: str, config: LlamaConfig, *, seed: int = 0) -> tuple[int, int]:
    """Write the decoder to `path` with its weights in `<basename>.data` beside it, chunk by chunk.

    Returns (weight bytes, params)."""
    data_name = os.path.basename(path) + ".data"
    with open(os.path.join(os.path.dirname(os.path.abspath(path)), data_name), "wb") as f:
        model = llama_decoder(config, seed=seed, data_file=f, data_name=data_name)
        nbytes = f.tell()
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return nbytes, config.params
