"""Where a backbone entry's pretrained weights come from, whether they are already on this machine, and fetching them
into the very caches timm and open_clip read when a trial builds the backbone.

- timm `<model>.<tag>`: the tag's pretrained config names a Hugging Face repo (`timm/<model>.<tag>`); timm loads
  `model.safetensors` when the repo has it, else `pytorch_model.bin`, through huggingface_hub's cache ($HF_HOME,
  $HF_HUB_CACHE). Configs with only a URL go to torch hub's cache ($TORCH_HOME/hub/checkpoints).
- open_clip `<architecture>` + pretrained tag: the tag's config names a repo (`laion/CLIP-...`) and a file
  (`open_clip_model.safetensors`, else `open_clip_pytorch_model.bin`), fetched with open_clip's own
  `download_pretrained`; URL-only tags go to `~/.cache/clip`.
- a local `checkpoint` file (entry field): only checked; nothing is downloaded.

Cache look-ups never touch the network (huggingface_hub's `try_to_load_from_cache`), so the readiness check is
fast and works offline. Point $HF_HOME (and $TORCH_HOME) at shared storage on a cluster: the login node fetches,
the compute nodes read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from ..errors import CheckpointError, ConfigError
from ..models.checkpoints import resolve_checkpoint_path
from ..models.registry import BackboneEntry

Kind = Literal["hub", "url", "checkpoint", "none"]

TIMM_WEIGHTS = "pytorch_model.bin"  # timm's default file in a hub repo; `model.safetensors` is tried first
OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip's; `open_clip_model.safetensors` is tried first


class HubUnreachable(CheckpointError):
    """The download failed for want of a network (or with HF_HUB_OFFLINE): other downloads would fail the same way."""


@dataclass(frozen=True)
class WeightSource:
    """One backbone entry's pretrained weights: a hub repo (+ the files the library tries, in order), a URL, a local
    checkpoint file, or none."""

    backbone: str
    library: str
    kind: Kind
    repo_id: str | None = None
    revision: str | None = None
    filenames: tuple[str, ...] = ()
    url: str | None = None
    path: Path | None = None  # checkpoint: the file; url: where the library caches it
    problem: str | None = None  # checkpoint / none: why it cannot be had

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hf {self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "url":
            return f"url {self.url}"
        if self.kind == "checkpoint":
            return f"file {self.path}"
        return "none"


def weight_source(entry: BackboneEntry) -> WeightSource:
    """Resolve the entry's pretrained source the way its library will when a trial builds it."""
    if entry.checkpoint is not None:
        try:
            return WeightSource(entry.name, entry.library, "checkpoint", path=resolve_checkpoint_path(entry))
        except CheckpointError as err:
            return WeightSource(entry.name, entry.library, "checkpoint", problem=str(err))
    if entry.pretrained_tag is None:
        return WeightSource(
            entry.name,
            entry.library,
            "none",
            problem=f"backbone '{entry.name}' declares no pretrained source (random init only): use weights: random",
        )
    if entry.library == "timm":
        return _timm_source(entry)
    return _open_clip_source(entry)


def cached_file(source: WeightSource) -> Path | None:
    """The local file the library would load, if it is already there (no network)."""
    if source.kind == "checkpoint":
        return source.path
    if source.kind == "url":
        return source.path if source.path is not None and source.path.is_file() else None
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        for filename in source.filenames:
            found = try_to_load_from_cache(source.repo_id, filename, revision=source.revision)
            if isinstance(found, str):
                return Path(found)
    return None


def hub_cache_dir() -> Path:
    """The Hugging Face cache the libraries read in this process ($HF_HUB_CACHE, else $HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def fetch_weights(source: WeightSource) -> Path:
    """Download the weights into the library's cache (a no-op when cached); the local file. Raises CheckpointError."""
    found = cached_file(source)
    if found is not None:
        return found
    if source.kind in ("checkpoint", "none"):
        raise CheckpointError(source.problem or f"{source.describe()} not found")
    try:
        if source.kind == "url":
            return _fetch_url(source)
        if source.library == "open_clip":
            return _fetch_open_clip(source)
        return _fetch_hub(source)
    except CheckpointError:
        raise
    except Exception as err:  # network, gated or missing repos: one message naming what failed and how to fix it
        kind = HubUnreachable if _unreachable(err) else CheckpointError
        raise kind(_fetch_error(source, err)) from None


# ------------------------------------------------------------------------------------------------- timm


