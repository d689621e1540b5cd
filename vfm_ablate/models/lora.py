"""LoRA through peft, and the parameter counts every trial reports (lora_targets.json).

Targets are module-name suffixes taken from the backbone entry ("attention" = qkv + output projection by
default), so one LoraSpec works for every family. open_clip's nn.MultiheadAttention packs q, k, v into one
`in_proj`; peft's MultiheadAttention LoRA adapts that packed projection and `out_proj` together, which gives
exactly the parameters of a qkv + proj pair (r x (D + 3D) + r x (D + D) per block).
"""

from __future__ import annotations

from torch import nn

from ..config import LoraSpec
from ..errors import ConfigError
from .registry import BackboneEntry

PEFT_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention)


def target_suffixes(entry: BackboneEntry, lora: LoraSpec) -> list[str]:
    """The module-name suffixes a LoraSpec selects on this backbone."""
    if isinstance(lora.targets, list):
        chosen = list(lora.targets)
        what = "the explicit target list"
    elif lora.targets == "attention":
        chosen, what = list(entry.lora_targets), "lora_targets"
    elif lora.targets == "mlp":
        chosen, what = list(entry.lora_mlp_targets), "lora_mlp_targets"
    else:
        chosen, what = [*entry.lora_targets, *entry.lora_mlp_targets], "lora_targets + lora_mlp_targets"
    if not chosen:
        raise ConfigError(f"lora.targets '{lora.targets}': backbone '{entry.name}' declares no modules in {what}")
    return list(dict.fromkeys(chosen))


def apply_lora(backbone: nn.Module, entry: BackboneEntry, lora: LoraSpec) -> list[str]:
    """Inject peft LoRA adapters (A random, B zero) into `backbone.net`; returns the adapted module names.

    Afterwards only the adapters of the backbone require grad. Raises ConfigError naming the targets when a
    target matches no module or a module peft cannot adapt.
    """
    from peft import LoraConfig, inject_adapter_in_model

    suffixes = target_suffixes(entry, lora)
    matching_modules(backbone.net, entry, suffixes)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=suffixes,
        bias="none",
        init_lora_weights=True,  # A: Kaiming-uniform, B: zeros -> the adapted model starts equal to the frozen one
    )
    inject_adapter_in_model(config, backbone.net)
    for name, param in backbone.named_parameters():
        param.requires_grad = is_lora_parameter(name)
    return adapted_module_names(backbone.net)


def matching_modules(net: nn.Module, entry: BackboneEntry, suffixes: list[str]) -> dict[str, list[str]]:
    """Module names each target suffix selects (peft's rule: the name is the suffix or ends with '.suffix').

    Raises ConfigError when a suffix selects nothing, or something LoRA cannot (or must not) adapt.
    """
    modules = dict(net.named_modules())
    matches = {s: [n for n in modules if n == s or n.endswith("." + s)] for s in suffixes}
    unmatched = [s for s, found in matches.items() if not found]
    if unmatched:
        layers = [n for n, m in modules.items() if isinstance(m, PEFT_LAYER_TYPES)]
        raise ConfigError(
            f"lora.targets {suffixes} on backbone '{entry.name}': {unmatched} match no module. Adaptable modules "
            f"look like: {_examples(layers)}"
        )
    for suffix, names in matches.items():
        for name in names:
            module = modules[name]
            if not isinstance(module, PEFT_LAYER_TYPES):
                raise ConfigError(
                    f"lora target '{suffix}' on backbone '{entry.name}' matches '{name}', a {type(module).__name__}; "
                    f"LoRA adapts Linear/Conv/Embedding/MultiheadAttention layers"
                )
            owner = name.rpartition(".")[0]
            if name.endswith("out_proj") and isinstance(modules.get(owner), nn.MultiheadAttention):
                raise ConfigError(
                    f"lora target '{suffix}' on backbone '{entry.name}' selects '{name}' inside an "
                    f"nn.MultiheadAttention, whose forward never calls it; target the attention module itself "
                    f"('{owner.rpartition('.')[2]}'), which adapts its packed in_proj and out_proj"
                )
    return matches


def adapted_module_names(net: nn.Module) -> list[str]:
    """Names of modules carrying LoRA weights, as the network names them (peft's `.base_layer` hops removed)."""
    from peft.tuners.lora import LoraLayer

    return [name.replace(".base_layer", "") for name, m in net.named_modules() if isinstance(m, LoraLayer)]


def peft_settings(net: nn.Module) -> dict[str, dict[str, float]]:
    """Rank, alpha and scaling (the factor on B @ A) that peft holds for each adapted module, by module name as
    `adapted_module_names` gives it: what the adapters really compute with, read back from the model rather than
    taken from the LoraSpec (lora_targets.json reports these)."""
    from peft.tuners.lora import LoraLayer

    out: dict[str, dict[str, float]] = {}
    for name, m in net.named_modules():
        if isinstance(m, LoraLayer):
            for adapter in m.scaling:
                key = name.replace(".base_layer", "") + ("" if adapter == "default" else f"[{adapter}]")
                out[key] = {"rank": m.r[adapter], "alpha": m.lora_alpha[adapter], "scaling": m.scaling[adapter]}
    return out


def is_lora_parameter(name: str) -> bool:
    """peft names every adapter tensor `...lora_A...` / `...lora_B...` (and `lora_embedding_*`): the LoRA regime
    trains exactly these, and `params/lora` counts exactly these."""
    return "lora_" in name


def parameter_counts(segmenter: nn.Module) -> dict[str, float]:
    """total / trainable / head-only / LoRA-only parameters and trainable % of a segmenter (`.head` = its decoder)."""
    params = dict(segmenter.named_parameters())
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    head = sum(p.numel() for p in segmenter.head.parameters())
    lora = sum(p.numel() for name, p in params.items() if is_lora_parameter(name))
    return {
        "total": total,
        "trainable": trainable,
        "head": head,
        "lora": lora,
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
    }


def _examples(names: list[str], n: int = 6) -> str:
    if not names:
        return "(none)"
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")
