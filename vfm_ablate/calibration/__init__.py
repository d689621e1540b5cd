"""Measured cost of trials on the hardware at hand: `vfm-ablate calibrate` writes a calibration file that
`vfm-ablate run --dry-run --calibration FILE` turns into device-hours, GPU shares and a makespan."""
