"""The served network: a small ResNet-9-style convnet for 32x32 RGB images (torch only; training side)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(in_channels: int, out_channels: int, *, pool: bool = False, groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False, groups=groups),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(channels, channels, groups=groups), _conv_bn(channels, channels, groups=groups)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _features(channels: int, groups: int) -> nn.Sequential:
    """ResNet9's convolutions, ``channels`` wide at the first; ``groups`` > 1 runs that many networks side by side
    (every convolution after the first grouped: the first reads the one image all of them share)."""
    return nn.Sequential(
        _conv_bn(3, channels),
        _conv_bn(channels, 2 * channels, pool=True, groups=groups),
        _Residual(2 * channels, groups=groups),
        _conv_bn(2 * channels, 4 * channels, pool=True, groups=groups),
        _conv_bn(4 * channels, 8 * channels, pool=True, groups=groups),
        _Residual(8 * channels, groups=groups),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )


class ResNet9(nn.Module):
    """Takes normalised float NCHW images, returns logits [N, num_classes].

    Channels ``width, 2w, 4w, 8w`` with the stride-2 pools early: at width 16 this is about 24 MMAC per 32x32
    image, small enough for sub-millisecond CPU inference while still reaching >90% on this task.
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.features = _features(width, groups=1)
        self.classifier = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LogitMean(nn.Module):
    """A seed ensemble as one network: the mean of its members' logits.

    Averaging logits and averaging log-probabilities give the same softmax (they differ by a per-image constant
    shared by all classes), so a temperature fitted on these mean logits calibrates either view of the ensemble.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


class GroupedResNet9(nn.Module):
    """A seed ensemble of equal-width ResNet9s as one network: each member's channels side by side, every
    convolution after the first grouped by member, so one pass computes every member (the mean of their logits).

    The same function as ``LogitMean`` of the members (up to float rounding), with fewer, larger operators:
    measured on 2 cores in ONNX Runtime, a single image p50 0.28-0.36 ms against 0.35-0.44 ms for the members
    one after the other. Build it from trained members with ``fuse_members``; it is for serving, not training.
    """

    def __init__(self, num_classes: int, width: int, members: int) -> None:
        super().__init__()
        self.width = width
        self.members = members
        channels = width * members
        self.features = _features(channels, groups=members)
        self.classifier = nn.Linear(8 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def fuse_members(network: nn.Module) -> nn.Module:
    """``network`` as served: a ``LogitMean`` of equal-width ResNet9s becomes one ``GroupedResNet9`` with their
    weights; anything else is returned as it is."""
    if not isinstance(network, LogitMean) or len(network.members) < 2:
        return network
    members = [member for member in network.members if isinstance(member, ResNet9)]
    if len(members) != len(network.members) or len({member.width for member in members}) != 1:
        return network
    count = len(members)
    fused = GroupedResNet9(members[0].classifier.out_features, members[0].width, count)
    states = [member.state_dict() for member in members]
    weights = {}
    for name, template in fused.state_dict().items():
        if name == "classifier.weight":  # the mean of the members' logits: their classifiers side by side, / k
            weights[name] = torch.cat([state[name] for state in states], dim=1) / count
        elif name == "classifier.bias":
            weights[name] = torch.stack([state[name] for state in states]).mean(0)
        elif template.dim() == 0:  # BatchNorm's num_batches_tracked
            weights[name] = states[0][name]
        else:  # convolution filters and BatchNorm statistics, member after member
            weights[name] = torch.cat([state[name] for state in states], dim=0)
    fused.load_state_dict(weights)
    return fused.train(network.training)
