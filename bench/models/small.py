"""The seeds' small networks for MNIST-scale data."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.base import Normalize, flat_features, register_model


@register_model("mnist-cnn", paper="seed 004 sec. 5.1", family="mnist")
def mnist_cnn(input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
              pad_to: int = 0, input_bn: bool = False) -> nn.Module:
    """Shaham et al.'s MNIST convnet: conv5x5x32-ReLU-maxpool3/3, conv5x5x64-ReLU-maxpool2, FC200-ReLU-FC.

    ``pad_to=32`` zero-pads 28x28 inputs to 32x32 as in the paper's code (seed 004, spec sec. 2.3);
    ``input_bn`` adds the affine-free BatchNorm on the input of the paper's "robust" scripts."""
    channels, height, width = input_shape
    layers: list[nn.Module] = [Normalize(mean, std)]
    if pad_to:
        if pad_to < max(height, width):
            raise ValueError(f"pad_to={pad_to} is smaller than the input {height}x{width}")
        top, left = (pad_to - height) // 2, (pad_to - width) // 2
        layers.append(nn.ZeroPad2d((left, pad_to - width - left, top, pad_to - height - top)))
    if input_bn:
        layers.append(nn.BatchNorm2d(channels, affine=False))
    layers += [nn.Conv2d(channels, 32, 5), nn.ReLU(), nn.MaxPool2d(3, 3),
               nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten()]
    features = nn.Sequential(*layers)
    return nn.Sequential(features, nn.Linear(flat_features(features, input_shape), 200), nn.ReLU(),
                         nn.Linear(200, num_classes))


@register_model("efgsm-mnist", paper="seed 001 sec. 3.4 (docs/defense-specs.md sec. 6.4)", family="mnist")
def efgsm_mnist(input_shape: Sequence[int], num_classes: int, mean: Sequence[float],
                std: Sequence[float]) -> nn.Module:
    """Chen & Lee's "small CNN, ~0.2M params" for MNIST, in docs/defense-specs.md sec. 6.4's reading [I]:
    conv3x3 32, conv3x3 32, maxpool2, conv3x3 64, conv3x3 64, maxpool2 (valid padding), FC 128, FC."""
    channels = input_shape[0]
    features = nn.Sequential(Normalize(mean, std), nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Linear(flat_features(features, input_shape), 128), nn.ReLU(),
                         nn.Linear(128, num_classes))


@register_model("mlp", paper="seed 002 sec. 4 (784-500-150-10)", family="mnist")
def mlp(input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
        hidden: Sequence[int] = (500, 150)) -> nn.Module:
    """Deep Defense's MNIST MLP: fully connected ReLU layers 500 and 150."""
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model("lenet", paper="seed 002 (matconvnet DeepFool LeNet)", family="mnist")
def lenet(input_shape: Sequence[int], num_classes: int, mean: Sequence[float],
          std: Sequence[float]) -> nn.Module:
    """matconvnet's LeNet: conv5x5x20-maxpool2-conv5x5x50-maxpool2-FC500-ReLU-FC; no ReLU after convs."""
    features = nn.Sequential(Normalize(mean, std), nn.Conv2d(input_shape[0], 20, 5), nn.MaxPool2d(2),
                             nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Linear(flat_features(features, input_shape), 500), nn.ReLU(),
                         nn.Linear(500, num_classes))


class _LeakyConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2))
        nn.init.kaiming_normal_(self[0].weight, a=0.0, nonlinearity="relu")  # He-normal, untruncated
        nn.init.zeros_(self[0].bias)


class _GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


@register_model("convpool-cnn", paper="seed 000 appendix A", family="cifar")
def convpool_cnn(input_shape: Sequence[int], num_classes: int, mean: Sequence[float],
                 std: Sequence[float], width: float = 1.0) -> nn.Module:
    """PGN's ConvPool-CNN: three (conv, conv, avgpool2) stages of 64-128/128-256/256-512 filters,
    a 3x3 conv to K classes and global average pooling; leaky-ReLU 0.2 after every conv.

    ``width`` multiplies every filter count (seed 000 fig. 5, capacity experiment)."""
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    sizes = [max(1, round(c * width)) for c in (64, 128, 128, 256, 256, 512)]
    layers: list[nn.Module] = [Normalize(mean, std)]
    cin = input_shape[0]
    for stage in range(3):
        first, second = sizes[2 * stage], sizes[2 * stage + 1]
        layers += [_LeakyConv(cin, first), _LeakyConv(first, second), nn.AvgPool2d(2)]
        cin = second
    layers += [_LeakyConv(cin, num_classes), _GlobalAvgPool()]
    return nn.Sequential(*layers)


@register_model("dd-cifar-convnet", paper="seed 002 (matconvnet CIFAR ConvNet, docs/defense-specs.md sec. 3.4)", family="cifar")
def dd_cifar_convnet(input_shape: Sequence[int], num_classes: int, mean: Sequence[float],
                     std: Sequence[float]) -> nn.Module:
    """Deep Defense's CIFAR ConvNet: conv5x5x32 (pad 2)-maxpool2-ReLU, conv5x5x32 (pad 2)-ReLU-avgpool2,
    conv5x5x64 (pad 2)-ReLU-avgpool2, conv4x4x64 (valid, 4 -> 1)-ReLU, conv1x1 to the classes."""
    channels, height, width = input_shape
    if (height, width) != (32, 32):
        raise ValueError(f"dd-cifar-convnet takes 32x32 images, got {height}x{width}")
    return nn.Sequential(Normalize(mean, std),
                         nn.Conv2d(channels, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
                         nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(64, 64, 4), nn.ReLU(), nn.Conv2d(64, num_classes, 1), nn.Flatten())
