"""The synthetic imaging domains' appearance (the names a `synthetic` dataset entry may use), apart from the
generator so that entries can check a domain name without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    """Appearance of one synthetic imaging domain (grey levels in 0-1, lengths relative to the short side)."""

    background: float  # cytoplasm grey level
    texture_amp: float  # cytoplasm texture amplitude
    texture_sigma: float  # texture grain (fraction of the short side)
    membrane_dark: float  # membrane darkening
    membrane_width: float  # fraction of the short side
    n_cells: tuple[int, int]
    mito_dark: float  # mitochondrion interior darkening
    rim_dark: float  # outer membrane darkening
    cristae_amp: float
    mito_axis: tuple[float, float]  # long semi-axis range (fraction of the short side)
    n_mito: tuple[int, int]
    blur: float  # optical blur (fraction of the short side)
    noise: float  # additive Gaussian noise sigma
    gamma: float


DOMAINS: dict[str, Domain] = {
    # "a": ssTEM-like (VNC): bright, high contrast, clean, smooth cytoplasm, thin membranes, many small cells
    "a": Domain(
        background=0.74,
        texture_amp=0.035,
        texture_sigma=0.02,
        membrane_dark=0.55,
        membrane_width=0.006,
        n_cells=(14, 22),
        mito_dark=0.30,
        rim_dark=0.45,
        cristae_amp=0.10,
        mito_axis=(0.05, 0.09),
        n_mito=(3, 6),
        blur=0.002,
        noise=0.025,
        gamma=1.0,
    ),
    # "b": FIB-SEM-like (Lucchi++): darker, low contrast, grainy and noisy, thick membranes, large mitochondria
    "b": Domain(
        background=0.50,
        texture_amp=0.08,
        texture_sigma=0.006,
        membrane_dark=0.22,
        membrane_width=0.012,
        n_cells=(6, 10),
        mito_dark=0.20,
        rim_dark=0.18,
        cristae_amp=0.07,
        mito_axis=(0.08, 0.14),
        n_mito=(2, 4),
        blur=0.004,
        noise=0.08,
        gamma=1.3,
    ),
}
