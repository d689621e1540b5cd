"""Build a backbone from its registry entry: pixels in, the B x D x h x w grid the head reads out.

Every kind of backbone (timm ViT, open_clip visual tower, timm CNN) hides behind one `Backbone` interface so the
trial engine never branches on the family. Pretrained weights come from the entry's local checkpoint file when
set (air-gapped clusters), otherwise from the library's hub; a checkpoint is never loaded with a silent
`strict=False`: keys are counted, reported in `load_report`, and a load that gives the backbone nothing fails.
"""

from __future__ import annotations

import abc
import contextlib
import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..validation import suggest
from .checkpoints import load_checkpoint, resolve_checkpoint_path
from .registry import BackboneEntry

Pooling = Literal["mean", "cls"]


class Backbone(nn.Module, abc.ABC):
    """An entry's network behind one interface: `forward` -> feature grid, `embed` -> one vector per image."""

    def __init__(self, entry: BackboneEntry, net: nn.Module) -> None:
        super().__init__()
        self.entry = entry
        self.net = net
        self.load_report: dict[str, Any] = {"source": "random-init", "loaded": 0, "missing": 0, "unexpected": 0}

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x D x h x w (D = entry.embed_dim, h x w = H x W / patch size)."""

    @abc.abstractmethod
    def embed(self, x: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
        """B x 3 x H x W -> B x D image embeddings for domain diagnostics."""

    def actual_facts(self) -> dict[str, int]:
        """What the built network really has, to hold the entry to its word (see `_verify_facts`)."""
        return {}

    def finalise(self) -> None:
        """Drop parts the grid never uses, after weights are loaded (so checkpoints still match by name)."""

    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"backbone '{self.entry.name}' expects B x 3 x H x W images, got shape {tuple(x.shape)}")
        return int(x.shape[2]), int(x.shape[3])


class ViTBackbone(Backbone):
    """ViTs: final-layer tokens with the final norm applied; CLS/register tokens dropped; patches -> grid."""

    @abc.abstractmethod
    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prefix tokens B x P x D, patch tokens B x h*w x D), both after the final norm."""

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.entry.patch_size
        if height % p or width % p:
            raise ConfigError(
                f"backbone '{self.entry.name}' needs image sides that are multiples of its patch size {p}, "
                f"got {height} x {width} (the resize policy snaps sizes to patch multiples)"
            )
        return height // p, width // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.grid_size(*self._check_input(x))
        _, patches = self.tokens(x)
        return patches.transpose(1, 2).reshape(x.shape[0], patches.shape[-1], h, w)

    def embed(self, x: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
        self.grid_size(*self._check_input(x))
        prefix, patches = self.tokens(x)
        if pooling == "mean":
            return patches.mean(dim=1)
        if pooling == "cls":
            if prefix.shape[1] == 0:
                raise ConfigError(f"backbone '{self.entry.name}' has no CLS token; use pooling 'mean'")
            return prefix[:, 0]
        raise ConfigError(f"unknown pooling '{pooling}' for backbone '{self.entry.name}': expected 'mean' or 'cls'")

    def _split(self, tokens: torch.Tensor, n_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_prefix = self.entry.num_prefix_tokens
        if tokens.shape[1] != n_prefix + n_patches:
            raise ConfigError(
                f"backbone '{self.entry.name}': got {tokens.shape[1]} tokens for {n_patches} patches; the entry's "
                f"num_prefix_tokens={n_prefix} (CLS + registers) does not fit this network"
            )
        return tokens[:, :n_prefix], tokens[:, n_prefix:]


class TimmViTBackbone(ViTBackbone):
    """timm VisionTransformer / Eva (DINOv2, DINOv3): `forward_features` returns normed tokens, any patch-multiple
    size."""

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.grid_size(x.shape[2], x.shape[3])
        return self._split(self.net.forward_features(x), h * w)

    def actual_facts(self) -> dict[str, int]:
        patch = self.net.patch_embed.patch_size
        return {
            "embed_dim": int(self.net.embed_dim),
            "patch_size": int(patch[0] if isinstance(patch, (tuple, list)) else patch),
            "num_prefix_tokens": int(self.net.num_prefix_tokens),
        }


class OpenClipViTBackbone(ViTBackbone):
    """open_clip visual tower: tokens at the tower width, `ln_post` on every token, positions resized to the grid."""

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.net
        h, w = self.grid_size(x.shape[2], x.shape[3])
        t = v.conv1(x).flatten(2).transpose(1, 2)  # B x h*w x D
        cls = v.class_embedding.to(t.dtype).expand(t.shape[0], 1, -1)
        t = torch.cat([cls, t], dim=1) + self._positions(h, w).to(t.dtype)
        t = v.ln_pre(v.patch_dropout(t))
        t = v.ln_post(v.transformer(t))
        return self._split(t, h * w)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        """The learnt positional embedding, bicubically resized from the training grid to h x w."""
        pos = self.net.positional_embedding
        gh, gw = self.net.grid_size
        if (gh, gw) == (h, w):
            return pos
        grid = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)

    def actual_facts(self) -> dict[str, int]:
        return {
            "embed_dim": int(self.net.conv1.out_channels),
            "patch_size": int(self.net.patch_size[0]),
            "num_prefix_tokens": 1,
        }

    def finalise(self) -> None:
        # the CLIP projection maps the pooled token into the text space; the grid and embeddings stay at width D
        self.net.proj = None


class TimmCNNBackbone(Backbone):
    """timm `features_only` CNN: the map at `entry.feature_index` (sides are ceil(H / stride))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.net(x)[0]

    def embed(self, x: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
        if pooling != "mean":
            raise ConfigError(f"backbone '{self.entry.name}' is a CNN without a CLS token; use pooling 'mean'")
        return self.forward(x).mean(dim=(2, 3))

    def actual_facts(self) -> dict[str, int]:
        info = self.net.feature_info
        return {"embed_dim": int(info.channels()[0]), "patch_size": int(info.reduction()[0])}


# ------------------------------------------------------------------------------------------------ building


def build_backbone(entry: BackboneEntry, pretrained: bool, *, device: str | torch.device | None = None) -> Backbone:
    """The entry's network with its weights (local checkpoint > hub tag) or random init when not `pretrained`.

    `device="meta"` builds the structure without allocating (parameter counts of multi-billion models).
    """
    if pretrained and device is not None and torch.device(device).type == "meta":
        raise ConfigError("pretrained weights cannot be loaded on the meta device")
    from_hub = pretrained and entry.checkpoint is None
    if from_hub and entry.pretrained_tag is None:
        raise CheckpointError(
            f"backbone '{entry.name}' declares no pretrained source: set 'pretrained_tag' (hub) or "
            f"'checkpoint' (local file) in its entry, or use weights: random"
        )
    backbone = _wrapped(entry, from_hub, device)
    _verify_facts(backbone)
    if from_hub:
        backbone.load_report = {
            "source": describe_source(entry),
            "loaded": len(backbone.net.state_dict()),
            "missing": 0,  # timm and open_clip load hub weights with strict=True
            "unexpected": 0,
        }
    elif pretrained:
        backbone.load_report = load_checkpoint(backbone.net, entry, resolve_checkpoint_path(entry))
    backbone.finalise()
    return backbone


def unverified_backbone(entry: BackboneEntry, device: str | torch.device = "meta") -> Backbone:
    """The entry's network (random init) behind its Backbone interface, its stated facts not held to it: what
    models/infer reads the facts from."""
    return _wrapped(entry, False, device)


def _wrapped(entry: BackboneEntry, from_hub: bool, device: str | torch.device | None) -> Backbone:
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        if entry.library == "open_clip":
            return OpenClipViTBackbone(entry, _create_open_clip(entry, from_hub))
        if entry.kind == "cnn":
            return TimmCNNBackbone(entry, _create_timm(entry, from_hub))
        return TimmViTBackbone(entry, _create_timm(entry, from_hub))


def backbone_parameter_count(entry: BackboneEntry) -> int:
    """Parameters of the backbone as the grid uses it, counted on the meta device (no weights, no memory)."""
    backbone = build_backbone(entry, pretrained=False, device="meta")
    return sum(p.numel() for p in backbone.parameters())


def describe_source(entry: BackboneEntry) -> str:
    """Where `weights: pretrained` comes from, in words (CLI listing, error messages, load reports)."""
    if entry.checkpoint is not None:
        return f"file {entry.checkpoint} (keys {entry.checkpoint_key_map.replace('_', ' ')})"
    if entry.pretrained_tag is None:
        return "none (random init only)"
    if entry.library == "timm":
        return f"timm hub {entry.model_id}.{entry.pretrained_tag}"
    return f"open_clip {entry.model_id} pretrained={entry.pretrained_tag}"


def _verify_facts(backbone: Backbone) -> None:
    entry = backbone.entry
    for field, actual in backbone.actual_facts().items():
        declared = getattr(entry, field)
        if declared != actual:
            raise ConfigError(
                f"backbone '{entry.name}': the entry says {field}={declared} but {entry.library} model "
                f"'{entry.model_id}' has {actual}; correct the entry"
            )


def _hub_error(entry: BackboneEntry, err: Exception) -> CheckpointError:
    first_line = (str(err).strip().splitlines() or [""])[0][:300]
    return CheckpointError(
        f"backbone '{entry.name}': could not load pretrained weights from {describe_source(entry)} "
        f"({type(err).__name__}: {first_line}). Without internet access on this machine, run "
        f"`vfm-ablate fetch {entry.name}` on a connected one (a cluster's login node) with the same HF_HOME, so the "
        f"weights land in the cache the trials read. Or save them to a file and declare it as the entry's local "
        f"checkpoint: an inline backbone entry with the "
        f"same facts as '{entry.name}' plus `checkpoint: /path/to/weights.pth` (keys matched by name; Meta's original "
        f"DINO files and whole open_clip checkpoints work too). Or copy a filled Hugging Face cache (HF_HOME) over, "
        f"or run with weights: random"
    )


def _create_timm(entry: BackboneEntry, from_hub: bool) -> nn.Module:
    import timm

    if not timm.is_model(entry.model_id):
        raise ConfigError(
            suggest(entry.model_id, timm.list_models(), "timm model", f"backbone '{entry.name}' model_id")
        )
    if entry.kind == "cnn":
        defaults: dict[str, Any] = {"features_only": True, "out_indices": (entry.feature_index,)}
    else:
        defaults = {"num_classes": 0, "dynamic_img_size": True}
    kwargs = {**defaults, **entry.model_kwargs}
    name = f"{entry.model_id}.{entry.pretrained_tag}" if from_hub else entry.model_id
    try:
        return timm.create_model(name, pretrained=from_hub, **kwargs)
    except (TypeError, ValueError, AssertionError, IndexError, KeyError) as err:
        if from_hub and not isinstance(err, TypeError):
            raise _hub_error(entry, err) from err
        raise ConfigError(
            f"backbone '{entry.name}': timm cannot build '{entry.model_id}' with model_kwargs {entry.model_kwargs}"
            + (f" and feature_index {entry.feature_index}" if entry.kind == "cnn" else "")
            + f": {type(err).__name__}: {err}"
        ) from None
    except Exception as err:
        if from_hub:
            raise _hub_error(entry, err) from err
        raise


def _open_clip_config(entry: BackboneEntry) -> dict[str, Any]:
    """The architecture's open_clip config with `model_kwargs` merged in (dict values merge one level deep)."""
    import open_clip

    cfg = open_clip.get_model_config(entry.model_id)
    if cfg is None:
        raise ConfigError(
            suggest(
                entry.model_id, open_clip.list_models(), "open_clip architecture", f"backbone '{entry.name}' model_id"
            )
        )
    cfg = copy.deepcopy(cfg)
    for key, value in entry.model_kwargs.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _create_open_clip(entry: BackboneEntry, from_hub: bool) -> nn.Module:
    import open_clip

    cfg = _open_clip_config(entry)
    if from_hub:
        overrides = {key: cfg[key] for key in entry.model_kwargs}
        try:
            return open_clip.create_model(entry.model_id, pretrained=entry.pretrained_tag, **overrides).visual
        except Exception as err:
            raise _hub_error(entry, err) from err
    # only the visual tower: the text tower of a CLIP model is never used (and costs time and memory to build)
    from open_clip.model import _build_vision_tower

    try:
        return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=bool(cfg.get("quick_gelu", False)))
    except TypeError as err:
        raise ConfigError(
            f"backbone '{entry.name}': open_clip cannot build '{entry.model_id}' with model_kwargs "
            f"{entry.model_kwargs}: {err}"
        ) from None
