"""A backbone entry from its library's own model: what an inline entry may leave out, and what it may not get wrong.

    my_vit: {library: timm, model_id: vit_small_patch14_reg4_dinov2.lvd142m}
    my_clip: {library: open_clip, model_id: ViT-B-16, pretrained_tag: openai}

are complete entries: the network is built on the meta device (structure only: no weights, no memory, no
download) and read the way the trial engine reads it (`Backbone.actual_facts`):

- kind: timm, `vit` when the plain network has a patch embedding and prefix tokens, else `cnn` (timm
  `features_only`); open_clip towers are ViTs;
- patch_size, embed_dim, num_prefix_tokens: a ViT's patch embedding, width, CLS + registers (open_clip: `conv1`,
  one CLS token); a CNN's output stride and channels at `feature_index`;
- pretrained_tag: the tag in a timm `model_id` (`arch.tag`), else timm's default tag when it has weights;
- mean, std: the tag's pretrained config (open_clip: else the model config's, else OpenAI's);
- lora_targets, lora_mlp_targets: in each numbered block, the attention's layers (open_clip: the
  MultiheadAttention itself) and the MLP's; a CNN's channel-mixing layers (1x1 convolutions, linear layers;
  squeeze-excitation branches left out) are its `attention` targets;
- family: a known name in the model id (dinov2, dinov3, eva, convnext, efficientnet, ...), else timm's module;
  open_clip: openclip (siglip for SigLIP towers);
- scale: the size in the model id (small S, base B, large L, huge H, huge_plus H+, giant G, 7b 7B, an
  EfficientNet's b0 / lite0; open_clip `ViT-<size>-<patch>`), else the parameter count (always when
  `model_kwargs` resize the network);
- gpu_fraction_frozen / _adapted, gpu_memory_gb: the built-in table's row of the scale (of the size class of the
  parameter count when the scale has no row).

Facts stated by hand win where they are choices (family, scale, mean / std, the GPU shares); those the network
has (kind, patch_size, embed_dim, num_prefix_tokens, a tag in the model id) must agree with it, and every
LoRA target must name a module the network has: a contradiction is a ConfigError naming the entry, the fact, the
stated and the actual value. `vfm-ablate backbones --describe NAME` prints an inferred entry in full.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..validation import suggest, validate
from .builtin_backbones import GPU, IMAGENET, OPENAI_CLIP
from .entry import BackboneEntry

# inferred when not stated; the others of BackboneEntry keep their defaults
INFERRED = (
    "family",
    "scale",
    "kind",
    "patch_size",
    "embed_dim",
    "num_prefix_tokens",
    "pretrained_tag",
    "mean",
    "std",
    "lora_targets",
    "lora_mlp_targets",
    "gpu_fraction_frozen",
    "gpu_fraction_adapted",
    "gpu_memory_gb",
)
CHECKED = ("kind", "patch_size", "embed_dim", "num_prefix_tokens")  # facts of the network: stated must be actual
REQUIRED = ("family", "scale", "patch_size", "embed_dim")  # what an entry that infers nothing must state
# model id word -> family (first match wins, so the more specific come first)
FAMILIES = (
    ("dinov3", "dinov3"),
    ("dinov2", "dinov2"),
    ("eva02", "eva02"),
    ("eva", "eva"),
    ("siglip", "siglip"),
    ("clip", "clip"),
    ("deit", "deit"),
    ("beit", "beit"),
    ("convnextv2", "convnextv2"),
    ("convnext", "convnext"),
    ("efficientnetv2", "efficientnetv2"),
    ("efficientnet", "efficientnet"),
    ("mobilenet", "mobilenet"),
    ("resnet", "resnet"),
    ("regnet", "regnet"),
    ("vit", "vit"),
)
SIZE_WORDS = {
    "tiny": "T",
    "small": "S",
    "medium": "M",
    "base": "B",
    "large": "L",
    "huge": "H",
    "giant": "G",
    "gigantic": "bigG",
    "7b": "7B",
}
SIZE_KWARGS = (
    "embed_dim",
    "depth",
    "num_heads",
    "width",
    "layers",
    "vision_cfg",
    "dims",
    "depths",
    "channel_multiplier",
)
SIDE_BRANCHES = ("se", "ese", "attn_gate")  # gating branches of CNN blocks: not LoRA targets
# parameter count bound -> the built-in scale whose GPU shares a backbone of that size gets
SIZE_CLASSES = ((50e6, "S"), (150e6, "B"), (500e6, "L"), (1.5e9, "G"), (float("inf"), "7B"))


def complete_entry(facts: dict[str, Any], where: str) -> BackboneEntry:
    """The entry `facts` describe (its `name` included), with what it leaves out inferred from its library's own
    model and what it states checked against that model. An entry that states every required fact is taken as it
    is here (sweep/inputs checks its network facts before a run, `check_entry`), so that stating facts costs no
    model build."""
    missing = [k for k in REQUIRED if k not in facts]
    tagged = facts.get("library") == "timm" and "." in str(facts.get("model_id", ""))
    if not missing and not tagged:
        return validate(BackboneEntry, facts, where)
    # the schema first (unknown keys, wrong types), with placeholders for what inference will fill in
    stub = validate(BackboneEntry, {"family": "?", "scale": "?", "patch_size": 1, "embed_dim": 1, **facts}, where)
    inferred = infer_facts(stub, stated=set(facts), where=where)
    return validate(BackboneEntry, {**inferred, **facts, "model_id": inferred["model_id"]}, where)


def infer_facts(entry: BackboneEntry, stated: set[str] | None = None, where: str = "") -> dict[str, Any]:
    """Every inferable fact of `entry`'s network (plus its `model_id` without a timm tag); a stated fact that the
    network contradicts is a ConfigError. `stated`: the keys the user wrote (None: all of them)."""
    stated = set(BackboneEntry.model_fields) if stated is None else stated
    where = where or f"backbone '{entry.name}'"
    facts = _timm_source(entry, stated, where) if entry.library == "timm" else {"model_id": entry.model_id}
    id_tag = facts.pop("id_tag", "")
    base = entry.model_copy(update={"model_id": facts["model_id"], "pretrained_tag": _tag(entry, id_tag, stated)})
    _check_tag(where, base)
    facts["kind"], backbone = _read_network(base)
    if "kind" in stated and entry.kind != facts["kind"]:
        raise _contradiction(where, base, "kind", entry.kind, facts["kind"])
    base = base.model_copy(update={"kind": facts["kind"]})
    actual = backbone.actual_facts()
    actual.setdefault("num_prefix_tokens", 0)  # a CNN has none
    for key in CHECKED[1:]:
        if key in stated and getattr(entry, key) != actual[key]:
            raise _contradiction(where, base, key, getattr(entry, key), actual[key])
    facts.update(actual)
    facts["pretrained_tag"] = base.pretrained_tag
    facts["mean"], facts["std"] = _normalisation(base)
    attention, mlp = lora_layers(backbone.net, facts["kind"])
    facts["lora_targets"], facts["lora_mlp_targets"] = attention, mlp
    _check_targets(where, base, backbone.net, entry, stated)
    params = sum(p.numel() for p in backbone.parameters())
    facts["family"] = _family(base, backbone.net)
    facts["scale"] = _scale(base, facts["family"], params)
    share = GPU[facts["scale"]] if facts["scale"] in GPU else GPU[_size_class(params)]
    facts["gpu_fraction_frozen"], facts["gpu_fraction_adapted"], facts["gpu_memory_gb"] = share
    return facts


def check_entry(entry: BackboneEntry) -> None:
    """Hold a complete entry to its network: its kind, patch size, dim and prefix tokens, and every LoRA target
    (a ConfigError naming the fact otherwise); the meta-device build sweep/inputs runs before a sweep starts."""
    stated = set(CHECKED) | {"lora_targets", "lora_mlp_targets"}
    if entry.library == "timm" and entry.pretrained_tag is not None:
        stated.add("pretrained_tag")
    infer_facts(entry, stated)


# ------------------------------------------------------------------------------------------------ the network


def _timm_source(entry: BackboneEntry, stated: set[str], where: str) -> dict[str, Any]:
    """`arch.tag` split; the tag in the id and a stated pretrained_tag must agree."""
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(entry.model_id)
    if tag and "pretrained_tag" in stated and entry.pretrained_tag not in (None, tag):
        raise ConfigError(
            f"{where}: model_id '{entry.model_id}' names the pretrained tag '{tag}' but pretrained_tag is "
            f"'{entry.pretrained_tag}'; state it once"
        )
    return {"model_id": arch, "id_tag": tag}


def _tag(entry: BackboneEntry, id_tag: str, stated: set[str]) -> str | None:
    """The stated tag, else the one in a timm model id, else (timm, no local checkpoint) timm's default tag when it
    has weights: what timm itself loads for the bare name."""
    if "pretrained_tag" in stated and entry.pretrained_tag is not None:
        return entry.pretrained_tag
    if entry.library != "timm":
        return entry.pretrained_tag
    if id_tag:
        return id_tag
    if entry.checkpoint is not None:
        return None
    from timm.models import get_pretrained_cfg, split_model_name_tag

    cfg = get_pretrained_cfg(split_model_name_tag(entry.model_id)[0])
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file) or not cfg.tag:
        return None
    return str(cfg.tag)


def _check_tag(where: str, entry: BackboneEntry) -> None:
    """A pretrained tag the library does not know for this model fails now, not at the first trial's download."""
    if entry.pretrained_tag is None:
        return
    if entry.library == "timm":
        from timm.models import get_pretrained_cfg, list_pretrained

        if get_pretrained_cfg(f"{entry.model_id}.{entry.pretrained_tag}") is not None or not _known_timm(entry):
            return
        tags = [name.split(".", 1)[1] for name in list_pretrained(f"{entry.model_id}.*")]
    else:
        import open_clip

        if open_clip.get_model_config(entry.model_id) is None:
            return  # the build names the unknown architecture
        tags = open_clip.list_pretrained_tags_by_model(entry.model_id)
        if entry.pretrained_tag in tags:
            return
    raise ConfigError(suggest(entry.pretrained_tag, tags or ["(none: random init only)"], "pretrained_tag", where))


