"""Channel-coupling analysis: which slices of which tensors move together when a channel goes."""
from onnxprune.coupling import (  # noqa: F401  (rules)
    rules_attention, rules_elementwise, rules_fused, rules_layers, rules_quant, rules_shape, rules_slicing)
from onnxprune.coupling.analysis import Analysis, ChannelGroup, Layer, Member, analyze
from onnxprune.coupling.channel_map import ChannelMap, ConstantUse

__all__ = ["Analysis", "ChannelGroup", "ChannelMap", "ConstantUse", "Layer", "Member", "analyze"]
