"""`meiju-ray extract`: the official MEIJU'25 Track 1 release (videos) -> the MEIJU feature layout.

Input, `<release>/Track1/<English|Mandarin>` (docs/baseline.md §1.1):
    Annotation/{Training,Validation}/<id>.mp4       labelled videos
    Annotation/{Training,Validation}_transcription.csv
                                                    FileName,Subtitle[,Emotion,Intent]
    Annotation/{Training,Validation}_files.txt      optional "<id>[.mp4] <emotion> <intent>" lists
                                                    (win over the CSV's label columns)
    Annotation/Testing/<id>.mp4                     test videos, listed by the first that exists of
                                                    Annotation/Testing_files.txt,
                                                    <Lang>_Testing_files.csv, Testing_files.csv,
                                                    Testing_transcription.csv (FileName[,Subtitle])
                                                    or else every video in Annotation/Testing/
    NoAnnotation/<id>.mp4 (or NoAnnotation/Videos/) the unlabelled pool: videos only
The release is only read. Output, a new data root that `meiju-ray pipeline` reads:
    <out>/Annotation/{Training,Validation,Testing}_files.txt
    <out>/Annotation/transcription.csv              name,sentence (subtitles, ASR where none)
    <out>/Annotation/features/<folder>/<id>.npy     float32 [T, D] per modality (A, V, L)
    <out>/NoAnnotation/NoAnnotation_files.txt, transcription.csv (ASR), features/<folder>/
    <out>/{Annotation,NoAnnotation}/asr_transcription.csv
                                                    every ASR result (reused on a re-run)
    <out>/.meiju_packed/<split>-<key>/              packed Parquet shards: the pipeline's cache
    <out>/extract_summary.json                      folders, dims, counts, failures, the
                                                    data.modalities to run the pipeline with

Every step is resumable: an id whose `.npy` (or ASR text) exists is not extracted again. A video
that cannot give a modality (unreadable, no audio stream, zero frames) is reported per id with the
file named and never stops the job. Such an id is left out of the Training/Validation/pool lists;
a Testing id keeps its row (every test id needs a prediction) with zeros [1, D] for that modality,
and those zero-filled files are extracted again on the next run.

The extraction jobs themselves come in as function arguments (`MediaJob`, `TextJob`): the CLI
passes Ray Data jobs (meiju_ray.distributed.extract_media), so this module never imports Ray.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meiju_ray.config import DataConfig, ModalityConfig
from meiju_ray.data.layout import UNLABELED, DataError, check_plain_id, strip_extension
from meiju_ray.features.extractors import MediaResult
from meiju_ray.features.media import find_videos
from meiju_ray.features.transcripts import ID_COLUMNS, TEXT_COLUMNS, write_transcripts
from meiju_ray.fileio import (
    atomic_file,
    check_replaceable_dir,
    write_json_atomic,
    write_text_atomic,
)
from meiju_ray.labels import EMOTIONS, INTENTS, MISSING_LABELS

log = logging.getLogger("meiju_ray")

LABELLED = ("Training", "Validation")
SPLITS = ("Training", "Validation", "Testing")
MARKER = "extract_summary.json"
OWN_MARKER = ".meiju_extract"  # written first: a directory holding it is an extraction
EMOTION_COLUMNS = ("Emotion", "emotion", "emo", "Emo")
INTENT_COLUMNS = ("Intent", "intent", "int", "Int")


# kind ("audio" | "visual" | "asr"), the extractor's config as a dict, [(id, video path)], and a
# sink the job calls in the driver with each batch of results -> job statistics
MediaJob = Callable[[str, dict, list[tuple[str, str]], Callable[[list[MediaResult]], None]], dict]
# (id, text) items, {id: feature dir}, feature folder -> the text extraction summary
TextJob = Callable[[list[tuple[str, str]], dict[str, Path], str], dict]


@dataclass
class Utterance:
    id: str
    split: str  # Training | Validation | Testing | NoAnnotation
    video: Path  # may not exist: the job reports it
    text: str | None = None  # subtitle; None = none given (ASR fills it)
    emotion: str = ""  # label strings; "" = no label line for this id
    intent: str = ""
    label_source: str = ""  # file:line the labels came from


@dataclass
class Release:
    root: Path
    language: str  # English | Mandarin | "" (another folder name)
    utterances: list[Utterance]
    sources: dict[str, str] = field(default_factory=dict)  # what was read for what

    def split(self, name: str) -> list[Utterance]:
        return [u for u in self.utterances if u.split == name]


@dataclass
class ExtractPlan:
    """What `extract_release` runs. A config of None skips that modality (or ASR)."""

    audio: dict | None = None  # features.audio.AudioFeatureConfig fields
    visual: dict | None = None  # features.visual.VisualFeatureConfig fields
    asr: dict | None = None  # features.asr.AsrConfig fields
    text: bool = True  # run the text job on the transcripts
    audio_folder: str = ""
    visual_folder: str = ""
    text_folder: str = ""
    pack: bool = True  # pack the splits into the pipeline's shard cache at the end


# --------------------------------------------------------------------------------------------
# reading the release


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for n in names:
        if n in header:
            return n
        if n.lower() in lowered:
            return lowered[n.lower()]
    return None


def _check_label(value: str, labels: tuple[str, ...], where: str, task: str) -> str:
    v = value.strip().lower()
    if v in MISSING_LABELS or v in labels:
        return v
    raise DataError(f"{where}: unknown {task} label {value!r} (known: {', '.join(labels)})")


def read_release_csv(path: Path) -> list[dict]:
    """Rows {id, text (None if no column), emotion, intent, where} of a release CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            id_col = _column(header, ID_COLUMNS)
            if id_col is None:
                raise DataError(f"{path}: no FileName (or name/id) column; got {header}")
            text_col = _column(header, TEXT_COLUMNS)
            emo_col, int_col = _column(header, EMOTION_COLUMNS), _column(header, INTENT_COLUMNS)
            rows, seen = [], {}
            for lineno, row in enumerate(reader, 2):
                utt = strip_extension((row.get(id_col) or "").strip())
                where = f"{path}:{lineno}"
                if not utt:
                    raise DataError(f"{where}: empty {id_col}")
                check_plain_id(utt, where)
                if utt in seen:
                    raise DataError(f"{where}: duplicate id {utt!r} (first on line {seen[utt]})")
                seen[utt] = lineno
                emo = (row.get(emo_col) or "").strip() if emo_col else ""
                intent = (row.get(int_col) or "").strip() if int_col else ""
                rows.append(
                    {
                        "id": utt,
                        "text": (row.get(text_col) or "").strip() if text_col else None,
                        "emotion": _check_label(emo, EMOTIONS, where, "emotion") if emo else "",
                        "intent": _check_label(intent, INTENTS, where, "intent") if intent else "",
                        "where": where,
                    }
                )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return rows


