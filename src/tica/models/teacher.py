"""A fast CNN classifier on pixels: the teacher the compressed-domain ViT and the pixel ViT
distil from (DeiT's hard-label distillation, `TrainConfig.teacher`).

The design follows the fast CIFAR-10 trainers (airbench): three blocks of two 3x3
convolutions with batch norm and GELU, a 2x2 max-pool after each block's first
convolution, a max over the final grid and a linear head with its logits scaled down. A
convolutional net learns CIFAR-10 in a few epochs where a ViT needs a hundred, so a few GPU
seconds buy a teacher far more accurate than the student it guides. Larger inputs (photos)
first pass `stages` stride-2 convolutions. Widths: N for the stem and the first block, M
for the two others (64 and 256 by default in the presets).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import cost
from ..config import ModelConfig
from ..errors import ConfigError
from ..io import WeightsInfo

LOGIT_SCALE = 1 / 9          # airbench's output scaling: small logits at the start


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


class ConvTeacher(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        layers = _conv(3, c.N)
        for _ in range(c.stages):                       # photos: down to ~32 px first
            layers += _conv(c.N, c.N, stride=2)
        widths = (c.N, c.N, c.M, c.M)
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += _conv(cin, cout) + [nn.MaxPool2d(2)] + _conv(cout, cout)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c.M, c.num_classes, bias=False)
        self.weights_info = WeightsInfo()

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": self.classify_pixels(x)}

    def classify_pixels(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x).amax(dim=(2, 3))
        return self.head(feats) * LOGIT_SCALE

    operations = ("classify",)

    def cost(self, image_size: tuple[int, int], op: str) -> float:
        """Estimated GFLOP of classifying one image of (H, W) (tica.cost's convolutions)."""
        if op not in self.operations:
            raise ConfigError(f"{self.config.name} works on pixels: it can only classify")
        c = self.config
        pixels, flops = image_size[0] * image_size[1], 0.0
        flops += cost.conv_flops(pixels, 3, c.N, 3)
        for _ in range(c.stages):
            pixels //= 4
            flops += cost.conv_flops(pixels, c.N, c.N, 3)
        widths = (c.N, c.N, c.M, c.M)
        for cin, cout in zip(widths[:-1], widths[1:]):
            flops += cost.conv_flops(pixels, cin, cout, 3)
            pixels //= 4
            flops += cost.conv_flops(pixels, cout, cout, 3)
        return (flops + 2.0 * c.M * c.num_classes) / 1e9
