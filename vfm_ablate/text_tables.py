"""The one fixed-width / Markdown table formatter of the command line (dry run, results, diagnose, backbones)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A plain fixed-width table, one line per row; missing cells are blank."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    return "\n".join([line(columns), "  ".join("-" * w for w in widths), *(line(row) for row in cells)])


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table ('|' inside cells escaped)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])

    def esc(text: object) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(esc(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
