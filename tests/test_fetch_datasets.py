"""`fetch` for datasets against a local HTTP server (no internet): archives in the real Lucchi++ / VNC layouts,
generated here, are downloaded with checksums, unpacked where the loaders read, checked, and never fetched twice."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.local_server import LocalServer
from vfm_ablate import cli
from vfm_ablate.data.entries import DATA_ROOT_ENV, builtin_datasets
from vfm_ablate.data.sources import clear_cache, load_dataset
from vfm_ablate.errors import DataError
from vfm_ablate.fetch.datasets import DOWNLOAD_ATTEMPTS, DOWNLOADS, MARKER, install_source
from vfm_ablate.fetch.sources import LUCCHI_PP, MIRROR_ENV, VNC, DatasetSource

N = 5  # slices per stack: enough for VNC's 3 test slices plus training ones


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tif(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def _slice(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 6:18] = 255
    return image, mask


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder in sorted({name.rsplit("/", 1)[0] + "/" for name in files}):
            zf.writestr(folder, b"")  # directory entries, as real archives have
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def lucchi_archive(seed: int = 0) -> bytes:
    """Lucchi++ as casser.io ships it: Lucchi++/Train_In/maskNNNN.png images, Train_Out/N.png labels (8-bit), Test_Out
    labels RGBA."""
    rng = np.random.default_rng(seed)
    files = {}
    for split in ("Train", "Test"):
        for i in range(N):
            image, mask = _slice(rng)
            files[f"Lucchi++/{split}_In/mask{i:04d}.png"] = _png(image)
            label = np.dstack([mask] * 4) if split == "Test" else mask
            files[f"Lucchi++/{split}_Out/{i}.png"] = _png(label)
    return _zip(files)


def vnc_archive(seed: int = 0) -> bytes:
    """The GitHub archive of groundtruth-drosophila-vnc: stack1 raw TIFFs + mitochondria PNGs, stack2 raw, more."""
    rng = np.random.default_rng(seed)
    root = "groundtruth-drosophila-vnc-master"
    files = {f"{root}/README.md": b"Segmented anisotropic ssTEM dataset of neural tissue\n"}
    for i in range(N):
        image, mask = _slice(rng)
        files[f"{root}/stack1/raw/{i:02d}.tif"] = _tif(image)
        files[f"{root}/stack1/mitochondria/{i:02d}.png"] = _png(mask)
        files[f"{root}/stack1/membranes/{i:02d}.png"] = _png(mask)  # not used: never copied
        files[f"{root}/stack2/raw/{i:02d}.tif"] = _tif(image)
    return _zip(files)


def served(server: LocalServer, source: DatasetSource, data: bytes, sha256: str | None = "auto") -> DatasetSource:
    """The source pointed at the local server, with the served archive's checksum unless told otherwise."""
    url = server.serve(f"/{source.archive}", data)
    return replace(source, url=url, sha256=hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256)


def leftovers(root: Path) -> list[str]:
    """Anything a download or an unpacking left behind besides pins and the lock."""
    found = [p.name for p in root.glob(".*.partial-*")]
    found += [p.name for p in (root / DOWNLOADS).rglob("*") if p.is_file() and p.name != ".lock"]
    return [f for f in found if not f.endswith(".sha256")]


