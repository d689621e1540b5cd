"""Backbone (+LoRA) + the study's head under one training regime: what a trial trains and evaluates.

Regimes: `frozen` - backbone weights and its norms fixed (always in eval mode), only the head trains;
`lora` - only the LoRA adapters and the head train (backbone BatchNorm statistics stay fixed);
`full` - everything trains (fine-tuning baseline).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import Regime, TrialSpec
from ..errors import CheckpointError
from .backbones import Backbone, build_backbone
from .head import SegmentationHead
from .lora import apply_lora, is_lora_parameter, parameter_counts
from .registry import BackboneEntry


class Segmenter(nn.Module):
    """`forward(x, out_size)` = head(backbone(x)); `features` / `head_forward` let a feature cache sit in between."""

    def __init__(self, backbone: Backbone, head: SegmentationHead, regime: Regime, lora_targets: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.regime = regime
        self.lora_targets = list(lora_targets)
        # a trial's domain-alignment modules (feature statistics, domain classifier), attached by the trial engine:
        # they are trained / estimated with the model, so they belong to its trainable state
        self.alignment: nn.Module | None = None
        self._apply_regime()

    def attach_alignment(self, modules: nn.Module) -> None:
        """Make `modules` part of the model: moved with it, in its trainable state, trained when they need grad."""
        self.alignment = modules

    @property
    def entry(self) -> BackboneEntry:
        return self.backbone.entry

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's B x D x h x w grid."""
        return self.backbone(x)

    def head_forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return self.head(features, out_size)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits B x 2 x out_size (default: the input's size)."""
        size = tuple(out_size) if out_size is not None else (int(x.shape[2]), int(x.shape[3]))
        return self.head_forward(self.features(x), size)

    def train(self, mode: bool = True) -> Segmenter:
        """Head (and adapters) follow `mode`; a frozen backbone and fixed BatchNorm statistics stay in eval mode."""
        super().train(mode)
        if self.regime == "frozen":
            self.backbone.eval()
        elif self.regime == "lora":
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def parameter_counts(self) -> dict[str, float]:
        return parameter_counts(self)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes: head (with its BN statistics) + LoRA adapters + attached alignment modules, or
        everything for `full`."""
        state = self.state_dict()
        if self.regime == "full":
            return state
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in state.items() if k.startswith(("head.", "alignment.")) or k in trainable}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `trainable_state_dict` saved; keys and shapes must match exactly."""
        own = self.trainable_state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"trainable state does not fit this {self.regime} segmenter of '{self.entry.name}': "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                f"{len(wrong)} with other shapes (e.g. {wrong[:3]})"
            )
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k])

    def _apply_regime(self) -> None:
        if self.regime == "frozen":
            self.backbone.requires_grad_(False)
        elif self.regime == "full":
            self.backbone.requires_grad_(True)
        elif self.regime == "lora":
            for name, p in self.backbone.named_parameters():
                p.requires_grad = is_lora_parameter(name)
        else:
            raise ValueError(f"unknown regime '{self.regime}'")
        self.head.requires_grad_(True)
        self.train(self.training)


def build_segmenter(spec: TrialSpec, entry: BackboneEntry, *, device: str | torch.device | None = None) -> Segmenter:
    """Backbone (pretrained iff spec.weights == 'pretrained') + LoRA when spec.regime == 'lora' + the study's head.

    `device="meta"` builds the structure only (exact parameter counts of any scale without memory).
    """
    backbone = build_backbone(entry, pretrained=spec.weights == "pretrained", device=device)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        targets = apply_lora(backbone, entry, spec.lora) if spec.lora_applies else []
        head = SegmentationHead(entry.embed_dim, num_classes=2)
    return Segmenter(backbone, head, spec.regime, targets)