def _known_timm(entry: BackboneEntry) -> bool:
    import timm

    return bool(timm.is_model(entry.model_id))


_NETWORKS: dict[str, tuple[str, Any]] = {}  # what a model id (+ kwargs, feature level) builds: kind, meta Backbone


def _read_network(entry: BackboneEntry) -> tuple[str, Any]:
    """The entry's kind and its Backbone on the meta device, built once per process for each architecture (an entry
    is read again by the checks before a run, `--describe`, the next sweep file)."""
    key = json.dumps([entry.library, entry.model_id, entry.feature_index, entry.model_kwargs], sort_keys=True)
    if key not in _NETWORKS:
        kind = _timm_kind(entry) if entry.library == "timm" else "vit"
        _NETWORKS[key] = kind, _network(entry.model_copy(update={"kind": kind}))
    return _NETWORKS[key]


def _timm_kind(entry: BackboneEntry) -> str:
    """vit when the plain network has a patch embedding and prefix tokens (what TimmViTBackbone reads), else cnn."""
    import timm

    from .backbones import _create_timm

    if not timm.is_model(entry.model_id):
        _create_timm(entry, from_hub=False)  # the library's own error, with the closest names
    with torch.device("meta"):
        try:
            net = timm.create_model(entry.model_id, pretrained=False, num_classes=0, **entry.model_kwargs)
        except (TypeError, ValueError, AssertionError, IndexError, KeyError) as err:
            raise ConfigError(
                f"backbone '{entry.name}': timm cannot build '{entry.model_id}' with model_kwargs "
                f"{entry.model_kwargs}: {type(err).__name__}: {err}"
            ) from None
    return "vit" if hasattr(net, "patch_embed") and hasattr(net, "num_prefix_tokens") else "cnn"