def test_fetch_lays_out_lucchi_and_vnc_as_the_loaders_read_them_and_a_rerun_is_a_no_op(
    local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lucchi = served(local_server, LUCCHI_PP, lucchi_archive())
    vnc = served(local_server, VNC, vnc_archive())
    logs: list[str] = []
    for source in (lucchi, vnc):
        result = install_source(source, tmp_path, log=logs.append)
        assert result.action == "installed" and result.ok, [c.problems for c in result.checks]
        assert result.sha256 == source.sha256
    assert sorted(p.name for p in (tmp_path / "lucchi_pp").iterdir()) == sorted(
        ["Train_In", "Train_Out", "Test_In", "Test_Out", MARKER]
    )
    assert (tmp_path / "lucchi_pp" / "Train_Out" / "4.png").is_file()
    assert sorted(p.name for p in (tmp_path / "vnc").rglob("*") if p.is_dir()) == [
        "mitochondria",
        "raw",
        "raw",
        "stack1",
        "stack2",
    ]
    assert (tmp_path / "vnc" / "README.md").is_file() and not leftovers(tmp_path)

    # the built-in entries read exactly these folders
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    clear_cache()
    entries = builtin_datasets()
    assert len(load_dataset(entries["lucchi_pp"], 0).test) == N
    vnc_data = load_dataset(entries["vnc"], 0)
    assert len(vnc_data.test) == 3 and len(vnc_data.train) == N - 3
    assert len(load_dataset(entries["vnc_stack2"], 0).unlabelled) == N
    clear_cache()

    before = len(local_server.requests)
    again = install_source(lucchi, tmp_path, log=logs.append)
    assert again.action == "present" and again.ok
    assert len(local_server.requests) == before, "a second fetch never touches the network"


def test_a_checksum_mismatch_names_the_file_and_installs_nothing(local_server: LocalServer, tmp_path: Path) -> None:
    source = served(local_server, LUCCHI_PP, lucchi_archive(), sha256="0" * 64)
    expected = r"lucchi_pp\.zip \(from http://127\.0\.0\.1:\d+/lucchi_pp\.zip\): checksum mismatch"
    with pytest.raises(DataError, match=expected):
        install_source(source, tmp_path, log=lambda _: None)
    assert not (tmp_path / "lucchi_pp").exists() and not leftovers(tmp_path)
    assert len(local_server.gets()) == 1, "a checksum mismatch is not retried"


def test_an_interrupted_download_restarts_cleanly(local_server: LocalServer, tmp_path: Path) -> None:
    source = served(local_server, VNC, vnc_archive())
    path = f"/{source.archive}"
    logs: list[str] = []

    local_server.cut_off[path] = 1  # cut off once: restarted at once, and installed
    assert install_source(source, tmp_path, log=logs.append).action == "installed"
    assert len(local_server.gets(path)) == 2 and any("restarting it (2/3)" in line for line in logs)
    assert not leftovers(tmp_path)

    local_server.cut_off[path] = DOWNLOAD_ATTEMPTS  # cut off every time: an error, nothing half-written
    other = tmp_path / "other"
    with pytest.raises(DataError, match=f"{source.archive}: download from .* failed {DOWNLOAD_ATTEMPTS} times"):
        install_source(source, other, log=logs.append)
    assert not (other / "vnc").exists() and not leftovers(other)
    assert install_source(source, other, log=logs.append).action == "installed", "the next run finishes it"


def test_what_a_killed_run_left_behind_is_removed(local_server: LocalServer, tmp_path: Path) -> None:
    source = served(local_server, LUCCHI_PP, lucchi_archive())
    (tmp_path / DOWNLOADS / source.name).mkdir(parents=True)
    (tmp_path / DOWNLOADS / source.name / "tmpk1ll3d").write_bytes(b"half a download")
    (tmp_path / ".lucchi_pp.partial-4242" / "Train_In").mkdir(parents=True)
    assert install_source(source, tmp_path, log=lambda _: None).action == "installed"
    assert not leftovers(tmp_path)


def test_a_source_without_a_published_checksum_is_pinned_by_its_first_download(
    local_server: LocalServer, tmp_path: Path
) -> None:
    archive = lucchi_archive()
    source = served(local_server, LUCCHI_PP, archive, sha256=None)
    logs: list[str] = []
    result = install_source(source, tmp_path, log=logs.append)
    digest = hashlib.sha256(archive).hexdigest()
    assert result.pinned and result.sha256 == digest
    pin = tmp_path / DOWNLOADS / source.name / f"{source.archive}.sha256"
    assert pin.read_text().split()[0] == digest
    assert any(f"pinned: sha256 {digest}" in line for line in logs), "the digest is printed for the user to commit"

    # the upstream file changes: the pin catches it
    local_server.serve(f"/{source.archive}", lucchi_archive(seed=1))
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / DOWNLOADS / source.name).mkdir(parents=True)
    (other / DOWNLOADS / source.name / pin.name).write_text(pin.read_text())
    with pytest.raises(DataError, match="checksum mismatch.* or delete the pin"):
        install_source(source, other, log=logs.append)


def test_a_folder_put_there_by_hand_is_checked_and_never_overwritten(local_server: LocalServer, tmp_path: Path) -> None:
    source = served(local_server, LUCCHI_PP, lucchi_archive())
    install_source(source, tmp_path / "a", log=lambda _: None)
    (tmp_path / "a" / "lucchi_pp" / MARKER).unlink()  # as if copied over by hand
    before = len(local_server.requests)
    assert install_source(source, tmp_path / "a", log=lambda _: None).action == "by hand"

    (tmp_path / "a" / "lucchi_pp" / "Train_Out" / "2.png").unlink()
    with pytest.raises(DataError, match="exists but was not made by `vfm-ablate fetch`.*Train_In/mask0002.png"):
        install_source(source, tmp_path / "a", log=lambda _: None)
    assert (tmp_path / "a" / "lucchi_pp" / "Train_In" / "mask0002.png").is_file(), "left as it was"
    assert len(local_server.requests) == before


def test_an_archive_without_the_expected_layout_is_refused(local_server: LocalServer, tmp_path: Path) -> None:
    source = served(local_server, LUCCHI_PP, _zip({"lucchi/Train_In/mask0000.png": b"x"}))
    with pytest.raises(DataError, match=r"lucchi_pp\.zip has no Lucchi\+\+/Train_In"):
        install_source(source, tmp_path, log=lambda _: None)
    assert not (tmp_path / "lucchi_pp").exists() and not leftovers(tmp_path)


def test_the_command_downloads_from_a_mirror_and_checks_the_published_checksum(
    local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`vfm-ablate fetch vnc` with $VFM_ABLATE_DATA_MIRROR: the generated archive is not the published one, so the
    registry's sha256 rejects it, naming the file."""
    local_server.serve(f"/{VNC.archive}", vnc_archive())
    monkeypatch.setenv(MIRROR_ENV, local_server.url + "/")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    rc = cli.main(["fetch", "vnc", "--no-check"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert f"{VNC.archive} (from {local_server.url}/{VNC.archive}): checksum mismatch" in err
    assert VNC.sha256 in err and "FAILED" in out
    assert [r[1] for r in local_server.gets()] == [f"/{VNC.archive}"]
    assert not (tmp_path / "vnc").exists()


def test_fetch_reports_what_it_cannot_download_and_unknown_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A sweep's own dataset that is not on disk cannot be fetched: `fetch` says so and exits non-zero."""
    import yaml

    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    sweep = tmp_path / "own.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": {"backbone": "tiny_vit_p14", "weights": "random", "data": {"train": ["mine"]}},
                "datasets": {"mine": {"layout": "folder", "path": str(tmp_path / "mine")}},
            }
        )
    )
    assert cli.main(["fetch", str(sweep)]) == 2
    out, err = capsys.readouterr()
    assert "MISSING: folder not found" in out
    assert f"dataset mine ({sweep}): not downloadable by fetch: put it in place ({tmp_path / 'mine'})" in err

    assert cli.main(["fetch", "vcn"]) == 2
    assert (
        "unknown fetch target (a sweep file, a dataset or a backbone) 'vcn'. Did you mean 'vnc'?"
        in capsys.readouterr().err
    )