def read_release_list(path: Path) -> list[dict]:
    """Rows {id, emotion, intent, where} of a `<id>[.ext] [<emotion> <intent>]` list file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    rows, seen = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        if lineno == 1 and parts[0].lower() in ("filename", "name", "id"):
            continue
        where = f"{path}:{lineno}"
        if len(parts) not in (1, 3):
            raise DataError(f"{where}: expected '<id> <emotion> <intent>' or '<id>', got {line!r}")
        utt = strip_extension(parts[0])
        check_plain_id(utt, where)
        if utt in seen:
            raise DataError(f"{where}: duplicate id {utt!r} (first on line {seen[utt]})")
        seen[utt] = lineno
        emo = _check_label(parts[1], EMOTIONS, where, "emotion") if len(parts) == 3 else ""
        intent = _check_label(parts[2], INTENTS, where, "intent") if len(parts) == 3 else ""
        rows.append({"id": utt, "text": None, "emotion": emo, "intent": intent, "where": where})
    return rows


def read_release(root: str | Path) -> Release:
    """The utterances of a Track 1 release folder (`<release>/Track1/<English|Mandarin>`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"release folder not found: {root}")
    root = root.resolve()  # absolute video paths: Ray workers need not share the driver's cwd
    ann = root / "Annotation"
    if not ann.is_dir():
        hint = ""
        if (root / "Track1").is_dir():
            langs = sorted(p.name for p in (root / "Track1").iterdir() if p.is_dir())
            hint = f"; pass one of {[str(root / 'Track1' / x) for x in langs]}"
        raise DataError(f"{root}: no Annotation/ folder (expected Track1/<English|Mandarin>){hint}")
    language = root.name if root.name in ("English", "Mandarin") else ""
    utts: list[Utterance] = []
    sources: dict[str, str] = {}
    for split in SPLITS:
        videos = find_videos(ann / split)
        rows: dict[str, dict] = {}
        if split == "Testing":
            candidates = [ann / "Testing_files.txt"]
            candidates += [ann / f"{language}_Testing_files.csv"] if language else []
            candidates += [ann / "Testing_files.csv", ann / "Testing_transcription.csv"]
            listing = next((p for p in candidates if p.is_file()), None)
            if listing is not None:
                sources["Testing list"] = str(listing)
                read = read_release_list if listing.suffix == ".txt" else read_release_csv
                rows = {r["id"]: r for r in read(listing)}
                for r in rows.values():  # a test list's labels are never used
                    r["emotion"] = r["intent"] = ""
            ids = list(rows) if rows else list(videos)
        else:
            csv_path = ann / f"{split}_transcription.csv"
            if csv_path.is_file():
                sources[f"{split} transcripts"] = str(csv_path)
                rows = {r["id"]: r for r in read_release_csv(csv_path)}
            list_path = ann / f"{split}_files.txt"
            if list_path.is_file():  # labels from the list win over the CSV's columns
                sources[f"{split} labels"] = str(list_path)
                for r in read_release_list(list_path):
                    base = rows.setdefault(r["id"], {"id": r["id"], "text": None})
                    base.update(emotion=r["emotion"], intent=r["intent"], where=r["where"])
            ids = list(rows) + [v for v in videos if v not in rows]
        for utt in ids:
            r = rows.get(utt, {})
            utts.append(
                Utterance(
                    utt,
                    split,
                    videos.get(utt, ann / split / f"{utt}.mp4"),
                    r.get("text"),
                    r.get("emotion", ""),
                    r.get("intent", ""),
                    r.get("where", "") if r.get("emotion") or r.get("intent") else "",
                )
            )
    pool_dir = root / UNLABELED
    pool = find_videos(pool_dir) or find_videos(pool_dir / "Videos")
    pool_texts: dict[str, dict] = {}
    if (pool_dir / "transcription.csv").is_file():  # an earlier ASR run the user supplies
        sources["NoAnnotation transcripts"] = str(pool_dir / "transcription.csv")
        pool_texts = {r["id"]: r for r in read_release_csv(pool_dir / "transcription.csv")}
    for utt, path in pool.items():
        utts.append(Utterance(utt, UNLABELED, path, (pool_texts.get(utt) or {}).get("text")))
    owner: dict[str, str] = {}
    for u in utts:
        if owner.setdefault(u.id, u.split) != u.split:
            raise DataError(
                f"{root}: id {u.id!r} is in both {owner[u.id]} and {u.split}; an utterance "
                "belongs to one split only"
            )
    if not utts:
        raise DataError(f"{root}: no videos or listed utterances found")
    return Release(root, language, utts, sources)