def _network(entry: BackboneEntry) -> Any:
    """The entry's Backbone on the meta device, its stated facts not checked (they are what is being read)."""
    from .backbones import unverified_backbone

    return unverified_backbone(entry, device="meta")


def _normalisation(entry: BackboneEntry) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if entry.library == "timm":
        from timm.models import get_pretrained_cfg

        name = f"{entry.model_id}.{entry.pretrained_tag}" if entry.pretrained_tag else entry.model_id
        cfg = get_pretrained_cfg(name) or get_pretrained_cfg(entry.model_id)
        if cfg is None or cfg.mean is None or cfg.std is None:
            return IMAGENET["mean"], IMAGENET["std"]
        return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    import open_clip

    cfg = open_clip.get_pretrained_cfg(entry.model_id, entry.pretrained_tag or "") if entry.pretrained_tag else {}
    vision = (open_clip.get_model_config(entry.model_id) or {}).get("vision_cfg", {})
    mean = cfg.get("mean") or vision.get("image_mean") or OPENAI_CLIP["mean"]
    std = cfg.get("std") or vision.get("image_std") or OPENAI_CLIP["std"]
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def lora_layers(net: nn.Module, kind: str) -> tuple[list[str], list[str]]:
    """(attention targets, MLP targets): the adaptable layers of the network's numbered blocks, by their name inside
    the block (`attn.qkv`, `mlp.fc1`, `conv_pw`), each once, in order. A CNN's channel-mixing layers are all
    `attention` targets (the regime's default), its MLP list empty."""
    names: list[str] = []
    inside_mha: list[str] = []
    for name, module in net.named_modules():
        if any(name.startswith(m + ".") for m in inside_mha):
            continue  # peft adapts a MultiheadAttention whole (its packed in_proj and out_proj)
        parts = name.split(".")
        numbered = [i for i, p in enumerate(parts) if p.isdigit()]
        if not numbered or numbered[-1] == len(parts) - 1:
            continue
        inner = ".".join(parts[numbered[-1] + 1 :])
        if isinstance(module, nn.MultiheadAttention):
            inside_mha.append(name)
        elif not (isinstance(module, nn.Linear) or _pointwise(module)):
            continue
        if kind == "cnn" and inner.split(".")[0] in SIDE_BRANCHES:
            continue
        names.append(inner)
    names = list(dict.fromkeys(names))
    if kind == "cnn":
        return names, []
    return [n for n in names if n.split(".")[0] == "attn"], [n for n in names if n.split(".")[0] == "mlp"]


