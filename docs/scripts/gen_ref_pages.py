"""Generate one API page per public module of the three packages (new modules appear automatically)."""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
nav = mkdocs_gen_files.Nav()

for src in sorted((ROOT / "packages").glob("*/src")):
    for path in sorted(src.rglob("*.py")):
        module_path = path.relative_to(src).with_suffix("")
        parts = tuple(module_path.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        doc_path = Path(*parts).with_suffix(".md")
        nav[parts] = doc_path.as_posix()
        with mkdocs_gen_files.open(Path("reference", doc_path), "w") as fd:
            fd.write(f"::: {'.'.join(parts)}\n")

with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as nav_file:
    nav_file.writelines(nav.build_literate_nav())