# --------------------------------------------------------------------------------------------
# writing


def tree(out: Path, split: str) -> Path:
    return out / (UNLABELED if split == UNLABELED else "Annotation")


def feature_dir(out: Path, split: str) -> Path:
    return tree(out, split) / "features"


def save_feature(path: Path, arr: np.ndarray) -> None:
    """Atomic .npy write: an interrupted run never leaves a file a re-run would take as done."""
    with atomic_file(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr, dtype=np.float32))


def read_asr_cache(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["name"]: r["sentence"] for r in csv.DictReader(fh) if r.get("name")}


def check_out_dir(out: Path, release: Path) -> None:
    """--out is new, empty, or an earlier extraction (its OWN_MARKER, written first): a re-run
    resumes there. The release folder itself is refused (it is only read)."""
    if out.resolve() == release.resolve():
        raise ValueError(
            f"--out {out} is the release folder; write the feature layout to a new directory "
            "(the release is only read)"
        )
    check_replaceable_dir(out, OWN_MARKER, "--out")


def _modality_line(mods: list[ModalityConfig]) -> str:
    return (
        "[" + ", ".join(f"{{name: {m.name}, folder: {m.folder}, dim: {m.dim}}}" for m in mods) + "]"
    )


class _Step:
    """One media job's bookkeeping: what to run, what came back, failures per id."""

    def __init__(self, name: str, folder: str, utts: list[Utterance], out: Path):
        self.name, self.folder, self.out = name, folder, out
        self.by_id = {u.id: u for u in utts}
        self.dim = 0
        self.done = 0
        self.failed: dict[str, dict] = {}

    def path(self, u: Utterance) -> Path:
        return feature_dir(self.out, u.split) / self.folder / f"{u.id}.npy"

    def sink(self, results: list[MediaResult]) -> None:
        for r in results:
            u = self.by_id[r.id]
            self.dim = self.dim or r.dim
            if r.value is None:
                self.failed[r.id] = {
                    "id": r.id,
                    "split": u.split,
                    "file": str(u.video),
                    "modality": self.name,
                    "kind": r.error_kind,
                    "error": r.error,
                }
                log.warning("%s: %s", self.name, r.error)
                continue
            save_feature(self.path(u), r.value)
            self.done += 1


