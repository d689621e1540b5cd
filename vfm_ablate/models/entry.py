"""A backbone entry: every fact about one backbone in one place (also the schema of inline entries in sweep files)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..validation import StrictModel


class BackboneEntry(StrictModel):
    """All facts about a backbone, in one place (also the schema for inline entries in sweep files)."""

    name: str
    family: str  # dinov2, dinov3, openclip, efficientnet, ... (report grouping)
    scale: str  # S, B, L, G, H, H+, 7B, tiny, ... (report grouping)
    library: Literal["timm", "open_clip"]
    model_id: str  # timm model name, or open_clip architecture name
    kind: Literal["vit", "cnn"] = "vit"  # vit: patch tokens -> grid; cnn: timm features_only map
    # pretrained source: a hub tag (timm: "<model>.<tag>" pretrained tag; open_clip: pretrained name),
    # and/or a local checkpoint file for air-gapped clusters (wins when set)
    pretrained_tag: str | None = None
    checkpoint: str | None = None
    checkpoint_key_map: Literal["by_name", "by_position"] = "by_name"
    patch_size: int = Field(ge=1)  # ViT patch size, or CNN output stride
    embed_dim: int = Field(ge=1)  # channels of the B x D x h x w grid fed to the head
    num_prefix_tokens: int = Field(1, ge=0)  # CLS + register tokens dropped before the grid
    feature_index: int = -1  # cnn: which features_only level to use
    lora_targets: list[str] = []  # module-name suffixes for "attention" LoRA (qkv + output proj)
    lora_mlp_targets: list[str] = []  # module-name suffixes added for "attention+mlp"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # backbone's own normalisation (option)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    model_kwargs: dict[str, Any] = {}  # passed to timm.create_model / open_clip.create_model
    # scheduling facts: the share of one GPU a trial of this backbone needs (frozen / adapted)
    gpu_fraction_frozen: float = Field(0.25, gt=0, le=8)
    gpu_fraction_adapted: float = Field(0.5, gt=0, le=8)
    gpu_memory_gb: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> BackboneEntry:
        if self.kind == "cnn" and self.library != "timm":
            raise ValueError(
                f"kind 'cnn' is built through timm features_only; library '{self.library}' is not supported"
            )
        if self.checkpoint_key_map == "by_position" and self.checkpoint is None:
            raise ValueError(
                "checkpoint_key_map 'by_position' describes a local 'checkpoint' file; set 'checkpoint' too"
            )
        return self

    def gpu_fraction(self, regime: str) -> float:
        """The GPU share a trial of this backbone asks for: one inference pass (frozen) or training (adapted)."""
        return self.gpu_fraction_frozen if regime == "frozen" else self.gpu_fraction_adapted
