"""ResNet-50 and ViT-B/16 as torchvision writes them, in plain torch.nn (torchvision is not a dependency), and
their torch.onnx.export with either exporter.

- ResNet50: torchvision.models.resnet50 (v1.5: stride on the 3x3 conv of a bottleneck), 25.6M params.
- ViTB16: torchvision.models.vit_b_16 (conv_proj 16x16, class token, learned position embedding, 12 encoder
  blocks ln_1 -> nn.MultiheadAttention(768, 12, batch_first=True) -> residual, ln_2 -> MLP 3072 with GELU ->
  residual, final LayerNorm, head on the class token), 86.6M params.

export(name, path, dynamo) writes `path` (ONNX, batch 1 x 3 x 224 x 224, opset 17 legacy / 18 dynamo);
weights are random (seeded; norm statistics, scales and biases distinct as in a trained model), in eval mode.
"""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for k in range(blocks):
                stage.append(Bottleneck(cin, width, stride if k == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class EncoderBlock(nn.Module):
    def __init__(self, heads: int, dim: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, dim), nn.Dropout(0.0))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = self.dropout(y) + x
        return x + self.mlp(self.ln_2(x))


class ViTB16(nn.Module):
    def __init__(self, image: int = 224, patch: int = 16, layers: int = 12, heads: int = 12, dim: int = 768,
                 mlp: int = 3072, classes: int = 1000):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        seq = (image // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, seq, dim).normal_(std=0.02))
        self.layers = nn.Sequential(*(EncoderBlock(heads, dim, mlp) for _ in range(layers)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x)
        x = x.reshape(n, self.dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = self.ln(self.layers(x + self.pos_embedding))
        return self.head(x[:, 0])


def _trained_like(model: nn.Module) -> None:
    """Norm statistics, scales and biases made distinct, as after training (fresh zero biases and unit scales
    are identical tensors that exporters de-duplicate into one shared initializer)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.02)


MODELS = {"resnet50": ResNet50, "vit_b16": ViTB16}


def export(name: str, path: str, dynamo: bool, seed: int = 0) -> int:
    """Export MODELS[name] to `path` with the legacy (dynamo=False) or the dynamo exporter; returns params."""
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    _trained_like(model)
    args = (torch.randn(1, 3, 224, 224),)
    if dynamo:
        with torch.no_grad():
            program = torch.onnx.export(model, args, dynamo=True, external_data=False)
        program.save(path)
    else:  # with gradients on: under no_grad nn.MultiheadAttention takes a fused path the legacy exporter lacks
        torch.onnx.export(model, args, path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"])
    return sum(p.numel() for p in model.parameters())
