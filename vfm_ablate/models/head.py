"""The study's segmentation decoder: its trainable-parameter counts are the reference every trial reports.

1x1 conv D->512 (no bias) + BN + GELU; four up-blocks ConvTranspose(k4, s2, p1, no bias) + BN + GELU +
Conv3x3 (no bias) + BN + GELU with channels 512->256->128->64->64; 1x1 conv to the class logits (with bias);
bilinear resize to the mask size. Exact counts (num_classes=2): 3,828,866 for D=384, 4,025,474 for 768,
4,156,546 for 1024, 4,287,618 for 1280, 4,418,690 for 1536 (= 3.829M ... 4.419M of the study). The 3x3 convs
carry no bias (each feeds a BatchNorm); with biases D=768 would give 4.026M, not the study's 4.025M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_CHANNELS = (512, 256, 128, 64, 64)


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    """x2 upsampling: transposed conv, then a 3x3 conv to smooth its checkerboard, both BN + GELU."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


class SegmentationHead(nn.Module):
    """Feature grid B x D x h x w -> logits B x num_classes x out_size (16x upsampling, then bilinear resize)."""

    def __init__(self, embed_dim: int, num_classes: int = 2) -> None:
        super().__init__()
        if embed_dim < 1 or num_classes < 1:
            raise ValueError(f"SegmentationHead needs embed_dim, num_classes >= 1, got {embed_dim}, {num_classes}")
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        first = HEAD_CHANNELS[0]
        self.reduce = nn.Sequential(
            nn.Conv2d(embed_dim, first, kernel_size=1, bias=False), nn.BatchNorm2d(first), nn.GELU()
        )
        self.up = nn.Sequential(*(_up_block(a, b) for a, b in zip(HEAD_CHANNELS[:-1], HEAD_CHANNELS[1:])))
        self.classifier = nn.Conv2d(HEAD_CHANNELS[-1], num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits at `out_size` (the mask's size); None keeps the decoder's own 16x-upsampled size."""
        return self.decode(self.bottleneck(features), out_size)

    def bottleneck(self, features: torch.Tensor) -> torch.Tensor:
        """The first stage (1x1 conv to 512 + BN + GELU): where loss-level domain alignment acts by default."""
        if features.ndim != 4 or features.shape[1] != self.embed_dim:
            raise ValueError(
                f"SegmentationHead({self.embed_dim}) expects B x {self.embed_dim} x h x w features, "
                f"got {tuple(features.shape)}"
            )
        return self.reduce(features)

    def decode(self, bottleneck: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The up-blocks and classifier on the bottleneck's output, resized bilinearly to `out_size`."""
        logits = self.classifier(self.up(bottleneck))
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits
