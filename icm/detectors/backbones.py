"""The ResNet-18 body (torchvision's layout: ``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1..4`` of two BasicBlocks each) at any stage widths: the full network for the
CenterNet layouts, quarter width (16..128 channels, 0.7 M parameters) for toy models."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.resnet import BasicBlock

RESNET18_WIDTHS = (64, 128, 256, 512)
QUARTER_WIDTHS = (16, 32, 64, 128)


def resnet18_body(widths: tuple[int, int, int, int] = RESNET18_WIDTHS) -> OrderedDict[str, nn.Module]:
    """The body's modules by name, in forward order (output strides 4, 4, 8, 16, 32 for
    ``layer1..4``), with torchvision's ResNet initialisation of the convolutions."""
    body: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(widths[0]),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, stride=2, padding=1),
    )
    in_channels = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or in_channels != width:
            downsample = nn.Sequential(nn.Conv2d(in_channels, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        body[f"layer{i + 1}"] = nn.Sequential(BasicBlock(in_channels, width, stride, downsample), BasicBlock(width, width))
        in_channels = width
    for module in body.values():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return body
