"""One feature extraction per sweep: the frozen trials of a sweep share one feature store under its storage path
(`<storage>/<sweep>/features/<backbone fingerprint>/<input digest>.pt`), on a shared filesystem or a bucket like
the sweep's other records, so each (backbone, weights, precision, dataset image, resize) is extracted once per
sweep however many repeats, regimes and nodes need it.

Several trials may miss the same image at once (repeats start together). A miss claims the image first:

    features file there?            -> load it (no extraction)
    fresh claim by another trial?   -> wait for its features file (or for the claim to go stale: owner died)
    else write a claim (own id), wait `settle`, read it back:
        still ours                  -> extract, write the features (write-then-rename: never torn), drop the claim
        another trial's             -> it won the race: wait for its features

Two trials extract the same image only if one writes its claim more than `settle` after the other checked for
claims and found none. That gap is one read and one write of a small file, so `settle` is three times what writing
the claim took (at least `settle_s`, 20 ms): fast on a local disk, longer on a bucket. A bounded race, not the
rule. A claim whose owner died is taken over at once when the owner ran on this machine (its pid is gone: a
killed launch being resumed), else after `claim_timeout_s`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .store import TrialStore

if TYPE_CHECKING:  # torch loads in the trial's worker, not in the driver that builds this store
    import torch

FEATURES_DIR = "features"


def _alive(pid: Any) -> bool:
    """Whether a process of this machine still runs (a claim without a pid is taken as alive)."""
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SweepFeatureStore:
    """A `trial.features.FeatureStore` on the sweep's storage (any filesystem pyarrow reaches)."""

    def __init__(self, root: str, claim_timeout_s: float = 600.0, settle_s: float = 0.02, poll_s: float = 0.1):
        self.root = root
        self.claim_timeout_s = claim_timeout_s
        self.settle_s = settle_s
        self.poll_s = poll_s
        self._store = TrialStore(root)
        self._owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __reduce__(self) -> tuple[Any, tuple[str, float, float, float]]:  # ship only the settings to Ray workers
        return (SweepFeatureStore, (self.root, self.claim_timeout_s, self.settle_s, self.poll_s))

    def get_or_extract(
        self, fingerprint: str, digest: str, extract: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, bool]:
        from ..trial.features import features_from_bytes, features_to_bytes

        rel = f"{FEATURES_DIR}/{fingerprint}/{digest[:2]}/{digest}.pt"
        claim = f"{rel}.claim"
        while True:
            data = self._store.read_bytes(rel)
            if data is not None:
                return features_from_bytes(data), False
            holder = self._claim_holder(claim)
            if holder is not None and holder != self._owner:
                self._wait(rel, claim)
                continue
            started = time.monotonic()
            record = {"owner": self._owner, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
            self._store.write_bytes(claim, json.dumps(record).encode())
            time.sleep(max(self.settle_s, 3 * (time.monotonic() - started)))
            if self._claim_holder(claim) != self._owner:
                continue  # another trial claimed it in the same moment and won: wait for its features
            try:
                feats = extract()
                self._store.write_bytes(rel, features_to_bytes(feats))
            finally:
                self._store.delete(claim)
            return feats, True

    def _claim_holder(self, claim: str) -> str | None:
        """The owner of a fresh claim, or None (no claim, unreadable, or stale: its owner is gone)."""
        data = self._store.read_bytes(claim)
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            return None
        if time.time() - float(record.get("time", 0)) > self.claim_timeout_s:
            return None
        if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
            return None  # its owner ran on this machine and is gone (a killed launch): no need to wait out the timeout
        return str(record.get("owner"))

    def _wait(self, rel: str, claim: str) -> None:
        """Until the features exist or the claim is gone (done, or its owner died and it went stale)."""
        while self._store.read_bytes(rel) is None and self._claim_holder(claim) not in (None, self._owner):
            time.sleep(self.poll_s)
