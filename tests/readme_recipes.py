"""README's cluster recipes as the tests read them: taken from README.md itself, so the tests run what users copy."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def slurm_script() -> str:
    """The sbatch script of README's "Running on a Slurm cluster" (not the login-node fetch block before it)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running on a Slurm cluster", 1)[1]
    blocks = [block.split("```", 1)[0] for block in section.split("```bash")[1:]]
    return next(block for block in blocks if "#SBATCH" in block).lstrip("\n")


def adapt(script: str, changes: dict[str, str]) -> str:
    """Apply a user's edits: each `old` text must occur exactly once, so a README change that moves or drops a line
    the test edits fails here instead of silently running something else."""
    for old, new in changes.items():
        count = script.count(old)
        if count != 1:
            raise AssertionError(f"README's Slurm script has {count} occurrences of {old!r}, expected 1")
        script = script.replace(old, new)
    return script
