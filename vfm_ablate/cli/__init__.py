"""The `vfm-ablate` command line: `main` plus one module per command."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
