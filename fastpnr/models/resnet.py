"""ResNet-18/50 (torchvision's layout, re-implemented so the core does not import torchvision).

The CIFAR stem of the anchors replaces the 7x7/2 convolution and the max-pool with a 3x3/1 convolution
with ``padding=2`` (not 1: a quirk of cassle/methods/base.py kept for reproducibility; feature maps are
then 34 -> 17 -> 9 -> 5 for 32 px inputs). The anchors swap that stem in after torchvision's initialization, so
it keeps ``nn.Conv2d``'s default init (kaiming-uniform, a=sqrt(5): U(-1/sqrt(27), 1/sqrt(27))), not the
kaiming-normal of every other convolution.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import require


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int):
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """Backbone returning pooled features (B, feat_dim); ``fc`` is omitted (the anchors set it to Identity).

    ``width`` is the base width (channels of the stem and layer1; layers 2-4 double it): 64 is torchvision's and the
    anchors'; smaller widths make scaled-down studies cheap.
    """

    def __init__(self, block, layers, cifar_stem: bool = False, stem_padding: int = 2, zero_init_residual: bool = False,
                 width: int = 64):
        super().__init__()
        require(isinstance(width, int) and width >= 1, "model.width", width, "an integer >= 1")
        self.inplanes = width
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, 3, 1, stem_padding, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = 8 * width * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)
        if cifar_stem:
            self.conv1.reset_parameters()  # the anchors' stem is built after the init above (cassle/methods/base.py)

    def _make_layer(self, block, planes, blocks, stride=1):
        layers = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


BACKBONES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def build_backbone(name: str, cifar_stem: bool = False, stem_padding: int = 2, zero_init_residual: bool = False,
                   width: int = 64) -> ResNet:
    require(name in BACKBONES, "model.backbone", name, sorted(BACKBONES))
    block, layers = BACKBONES[name]
    return ResNet(block, layers, cifar_stem=cifar_stem, stem_padding=stem_padding, zero_init_residual=zero_init_residual,
                  width=width)
