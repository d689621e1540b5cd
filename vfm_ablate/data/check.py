"""`data check`: everything a user needs to trust a dataset before a sweep trains on it.

Reports what training will actually use: per image the channels in the file, the bit depth and raw value range,
and per dataset the intensity rule's range that becomes [0, 1] (data/intensity.py). Uses the loader's own
listing, pairing and reading (layouts.py, images.py, masks.py), so a
dataset that checks clean is exactly what training reads. Problems (broken:
the loader would refuse it) name the file; anomalies are worth a look but do
not stop anything (mixed mask encodings, empty masks, masks covering most of
the image, files ignored as non-images).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..validation import validate
from .entries import DatasetEntry
from .images import read_slice, read_stacks
from .intensity import IntensitySpec, IntensityStats
from .layouts import IMAGE_SUFFIXES, list_slices, seeded_test_indices
from .masks import TIFF_SUFFIXES

LARGE_FOREGROUND = 0.5  # a mask covering more than this is probably inverted or mis-decoded
# an image with a side below this is smaller than one patch of the study's ViTs (14 or 16 px): no backbone embeds it
MIN_IMAGE_SIDE = 16
# training holds one slice of each train dataset out for validation (data/sampling.split_validation)
MIN_TRAIN_SLICES = 2


def too_few_to_train(name: str, train_slices: int) -> str:
    """The problem of a labelled dataset with fewer training slices than training needs."""
    return (
        f"dataset '{name}' has {train_slices} training slice(s) once its test split is taken; training on it needs "
        f"at least {MIN_TRAIN_SLICES} (one is held out for validation)"
    )


@dataclass(frozen=True)
class SliceFinding:
    """What one slice looked like on disk."""

    split: str  # train / test / unlabelled
    image: str
    mask: str | None
    shape: tuple[int, int]
    dtype: str
    encoding: str | None  # mask encoding as read (masks.read_mask), None without a mask
    foreground: float | None  # foreground fraction after normalisation
    channels: int = 1  # in the file (alpha not counted)
    colour: bool = False  # the channels differed (converted by luminance)
    values: tuple[int, int] = (0, 0)  # raw minimum, maximum


@dataclass
class CheckReport:
    """Findings for one dataset: per-slice facts, problems (broken, each names a file) and anomalies."""

    name: str
    layout: str
    path: str | None
    split_note: str
    slices: list[SliceFinding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    intensity: list[str] = field(default_factory=list)  # per bit depth: values seen, rule, range used

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.split for s in self.slices))

    def encodings(self) -> dict[str, list[str]]:
        """Mask encoding -> the mask files that carry it."""
        out: dict[str, list[str]] = defaultdict(list)
        for s in self.slices:
            if s.encoding is not None and s.mask is not None:
                out[s.encoding].append(s.mask)
        return dict(out)

    def encoding_of(self, mask_name: str) -> str | None:
        """The encoding of the mask whose path ends with `mask_name` (e.g. 'mitochondria/01.png')."""
        for s in self.slices:
            if s.mask is not None and s.mask.endswith(mask_name):
                return s.encoding
        return None

    def _short(self, source: str) -> str:
        if self.path:
            root = str(Path(self.path).expanduser().resolve())
            if source.startswith(root + "/"):
                return source[len(root) + 1 :]
        return source

    def format(self) -> str:
        """Human-readable report, one line per slice."""
        lines = [f"dataset {self.name}  (layout {self.layout}, path {self.path or '-'})"]
        counts = self.counts()
        lines.append(
            "  slices: "
            + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "test", "unlabelled"))
            + f"  [{self.split_note}]"
        )
        shapes = Counter(f"{s.shape[0]}x{s.shape[1]} {s.dtype}" for s in self.slices)
        if shapes:
            lines.append("  images: " + "; ".join(f"{k} ({v})" for k, v in shapes.most_common()))
            channels = Counter(_channels(s) for s in self.slices)
            lines.append("  channels: " + "; ".join(f"{k} ({v})" for k, v in channels.most_common()))
        if self.intensity:
            lines.append("  intensity (raw values -> network input 0..1):")
            lines.extend(f"    {line}" for line in self.intensity)
        encodings = self.encodings()
        if encodings:
            lines.append("  mask encodings:")
            for enc, files in sorted(encodings.items(), key=lambda kv: -len(kv[1])):
                names = ", ".join(self._short(f) for f in files[:12]) + (" ..." if len(files) > 12 else "")
                lines.append(f"    {enc}: {len(files)} file(s): {names}")
        if self.slices:
            lines.append("  per slice (split, image, mask, encoding, foreground %, image values):")
            for s in self.slices:
                fg = "-" if s.foreground is None else f"{100 * s.foreground:.2f}"
                mask = self._short(s.mask) if s.mask else "-"
                values = f"{s.dtype} {s.values[0]}..{s.values[1]}"
                lines.append(f"    {s.split:<10} {self._short(s.image)}  {mask}  {s.encoding or '-'}  {fg}  {values}")
        lines.append("  anomalies: " + ("none" if not self.anomalies else ""))
        lines.extend(f"    - {a}" for a in self.anomalies)
        lines.append("  problems: " + ("none" if not self.problems else ""))
        lines.extend(f"    - {p}" for p in self.problems)
        lines.append("  => OK" if self.ok else f"  => BROKEN ({len(self.problems)} problem(s))")
        return "\n".join(lines)


def _channels(s: SliceFinding) -> str:
    if s.channels == 1:
        return "1 (grey)"
    if s.colour:
        return f"{s.channels} differing (colour, converted by luminance)"
    return f"{s.channels} equal (grey stored as colour)"


def _values(image: Any) -> tuple[int, int]:
    return (int(image.min()), int(image.max())) if image.size else (0, 0)


def _check_synthetic(entry: DatasetEntry, report: CheckReport) -> None:
    from .sources import load_dataset

    ds = load_dataset(entry, 0)
    stats = IntensityStats()
    for split, slices in (("train", ds.train), ("test", ds.test)):
        for s in slices:
            assert s.mask is not None
            stats.add(s.image, s.source)
            report.slices.append(
                SliceFinding(
                    split,
                    s.source,
                    s.source,
                    s.image.shape,
                    str(s.image.dtype),
                    "generated bool",
                    float(s.mask.mean()),
                    values=_values(s.image),
                )
            )
    report.intensity = stats.describe(IntensitySpec(rule="dtype"))


def check_dataset(entry: DatasetEntry, split_seed: int = 0) -> CheckReport:
    """Read every file of `entry` the way training does and collect findings; never raises for bad data."""
    listing = list_slices(entry)
    predefined = listing.test is not None or entry.layout == "synthetic"
    note = (
        "test split predefined by the layout"
        if predefined
        else (
            f"seeded split: {listing.test_count} test slice(s) by split_seed {split_seed}"
            if listing.labelled
            else "unlabelled"
        )
    )
    report = CheckReport(entry.name, entry.layout, entry.path, note, problems=list(listing.problems))
    if listing.labelled and 0 < listing.train_count < MIN_TRAIN_SLICES:
        report.problems.append(too_few_to_train(entry.name, listing.train_count))
    if entry.layout == "synthetic":
        _check_synthetic(entry, report)
        return report
    refs: list[tuple[str, Any]] = []
    if listing.test is None and listing.labelled:
        test_idx = set(seeded_test_indices(len(listing.labelled), listing.test_count, split_seed))
        refs += [("test" if i in test_idx else "train", r) for i, r in enumerate(listing.labelled)]
    else:
        refs += [("train", r) for r in listing.labelled] + [("test", r) for r in listing.test or []]
    refs += [("unlabelled", r) for r in listing.unlabelled]
    try:
        stacks = read_stacks([r for _, r in refs])
    except DataError as err:
        report.problems.append(str(err))
        return report
    rule = entry.mask_rule
    stats = IntensityStats()
    for split, ref in refs:
        try:
            s, encoding = read_slice(ref, rule, stacks, entry.colour)
        except DataError as err:
            report.problems.append(str(err))
            continue
        stats.add(s.image, ref.source)
        if min(s.image.shape) < MIN_IMAGE_SIDE:
            report.problems.append(
                f"{ref.source}: image is {s.image.shape[0]}x{s.image.shape[1]}, smaller than one patch of the study's "
                f"backbones ({MIN_IMAGE_SIDE} px a side at least)"
            )
        fg = None if s.mask is None else float(s.mask.mean())
        report.slices.append(
            SliceFinding(
                split,
                ref.source,
                ref.mask_source,
                s.image.shape,
                str(s.image.dtype),
                encoding,
                fg,
                channels=s.channels,
                colour=s.colour,
                values=_values(s.image),
            )
        )
        if s.mask is not None and fg == 0.0:
            report.anomalies.append(f"{ref.mask_source}: empty mask (no foreground; raw file is constant)")
        elif fg is not None and fg > LARGE_FOREGROUND:
            report.anomalies.append(
                f"{ref.mask_source}: foreground covers {100 * fg:.1f}% of the slice (inverted or mis-decoded mask?)"
            )
    if stats.histograms:
        report.problems.extend(stats.problems(entry.intensity))
        report.intensity = stats.describe(entry.intensity)
    if any(s.colour for s in report.slices):
        report.anomalies.append(
            f"{sum(s.colour for s in report.slices)} colour image(s) converted to grey by luminance (colour: luminance)"
        )
    encodings = report.encodings()
    if len(encodings) > 1:
        report.anomalies.append(
            f"{len(encodings)} different mask encodings ({'; '.join(sorted(encodings))}); "
            "all are normalised by the same documented rule"
        )
    report.anomalies.extend(f"{p}: ignored (not an image file)" for p in listing.ignored)
    return report


def detect_entry(path: str | Path, layout: str | None = None, options: dict[str, Any] | None = None) -> DatasetEntry:
    """A DatasetEntry for a folder (or TIFF stack) on disk: `layout` as given, or recognised from its contents."""
    p = Path(path)
    opts = dict(options or {})
    name = p.resolve().name or str(p)
    source = f"data check {p}"
    if layout is not None:
        base: dict[str, Any] = {"name": name, "layout": layout, "path": str(p)}
        if p.is_file():
            base["path"] = str(p.parent)
            base["image_stack"] = p.name
        return validate(DatasetEntry, {**base, **opts}, source)
    if p.is_file():
        if p.suffix.lower() in TIFF_SUFFIXES:
            return validate(
                DatasetEntry,
                {"name": name, "layout": "unlabelled", "path": str(p.parent), "image_stack": p.name, **opts},
                source,
            )
        raise ConfigError(f"{p}: a single file is checked as a TIFF stack; give a folder or a .tif/.tiff stack")
    if not p.is_dir():
        raise DataError(f"{p}: no such folder or file")
    data: dict[str, Any]
    if (p / "Train_In").is_dir() and (p / "Train_Out").is_dir():
        data = {"layout": "lucchi_pp"}
    elif (p / "stack1" / "raw").is_dir() and (p / "stack1" / "mitochondria").is_dir():
        data = {"layout": "vnc"}
    elif (p / "train" / "images").is_dir() and (p / "train" / "masks").is_dir():
        data = {"layout": "folder", "image_dir": "train/images", "mask_dir": "train/masks"}
        if (p / "test" / "images").is_dir() and (p / "test" / "masks").is_dir():
            data.update(test_image_dir="test/images", test_mask_dir="test/masks")
    elif (p / "images").is_dir() and (p / "masks").is_dir():
        data = {"layout": "folder"}
    elif any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir() if q.is_file()):
        data = {"layout": "unlabelled"}
    else:
        raise ConfigError(
            f"{p}: cannot tell the layout (looked for Train_In/Train_Out (lucchi_pp), stack1/raw + "
            "stack1/mitochondria (vnc), [train/]images + [train/]masks (folder), or image files (unlabelled)); "
            "pass --layout and --set options"
        )
    return validate(DatasetEntry, {"name": name, "path": str(p), **data, **opts}, source)