def extract_release(
    root: str | Path,
    out: str | Path,
    plan: ExtractPlan,
    run_media: MediaJob,
    run_text: TextJob | None = None,
    text_folder_default: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Read the release, run ASR, audio, visual and text extraction (skipping finished ids), write
    the lists, transcripts and packed shards, and return (and write) the summary."""
    say = progress or (lambda msg: log.info(msg))
    t_start = time.time()
    release = read_release(root)
    out = Path(out)
    check_out_dir(out, release.root)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / OWN_MARKER, f"meiju-ray extract of {release.root}\n")
    previous = {}
    if (out / MARKER).is_file():
        try:
            previous = json.loads((out / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
    utts = release.utterances
    summary: dict = {
        "release": str(release.root),
        "out": str(out),
        "language": release.language,
        "sources": release.sources,
        "utterances": {s: len(release.split(s)) for s in (*SPLITS, UNLABELED)},
        "steps": {},
        "failed": [],
    }
    # ---- ASR for every video without a subtitle
    texts: dict[str, str] = {u.id: u.text for u in utts if u.text}
    untranscribed = [u for u in utts if not u.text]
    asr_failed: dict[str, dict] = {}
    # earlier ASR results are used whether or not this run names an ASR model
    caches = {t: tree(out, t) / "asr_transcription.csv" for t in ("Annotation", UNLABELED)}
    cache = {t: read_asr_cache(p) for t, p in caches.items()}
    tree_of = {u.id: (UNLABELED if u.split == UNLABELED else "Annotation") for u in utts}
    for u in untranscribed:
        if u.id in cache[tree_of[u.id]]:
            texts[u.id] = cache[tree_of[u.id]][u.id]
    todo = [u for u in untranscribed if u.id not in texts]
    if plan.asr is not None and untranscribed:
        by_id = {u.id: u for u in utts}
        last = [time.time()]

        def flush() -> None:
            for t, p in caches.items():
                if cache[t]:
                    write_transcripts(p, sorted(cache[t].items()))

        def asr_sink(results: list[MediaResult]) -> None:
            for r in results:
                if r.value is None:
                    asr_failed[r.id] = {
                        "id": r.id,
                        "modality": "asr",
                        "kind": r.error_kind,
                        "error": r.error,
                        "file": str(by_id[r.id].video),
                        "split": by_id[r.id].split,
                    }
                    log.warning("asr: %s", r.error)
                    continue
                texts[r.id] = str(r.value)
                cache[tree_of[r.id]][r.id] = str(r.value)
            if time.time() - last[0] > 10:
                flush()
                last[0] = time.time()

        stats = {}
        if todo:
            say(
                f"asr: {len(todo)} videos without a transcript ({len(untranscribed) - len(todo)} "
                "transcribed by an earlier run)"
            )
            try:
                stats = run_media("asr", plan.asr, [(u.id, str(u.video)) for u in todo], asr_sink)
            finally:
                flush()
        summary["steps"]["asr"] = {
            "model": plan.asr.get("model"),
            "videos": len(untranscribed),
            "transcribed": len(untranscribed) - len(asr_failed),
            "reused": len(untranscribed) - len(todo),
            "failed": len(asr_failed),
            **stats,
        }
    elif todo:
        log.warning(
            "%d videos have no transcript and no --asr model was given: their text is empty "
            "(text features zeros [1, D])",
            len(todo),
        )
    summary["no_transcript"] = sum(1 for u in utts if not texts.get(u.id))
    summary["failed"] += list(asr_failed.values())

    # ---- transcripts next to the features; text features of an id whose transcript changed
    # since the last run (e.g. ASR now fills an empty one) are computed again
    used = {}
    for t in ("Annotation", UNLABELED):
        path = tree(out, t) / "transcription.csv"
        if path.is_file():
            used.update(read_asr_cache(path))
    changed = [u for u in utts if u.id in used and used[u.id] != texts.get(u.id, "")]
    summary["transcript_changed"] = len(changed)
    if plan.text and changed:
        folder = plan.text_folder or text_folder_default
        for u in changed:
            (feature_dir(out, u.split) / folder / f"{u.id}.npy").unlink(missing_ok=True)
    write_transcripts(
        out / "Annotation" / "transcription.csv",
        [(u.id, texts.get(u.id, "")) for u in utts if u.split != UNLABELED],
    )
    pool = [u for u in utts if u.split == UNLABELED]
    if pool:
        write_transcripts(
            out / UNLABELED / "transcription.csv", [(u.id, texts.get(u.id, "")) for u in pool]
        )

    # ---- audio and visual
    modalities: list[ModalityConfig] = []
    running = {n for n, cfg in (("A", plan.audio), ("V", plan.visual)) if cfg is not None}
    earlier_fills = previous.get("zero_filled", [])
    zero_filled = [rec for rec in earlier_fills if rec.get("modality") not in running]
    dropped: set[str] = set()
    from meiju_ray.features import audio as audio_mod
    from meiju_ray.features import visual as visual_mod

    for name, cfg, folder in (
        ("A", plan.audio, plan.audio_folder),
        ("V", plan.visual, plan.visual_folder),
    ):
        if cfg is None:
            continue
        if name == "A":
            folder = folder or audio_mod.default_folder(audio_mod.AudioFeatureConfig(**cfg))
        else:
            folder = folder or visual_mod.default_folder(visual_mod.VisualFeatureConfig(**cfg))
        step = _Step(name, folder, utts, out)
        for rec in earlier_fills:  # zero-filled Testing files of an earlier run: try again
            if rec.get("modality") == name:
                Path(rec["path"]).unlink(missing_ok=True)
        todo = [u for u in utts if not step.path(u).is_file()]
        stats = {}
        if todo:
            say(
                f"{name}: {len(todo)} videos to extract into {folder} "
                f"({len(utts) - len(todo)} done by an earlier run)"
            )
            kind = "audio" if name == "A" else "visual"
            stats = run_media(kind, cfg, [(u.id, str(u.video)) for u in todo], step.sink)
        dim = step.dim or _dim_on_disk(step, utts)
        for rec in step.failed.values():
            u = step.by_id[rec["id"]]
            if u.split == "Testing" and dim:
                save_feature(step.path(u), np.zeros((1, dim), np.float32))
                zero_filled.append({"id": u.id, "modality": name, "path": str(step.path(u))})
            else:
                dropped.add(u.id)
        summary["failed"] += list(step.failed.values())
        summary["steps"][name] = {
            "model": cfg.get("model"),
            "folder": folder,
            "dim": dim,
            "extracted": step.done,
            "reused": len(utts) - len(todo),
            "failed": len(step.failed),
            **stats,
        }
        if dim:
            modalities.append(ModalityConfig(name, folder, dim))

    # ---- text features from the transcripts
    if plan.text and run_text is not None:
        folder = plan.text_folder or text_folder_default
        route = {u.id: feature_dir(out, u.split) for u in utts}
        todo = [u for u in utts if not (route[u.id] / folder / f"{u.id}.npy").is_file()]
        info: dict = {}
        if todo:
            say(f"L: {len(todo)} transcripts to embed into {folder}")
            info = run_text([(u.id, texts.get(u.id, "")) for u in todo], route, folder)
            folder = info.get("folder", folder)
        dim = int(info.get("dim") or 0) or _npy_dim(route, folder, utts)
        summary["steps"]["L"] = {
            **info,
            "folder": folder,
            "dim": dim,
            "reused": len(utts) - len(todo),
        }
        if dim:
            modalities.append(ModalityConfig("L", folder, dim))

    # ---- lists (failed ids left out, except Testing) and the shard cache
    summary["dropped"] = sorted(dropped)
    summary["zero_filled"] = zero_filled
    listed = _write_lists(out, release, dropped)
    summary["listed"] = listed
    summary["modalities"] = [{"name": m.name, "folder": m.folder, "dim": m.dim} for m in modalities]
    summary["pipeline_overrides"] = (
        [f"data.root={out.resolve()}", f"data.modalities={_modality_line(modalities)}"]
        if modalities
        else []
    )
    summary["failures_by_kind"] = _count(summary["failed"])
    if plan.pack and modalities:
        summary["packed"] = _pack(out, modalities, listed, say)
    summary["seconds"] = round(time.time() - t_start, 1)
    write_json_atomic(out / MARKER, summary)
    return summary


def _count(failed: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in failed:
        key = f"{rec['modality']}:{rec['kind']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _dim_on_disk(step: _Step, utts: list[Utterance]) -> int:
    for u in utts:
        p = step.path(u)
        if p.is_file():
            return int(np.load(p, mmap_mode="r").shape[1])
    return 0


def _npy_dim(route: dict[str, Path], folder: str, utts: list[Utterance]) -> int:
    for u in utts:
        p = route[u.id] / folder / f"{u.id}.npy"
        if p.is_file():
            return int(np.load(p, mmap_mode="r").shape[1])
    return 0


def _write_lists(out: Path, release: Release, dropped: set[str]) -> dict[str, int]:
    listed: dict[str, int] = {}
    for split in SPLITS:
        utts = release.split(split)
        if split in LABELLED:
            lines = [
                f"{u.id} {u.emotion or '-'} {u.intent or '-'}"
                for u in utts
                if (u.emotion or u.intent) and u.id not in dropped
            ]
            if not any(u.emotion or u.intent for u in utts):
                if utts:
                    log.warning(
                        "%s: no labels found (no %s_files.txt and no Emotion/Intent columns in "
                        "%s_transcription.csv); write %s yourself to train",
                        split,
                        split,
                        split,
                        out / "Annotation" / f"{split}_files.txt",
                    )
                continue
        else:
            lines = [u.id for u in utts]
        if lines:
            write_text_atomic(out / "Annotation" / f"{split}_files.txt", "\n".join(lines) + "\n")
        listed[split] = len(lines)
    pool = [u.id for u in release.split(UNLABELED) if u.id not in dropped]
    if pool:
        write_text_atomic(out / UNLABELED / f"{UNLABELED}_files.txt", "\n".join(pool) + "\n")
        listed[UNLABELED] = len(pool)
    return listed


def _pack(out: Path, modalities: list[ModalityConfig], listed: dict[str, int], say) -> dict:
    """The pipeline's own shard cache (<out>/.meiju_packed), keyed as `pack_split` keys it: a
    pipeline with the same data.root and data.modalities reads these shards without re-packing."""
    from meiju_ray.data.packing import pack_split

    cfg = DataConfig(root=str(out), modalities=modalities)
    packed = {}
    for split in (*SPLITS, UNLABELED):
        if listed.get(split):
            try:
                packed[split] = str(pack_split(cfg, split, say))
            except DataError as exc:  # e.g. a list id without features: report, keep going
                log.warning("packing %s: %s", split, exc)
                packed[split] = f"not packed: {exc}"
    return packed


def text_job_in_process(cfg) -> TextJob:
    """A `TextJob` without Ray (features.text in this process), for debugging and the inner
    ring's tests; the CLI runs the Ray Data job (distributed.extract_text)."""
    from meiju_ray.features.text import embed_texts, feature_dim, load_text_model

    def run(items: list[tuple[str, str]], route: dict[str, Path], folder: str) -> dict:
        model, tokenizer = load_text_model(cfg.model, cfg.device)
        feats = embed_texts(model, tokenizer, [t for _, t in items], cfg)
        for (utt, _), arr in zip(items, feats):
            save_feature(Path(route[utt]) / folder / f"{utt}.npy", arr)
        return {
            "utterances": len(items),
            "dim": feature_dim(model.config.hidden_size, cfg),
            "folder": folder,
            "model": cfg.model,
        }

    return run
