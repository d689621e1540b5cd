"""Resuming a sweep safely: what a trial reads as an identity (identity), a resume against changed inputs
(changed), and the manifest that says which sweep and execution a storage folder holds (manifest)."""