def _timm_source(entry: BackboneEntry) -> WeightSource:
    from timm.models import get_pretrained_cfg

    name = f"{entry.model_id}.{entry.pretrained_tag}"
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as err:  # an unknown tag
        raise ConfigError(f"backbone '{entry.name}': timm has no pretrained weights '{name}' ({err})") from None
    if cfg is None:
        raise ConfigError(f"backbone '{entry.name}': timm has no pretrained config for '{name}'")
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        filename = cfg.hf_hub_filename or TIMM_WEIGHTS
        return WeightSource(
            entry.name, "timm", "hub", repo, revision or None, (*_safe_alternatives(filename), filename)
        )
    if cfg.url:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        return WeightSource(entry.name, "timm", "url", url=cfg.url, path=path)
    raise ConfigError(f"backbone '{entry.name}': timm's pretrained config '{name}' names neither a hub repo nor a URL")


def _safe_alternatives(filename: str) -> tuple[str, ...]:
    """The safetensors files timm / open_clip look for before a pickled one (same rule in both libraries)."""
    if filename.endswith(".safetensors"):
        return ()
    if filename == TIMM_WEIGHTS:
        return ("model.safetensors",)
    if filename == OPEN_CLIP_WEIGHTS:
        return ("open_clip_model.safetensors",)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors",)
    return ()


def _fetch_hub(source: WeightSource) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    *preferred, last = source.filenames
    for filename in preferred:
        try:
            return Path(hf_hub_download(source.repo_id, filename, revision=source.revision))
        except LocalEntryNotFoundError:  # no network (a subclass of EntryNotFoundError): not "no such file"
            raise
        except EntryNotFoundError:  # the repo has no such file: the library's next choice
            continue
    return Path(hf_hub_download(source.repo_id, last, revision=source.revision))


def _fetch_url(source: WeightSource) -> Path:
    assert source.url is not None and source.path is not None
    if source.library == "open_clip":
        import open_clip

        return Path(open_clip.download_pretrained_from_url(source.url, cache_dir=str(source.path.parent)))
    import torch.hub

    source.path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(source.url, str(source.path), progress=True)  # via a temporary file
    return source.path


# ------------------------------------------------------------------------------------------------- open_clip


def _open_clip_source(entry: BackboneEntry) -> WeightSource:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(entry.model_id, entry.pretrained_tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(entry.model_id)
        raise ConfigError(
            f"backbone '{entry.name}': open_clip has no pretrained tag '{entry.pretrained_tag}' for "
            f"'{entry.model_id}' (known: {', '.join(tags) or 'none'})"
        )
    if cfg.get("file"):
        return WeightSource(entry.name, "open_clip", "checkpoint", path=Path(cfg["file"]).expanduser())
    if cfg.get("hf_hub"):  # open_clip prefers the hub whenever huggingface_hub is installed
        repo, filename = os.path.split(cfg["hf_hub"])  # 'org/name/' (default file) or 'org/name/file'
        filename = filename or OPEN_CLIP_WEIGHTS
        return WeightSource(entry.name, "open_clip", "hub", repo, None, (*_safe_alternatives(filename), filename))
    url = cfg.get("url")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        return WeightSource(entry.name, "open_clip", "url", url=url, path=path)
    raise ConfigError(f"backbone '{entry.name}': open_clip's tag '{entry.pretrained_tag}' names no download")


def _fetch_open_clip(source: WeightSource) -> Path:
    """open_clip's own hub download (what `create_model` calls: safetensors first), so the file lands where it looks."""
    from open_clip.pretrained import download_pretrained_from_hf

    return Path(download_pretrained_from_hf(source.repo_id, filename=source.filenames[-1]))


_NO_NETWORK = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout", "ConnectionError"}


def _unreachable(err: BaseException | None) -> bool:
    """Whether an error (or one it was raised from or while handling) says the network was not there."""
    seen = 0
    while err is not None and seen < 10:
        if type(err).__name__ in _NO_NETWORK:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _fetch_error(source: WeightSource, err: Exception) -> str:
    from huggingface_hub import constants

    detail = (str(err).strip().splitlines() or [""])[0][:300]
    hint = ""
    if constants.HF_HUB_OFFLINE:
        hint = "HF_HUB_OFFLINE is set: run fetch where the network is reachable, without it. "
    elif "401" in str(err) or "403" in str(err) or "gated" in str(err).lower():
        hint = (
            f"The repo may be gated: accept its licence on https://huggingface.co/{source.repo_id} and log in "
            "(`hf auth login` or $HF_TOKEN). "
        )
    return (
        f"backbone '{source.backbone}': could not fetch weights from {source.describe()} "
        f"({type(err).__name__}: {detail}). {hint}Nothing was installed for it; run fetch again to retry"
    )
