"""Transcript files: `FileName,Subtitle` (the official MEIJU CSVs), `name,sentence` (the baseline's
renamed CSVs and what the corpus importers write) or `id,text`. The extension of an id is
dropped."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from meiju_ray.data.layout import DataError, check_plain_id, strip_extension
from meiju_ray.fileio import atomic_file

ID_COLUMNS = ("FileName", "name", "id")
TEXT_COLUMNS = ("Subtitle", "sentence", "text")


def read_transcripts(path: str | Path) -> list[tuple[str, str]]:
    """[(utterance id, text)] from a transcript CSV (FileName,Subtitle | name,sentence |
    id,text)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"transcript file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        id_col = next((c for c in ID_COLUMNS if c in header), None)
        text_col = next((c for c in TEXT_COLUMNS if c in header), None)
        if id_col is None or text_col is None:
            raise DataError(
                f"{path}: expected columns FileName,Subtitle or name,sentence; got {header}"
            )
        rows, seen = [], set()
        for lineno, row in enumerate(reader, 2):
            utt = strip_extension((row.get(id_col) or "").strip())
            if not utt:
                raise DataError(f"{path}:{lineno}: empty {id_col}")
            check_plain_id(utt, f"{path}:{lineno}")  # extract-text writes <id>.npy
            if utt in seen:
                raise DataError(f"{path}:{lineno}: duplicate id {utt!r}")
            seen.add(utt)
            rows.append((utt, (row.get(text_col) or "").strip()))
    if not rows:
        raise DataError(f"{path}: no utterances")
    return rows


def write_transcripts(path: str | Path, rows: Iterable[tuple[str, str]]) -> Path:
    """`name,sentence` CSV (what read_transcripts and the official extractors read)."""
    with atomic_file(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "sentence"])
        writer.writerows(rows)
    return Path(path)
