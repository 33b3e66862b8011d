"""Channel-coupling analysis: which slices of which tensors move together when a channel goes."""
from onnxprune.coupling import rules_elementwise, rules_layers, rules_shape  # noqa: F401  (register rules)
from onnxprune.coupling.analysis import Analysis, ChannelGroup, Layer, Member, analyze
from onnxprune.coupling.channel_map import ChannelMap, ConstantUse

__all__ = ["Analysis", "ChannelGroup", "ChannelMap", "ConstantUse", "Layer", "Member", "analyze"]
