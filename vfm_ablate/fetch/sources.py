"""Where the built-in datasets come from: one entry per public archive, every fact about it in one place.

A checksum is part of an entry only when it was published somewhere we can point to (`checksum_from`). An entry
whose `sha256` is None has no published checksum: its first download is pinned (the digest is written beside the
download and printed for the user to add here), and every later download must match that pin.

`$VFM_ABLATE_DATA_MIRROR` (a base URL) replaces each source's URL by `<mirror>/<archive>`: a site mirror, or the
local server the tests start. The checksums stay the same, so a mirror must serve byte-identical archives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..validation import suggest

MIRROR_ENV = "VFM_ABLATE_DATA_MIRROR"


@dataclass(frozen=True)
class DatasetSource:
    """A public archive and how its contents map onto one folder under the data root."""

    name: str
    folder: str  # the folder under $VFM_ABLATE_DATA_ROOT it fills (what the built-in entries read)
    datasets: tuple[str, ...]  # the built-in dataset entries it provides
    url: str
    archive: str  # the downloaded file's name
    sha256: str | None  # published checksum of the archive; None: pinned by the first download
    checksum_from: str  # where the checksum was published (or why there is none)
    archive_root: str  # the folder inside the archive that holds the layout
    members: tuple[str, ...]  # paths under archive_root copied into `folder` (files or whole folders)
    homepage: str
    licence: str
    citation: str

    def download_url(self) -> str:
        """The URL to download from: the source's own, or the same file name under $VFM_ABLATE_DATA_MIRROR."""
        mirror = os.environ.get(MIRROR_ENV, "").strip()
        return f"{mirror.rstrip('/')}/{self.archive}" if mirror else self.url


LUCCHI_PP = DatasetSource(
    name="lucchi_pp",
    folder="lucchi_pp",
    datasets=("lucchi_pp",),
    url="http://www.casser.io/files/lucchi_pp.zip",
    archive="lucchi_pp.zip",
    sha256="770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
    checksum_from=(
        "torch-em (constantinpape/torch-em, torch_em/data/datasets/electron_microscopy/lucchi.py) and micro-sam "
        "(micro_sam/sample_data.py, fetch_3d_example_data), both for this URL"
    ),
    archive_root="Lucchi++",
    members=("Train_In", "Train_Out", "Test_In", "Test_Out"),
    homepage="https://casser.io/connectomics/ (re-annotation of the EPFL CVLab hippocampus FIB-SEM stack)",
    licence=(
        "no licence file ships with the archive; the EPFL CVLab stack it re-annotates is published for research "
        "use: cite both papers"
    ),
    citation=(
        "Lucchi, Smith, Achanta, Knott, Fua, IEEE TMI 31(2):474-486, 2011; Casser, Kang, Pfister, Haehn, "
        "'Fast Mitochondria Detection for Connectomics', MIDL 2020"
    ),
)

VNC = DatasetSource(
    name="vnc",
    folder="vnc",
    datasets=("vnc", "vnc_stack2"),
    url="https://github.com/unidesigner/groundtruth-drosophila-vnc/archive/refs/heads/master.zip",
    archive="groundtruth-drosophila-vnc-master.zip",
    sha256="f7bd0db03c86b64440a16b60360ad60c0a4411f89e2c021c7ee2c8d6af3d7e86",
    checksum_from="torch-em (constantinpape/torch-em, torch_em/data/datasets/electron_microscopy/vnc.py), this URL",
    archive_root="groundtruth-drosophila-vnc-master",
    members=("stack1/raw", "stack1/mitochondria", "stack2/raw", "README.md"),
    homepage="https://github.com/unidesigner/groundtruth-drosophila-vnc (figshare doi:10.6084/m9.figshare.856713)",
    licence="CC BY-NC-SA 3.0 (non-commercial; see README.md in the dataset folder)",
    citation=(
        "Gerhard, Funke, Martel, Cardona, Fetter, 'Segmented anisotropic ssTEM dataset of neural tissue', "
        "figshare, 2013, doi:10.6084/m9.figshare.856713"
    ),
)

DATASET_SOURCES: dict[str, DatasetSource] = {s.name: s for s in (LUCCHI_PP, VNC)}


def source_of(dataset: str, sources: dict[str, DatasetSource] | None = None) -> DatasetSource | None:
    """The source that provides a built-in dataset entry, or None (synthetic, user-declared)."""
    for source in (sources or DATASET_SOURCES).values():
        if dataset in source.datasets:
            return source
    return None


def get_source(name: str, sources: dict[str, DatasetSource] | None = None) -> DatasetSource:
    """A source by its name or by the name of a dataset it provides."""
    sources = sources or DATASET_SOURCES
    found = sources.get(name) or source_of(name, sources)
    if found is None:
        names = set(sources) | {d for s in sources.values() for d in s.datasets}
        raise ConfigError(suggest(name, names, "downloadable dataset"))
    return found
