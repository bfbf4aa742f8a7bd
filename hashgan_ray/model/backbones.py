"""Image feature module E^I (feature maps) and the image part of the hashing
module D^I (the layers between the maps and the code).

    vgg19     conv1_1 .. conv5_4 (+ReLU) -> maps (512, S/16, S/16); head: pool5, fc6, fc7
    resnet18  conv1 .. layer4              -> maps (512, S/32, S/32); head: global avg pool
    small     4 conv blocks, CPU-sized     -> maps (128, S/8, S/8);   head (small_head):
                maxpool: global max pool, fc 512
                grid:    max pool 2x2 to an (S/16, S/16) grid (4x4 at 64 px), flatten,
                         fc 512, fc 512 - VGG's pool5 -> fc6 -> fc7 in small

Pretrained weights are never downloaded: they load from a local file
(`backbone_weights`) or torchvision's cache, and a clear error says where to put
them when asked for and absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from hashgan_ray.config import SMALL_HEADS

# torchvision's file names for the ImageNet weights (what its cache holds).
TORCHVISION_FILES = {"vgg19": "vgg19-dcbb9e9d.pth", "resnet18": "resnet18-f37072fd.pth"}


def _small_trunk() -> nn.Sequential:
    layers, c_in = [], 3
    for c_out, stride in ((32, 1), (64, 2), (128, 2), (128, 2)):   # total stride 8
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers)


def _small_head(kind: str, image_size: int) -> nn.Sequential:
    if kind == "maxpool":
        # "Is this pattern anywhere": one max over positions. Masking a position
        # can then only hide the maximum, never remove clutter (attention issue).
        return nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1), nn.Linear(128, 512),
                             nn.ReLU(inplace=True))
    if kind == "grid":
        # Like VGG19's pool5 -> fc6 -> fc7: every grid cell has its own fc6 weights,
        # so a masked position takes its contribution out of the features.
        side = image_size
        for _ in range(3):                       # the trunk's three stride-2 convs
            side = (side + 1) // 2
        grid = max(1, side // 2)                 # MaxPool2d(2) floors
        return nn.Sequential(nn.MaxPool2d(2), nn.Flatten(1), nn.Linear(128 * grid * grid, 512),
                             nn.ReLU(inplace=True), nn.Linear(512, 512), nn.ReLU(inplace=True))
    raise ValueError(f"small_head must be one of {SMALL_HEADS}, got {kind!r}")


def build_image_backbone(name: str, image_size: int,
                         small_head: str = "maxpool") -> tuple[nn.Module, nn.Module, int, int]:
    """(trunk, head, channels C of the maps, width of the head's output).

    trunk: uint8-normalised image (N, 3, S, S) -> maps (N, C, H, W)
    head:  (attended or unattended) maps -> (N, width) features for the code layer
    """
    if name == "vgg19":
        vgg = models.vgg19(weights=None)
        trunk = vgg.features[:36]                    # up to conv5_4 + ReLU (pool5 excluded)
        head = nn.Sequential(vgg.features[36], vgg.avgpool, nn.Flatten(1),
                             *list(vgg.classifier.children())[:6])   # pool5, fc6, fc7
        return trunk, head, 512, 4096
    if name == "resnet18":
        net = models.resnet18(weights=None)
        trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                              net.layer1, net.layer2, net.layer3, net.layer4)
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return trunk, head, 512, 512
    if name == "small":
        return _small_trunk(), _small_head(small_head, image_size), 128, 512
    raise ValueError(f"unknown backbone {name!r}")


def pretrained_path(name: str, weights: str | None) -> Path:
    """The local file to load: `weights` if given, else torchvision's cache."""
    if name not in TORCHVISION_FILES:
        raise ValueError(f"no pretrained weights exist for the {name!r} backbone")
    if weights:
        path = Path(weights)
    else:
        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        path = hub / "hub" / "checkpoints" / TORCHVISION_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained {name} weights not found at {path}. Nothing is downloaded at run "
            f"time: copy torchvision's ImageNet file ({TORCHVISION_FILES[name]}) "
            "there, or pass --backbone-weights PATH")
    return path


def load_pretrained(trunk: nn.Module, head: nn.Module, name: str, weights: str | None) -> None:
    """Copy torchvision ImageNet weights into the trunk and head (weights_only load)."""
    state = torch.load(pretrained_path(name, weights), map_location="cpu", weights_only=True)
    full = getattr(models, name)(weights=None)
    full.load_state_dict(state)          # checks the file really is this architecture
    # The trunk and head are slices of the same torchvision modules: copy slice by slice.
    if name == "vgg19":
        trunk.load_state_dict(full.features[:36].state_dict())
        head[0:2].load_state_dict(nn.Sequential(full.features[36], full.avgpool).state_dict())
        head[3:].load_state_dict(nn.Sequential(*list(full.classifier.children())[:6]).state_dict())
    else:
        trunk.load_state_dict(nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool,
                                            full.layer1, full.layer2, full.layer3,
                                            full.layer4).state_dict())