def _pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1


def _check_targets(where: str, base: BackboneEntry, net: nn.Module, entry: BackboneEntry, stated: set[str]) -> None:
    from .lora import matching_modules

    for key in ("lora_targets", "lora_mlp_targets"):
        targets = getattr(entry, key)
        if key in stated and targets:
            try:
                matching_modules(net, base, list(targets))
            except ConfigError as err:
                raise ConfigError(f"{where}: {key} {list(targets)} do not fit {_what(base)}: {err}") from None


def _family(entry: BackboneEntry, net: nn.Module) -> str:
    if entry.library == "open_clip":
        return "siglip" if "siglip" in entry.model_id.lower() else "openclip"
    name = entry.model_id.lower()
    for word, family in FAMILIES:
        if word in name:
            return family
    return type(net).__module__.rsplit(".", 1)[-1]


def _scale(entry: BackboneEntry, family: str, params: int) -> str:
    """The size in the model's name, or its parameter count when the name says none or model_kwargs resized it."""
    if any(k in entry.model_kwargs for k in SIZE_KWARGS):
        return _count(params)
    if entry.library == "open_clip":
        match = re.match(r"^[A-Za-z]+-([A-Za-z0-9]+)-", entry.model_id)
        return match.group(1) if match else _count(params)
    words = entry.model_id.lower().split("_")
    if "huge" in words and "plus" in words:
        return "H+"
    if family.startswith("efficientnet"):
        after = words.index(next(w for w in words if w.startswith("efficientnet"))) + 1
        if after < len(words) and re.fullmatch(r"(b\d+|lite\d|[sml]|xl)", words[after]):
            return words[after]
    for word in words:
        if word in SIZE_WORDS:
            return SIZE_WORDS[word]
    return _count(params)


def _count(params: int) -> str:
    return f"{params / 1e9:.3g}B" if params >= 1e9 else f"{params / 1e6:.3g}M"


def _size_class(params: int) -> str:
    return next(scale for bound, scale in SIZE_CLASSES if params <= bound)


def _what(entry: BackboneEntry) -> str:
    return f"{entry.library} model '{entry.model_id}'"


def _contradiction(where: str, entry: BackboneEntry, key: str, stated: Any, actual: Any) -> ConfigError:
    return ConfigError(
        f"{where}: the entry says {key}={stated} but {_what(entry)} has {actual}; correct it, or leave it out "
        "(it is read from the model)"
    )
