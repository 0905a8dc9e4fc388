"""`meiju-ray import xdailydialog|meld`: public corpora -> the MEIJU Track 1 layout, low-resource
style.

    <out>/Annotation/{Training,Validation,Testing}_files.txt
                                        "<id> <emotion> <intent>" (MEIJU label strings)
    <out>/Annotation/transcription.csv  name,sentence of every labelled utterance
    <out>/Annotation/features/<folder>/<id>.npy
                                        text features [T, D] (extract_text)
    <out>/NoAnnotation/NoAnnotation_files.txt
                                        the unlabelled pool (ids only)
    <out>/NoAnnotation/{transcription.csv, features/<folder>/}
    <out>/hidden/NoAnnotation_labels.txt
                                        the pool's withheld labels (pseudo-label accuracy)
    <out>/import_summary.json           sizes, label counts, dropped rows, options

Splits are by dialogue, never by utterance; identical dialogues (DailyDialog has ~400) are kept
together, and dialogues that also appear in a user-supplied validation/test file are removed from
the rest. Splits are filled in order validation, test, labelled training, unlabelled pool, each from
a seeded shuffle of the dialogues, until its utterance budget is reached.

XDailyDialog: emotion codes -> MEIJU emotions; the dialogue act is the second ("intent") task with
its own labels (inform, question, directive, commissive). MELD: emotion only; intent is `-`
(masked).
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meiju_ray.data.layout import UNLABELED
from meiju_ray.features.text import default_folder
from meiju_ray.features.transcripts import write_transcripts

# (id, text) items, {id: feature dir}, feature folder -> the extraction summary
FeatureExtractor = Callable[[list[tuple[str, str]], dict[str, Path], str], dict]

log = logging.getLogger("meiju_ray")

XDD_EMOTIONS = {
    0: "neutral",
    1: "anger",
    2: "disgust",
    3: "fear",
    4: "happy",
    5: "sad",
    6: "surprise",
}
XDD_ACTS = {1: "inform", 2: "question", 3: "directive", 4: "commissive"}
ACT_LABELS = ["inform", "question", "directive", "commissive"]
MELD_EMOTIONS = {
    "neutral": "neutral",
    "joy": "happy",
    "surprise": "surprise",
    "anger": "anger",
    "sadness": "sad",
    "disgust": "disgust",
    "fear": "fear",
}
MISSING = "-"
TRACK1_MANDARIN = {"labelled": 2294, "validation": 324, "test": 643}
SPLITS = ("Training", "Validation", "Testing")


@dataclass
class Dialogue:
    """One dialogue: utterance texts with their label strings (MISSING where a task has none)."""

    id: str  # id prefix of its utterances, e.g. xdd-zh_d00042
    texts: list[str]
    emotions: list[str]
    intents: list[str]
    key: str = ""  # normalised text: identical dialogues share it

    def __len__(self) -> int:
        return len(self.texts)

    def utterance_ids(self) -> list[str]:
        return [f"{self.id}_u{k:02d}" for k in range(len(self.texts))]


@dataclass
class ReadResult:
    dialogues: list[Dialogue]
    dropped: int = 0  # dialogues skipped (label count != utterance count)
    dropped_lines: list[int] = field(default_factory=list)


def default_source(corpus: str) -> Path:
    """<repo>/../shared/data/<corpus>: a convenience for a checkout next to shared/; pass --source
    otherwise."""
    repo = Path(__file__).resolve().parents[2]  # meiju_ray/features/importers.py -> the checkout
    return repo.parent / "shared" / "data" / corpus


def _corpus_dir(source: str | Path | None, corpus: str, marker: str) -> Path:
    base = Path(source) if source else default_source(corpus)
    for cand in (base, base / corpus):
        if (cand / marker).is_file():
            return cand
    raise FileNotFoundError(
        f"{corpus}: {marker} not found in {base} (pass --source DIR, the folder holding it)"
    )


def _key(texts: list[str]) -> str:
    return "|".join(re.sub(r"\W+", "", t.lower()) for t in texts)


def _split_eou(text: str) -> list[str]:
    parts = [p.strip() for p in text.split("__eou__")]
    while parts and not parts[-1]:
        parts.pop()  # dev_human lines end in __eou__
    return parts


def _ints(line: str) -> list[int]:
    return [int(x) for x in line.split()]


def _xdd_dialogue(did: str, texts: list[str], emo: list[int], act: list[int]) -> Dialogue:
    return Dialogue(
        did, texts, [XDD_EMOTIONS[e] for e in emo], [XDD_ACTS[a] for a in act], _key(texts)
    )


def read_xdailydialog(source: str | Path | None, lang: str) -> ReadResult:
    """dialogues_text_{En,Zh}.txt + emotion + action files; misaligned lines are dropped and
    counted."""
    if lang not in ("en", "zh"):
        raise ValueError(f"--lang must be en or zh, got {lang!r}")
    name = f"dialogues_text_{lang.capitalize()}.txt"
    d = _corpus_dir(source, "xdailydialog", name)
    texts = (d / name).read_text(encoding="utf-8").splitlines()
    emos = (d / "dialogues_emotion.txt").read_text(encoding="utf-8").splitlines()
    acts = (d / "dialogues_action.txt").read_text(encoding="utf-8").splitlines()
    if not len(texts) == len(emos) == len(acts):
        raise ValueError(
            f"{d}: text/emotion/action files are not line-aligned "
            f"({len(texts)}/{len(emos)}/{len(acts)})"
        )
    out = ReadResult([])
    for i, (t, e, a) in enumerate(zip(texts, emos, acts)):
        _add_or_drop(out, i + 1, f"xdd-{lang}_d{i:05d}", _split_eou(t), _ints(e), _ints(a))
    return out


def _add_or_drop(
    out: ReadResult, line: int, dialogue_id: str, utts: list[str], emo: list[int], act: list[int]
) -> None:
    """Keep a dialogue whose label counts match its utterances; count and remember the line of any
    other."""
    if not utts or not len(utts) == len(emo) == len(act):
        out.dropped += 1
        out.dropped_lines.append(line)
        return
    out.dialogues.append(_xdd_dialogue(dialogue_id, utts, emo, act))


def read_xdd_human(path: str | Path, tag: str = "user") -> ReadResult:
    """A `*_human.txt` file: text<TAB>topic<TAB>acts<TAB>emotions per dialogue (utterances end in
    __eou__)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dialogue file not found: {path}")
    out = ReadResult([])
    stem = re.sub(r"[^A-Za-z0-9]+", "-", path.stem).strip("-") or tag
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(
                f"{path}:{i + 1}: expected 4 tab-separated fields (text, topic, acts, emotions), "
                f"got {len(fields)}"
            )
        _add_or_drop(
            out,
            i + 1,
            f"{tag}-{stem}_d{i:05d}",
            _split_eou(fields[0]),
            _ints(fields[3]),
            _ints(fields[2]),
        )
    return out


def read_meld(source: str | Path | None, split: str) -> ReadResult:
    """MELD {train,dev,test}_sent_emo.csv -> dialogues keyed by (Dialogue_ID, Utterance_ID); intent
    missing."""
    name = f"{split}_sent_emo.csv"
    d = _corpus_dir(source, "meld", name)
    rows: dict[int, dict[int, tuple[str, str]]] = {}
    with open(d / name, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), 2):
            emo = row["Emotion"].strip().lower()
            if emo not in MELD_EMOTIONS:
                raise ValueError(f"{d / name}:{lineno}: unknown emotion {row['Emotion']!r}")
            text = " ".join(row["Utterance"].split())
            rows.setdefault(int(row["Dialogue_ID"]), {})[int(row["Utterance_ID"])] = (
                text,
                MELD_EMOTIONS[emo],
            )
    out = ReadResult([])
    for dia in sorted(rows):
        utts = [rows[dia][u] for u in sorted(rows[dia])]
        texts = [t for t, _ in utts]
        out.dialogues.append(
            Dialogue(
                f"meld-{split}_d{dia:04d}",
                texts,
                [e for _, e in utts],
                [MISSING] * len(utts),
                _key(texts),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# splitting by dialogue


def group_duplicates(dialogues: list[Dialogue]) -> list[list[Dialogue]]:
    """Dialogues with the same normalised text form one group (first-seen order)."""
    groups: dict[str, list[Dialogue]] = {}
    for d in dialogues:
        groups.setdefault(d.key or d.id, []).append(d)
    return list(groups.values())


def split_by_dialogue(
    dialogues: list[Dialogue], budgets: dict[str, int], seed: int
) -> dict[str, list[Dialogue]]:
    """Fill each split in `budgets` order (utterance counts; -1 = all that remain) from shuffled
    dialogue groups.

    A split takes whole groups while it is below its budget, so it may pass the budget by at most
    one dialogue group. Identical dialogues never straddle two splits.
    """
    groups = group_duplicates(dialogues)
    random.Random(seed).shuffle(groups)
    out: dict[str, list[Dialogue]] = {name: [] for name in budgets}
    it = iter(groups)
    pending = next(it, None)
    for name, budget in budgets.items():
        n = 0
        while pending is not None and (budget < 0 or n < budget):
            out[name].extend(pending)
            n += sum(len(d) for d in pending)
            pending = next(it, None)
    return out


def remove_overlap(
    dialogues: list[Dialogue], held_out: list[Dialogue]
) -> tuple[list[Dialogue], int]:
    """Drop dialogues whose normalised text equals a held-out dialogue's (README: dev_human
    overlaps)."""
    keys = {d.key for d in held_out}
    kept = [d for d in dialogues if d.key not in keys]
    return kept, len(dialogues) - len(kept)


# --------------------------------------------------------------------------------------------
# writing the layout


def _label_counts(dialogues: list[Dialogue]) -> dict[str, dict[str, int]]:
    emo: dict[str, int] = {}
    intent: dict[str, int] = {}
    for d in dialogues:
        for e in d.emotions:
            emo[e] = emo.get(e, 0) + 1
        for i in d.intents:
            intent[i] = intent.get(i, 0) + 1
    return {"emotion": dict(sorted(emo.items())), "intent": dict(sorted(intent.items()))}


def _list_lines(dialogues: list[Dialogue], labels: bool) -> str:
    lines = []
    for d in dialogues:
        for utt, e, i in zip(d.utterance_ids(), d.emotions, d.intents):
            lines.append(f"{utt} {e} {i}" if labels else utt)
    return "\n".join(lines) + "\n"


def write_layout(out: Path, splits: dict[str, list[Dialogue]]) -> None:
    """List files, transcripts and withheld pool labels (features are written by extract_text)."""
    ann, pool, hidden = out / "Annotation", out / UNLABELED, out / "hidden"
    for d in (ann, pool, hidden):
        d.mkdir(parents=True, exist_ok=True)
    labelled_rows = []
    for name in SPLITS:
        (ann / f"{name}_files.txt").write_text(
            _list_lines(splits[name], labels=True), encoding="utf-8"
        )
        labelled_rows += [(u, t) for d in splits[name] for u, t in zip(d.utterance_ids(), d.texts)]
    write_transcripts(ann / "transcription.csv", labelled_rows)
    unl = splits[UNLABELED]
    (pool / f"{UNLABELED}_files.txt").write_text(
        _list_lines(unl, labels=False) if unl else "", encoding="utf-8"
    )
    write_transcripts(
        pool / "transcription.csv",
        [(u, t) for d in unl for u, t in zip(d.utterance_ids(), d.texts)],
    )
    (hidden / f"{UNLABELED}_labels.txt").write_text(
        _list_lines(unl, labels=True) if unl else "", encoding="utf-8"
    )


@dataclass
class ImportOptions:
    labelled: int = TRACK1_MANDARIN["labelled"]  # labelled training utterances
    validation: int = 1000  # validation utterances (ignored with validation_file)
    test: int = 1000  # test utterances (ignored with test_file)
    unlabelled: int = 8000  # unlabelled pool utterances; -1 = all the rest
    seed: int = 0  # the dialogue shuffle


def plan_xdailydialog(
    source: str | Path | None,
    lang: str,
    opts: ImportOptions,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
) -> tuple[dict[str, list[Dialogue]], dict]:
    """Read, deduplicate and split XDailyDialog; returns the splits and a summary (nothing
    written)."""
    corpus = read_xdailydialog(source, lang)
    info: dict = {
        "corpus": "xdailydialog",
        "lang": lang,
        "dialogues_read": len(corpus.dialogues) + corpus.dropped,
        "dropped_misaligned": corpus.dropped,
        "dropped_lines": corpus.dropped_lines,
    }
    pool = corpus.dialogues
    fixed: dict[str, list[Dialogue]] = {}
    for split, path, tag in (
        ("Validation", validation_file, "val"),
        ("Testing", test_file, "test"),
    ):
        if path:
            got = read_xdd_human(path, tag)
            pool, removed = remove_overlap(pool, got.dialogues)
            fixed[split] = got.dialogues
            info[f"{split.lower()}_file"] = {
                "path": Path(path).name,
                "dialogues": len(got.dialogues),
                "dropped_misaligned": got.dropped,
                "overlap_removed_from_corpus": removed,
            }
    info["distinct_dialogue_groups"] = len(group_duplicates(pool))
    budgets = {
        k: v
        for k, v in (
            ("Validation", opts.validation),
            ("Testing", opts.test),
            ("Training", opts.labelled),
            (UNLABELED, opts.unlabelled),
        )
        if k not in fixed
    }
    splits = {**split_by_dialogue(pool, budgets, opts.seed), **fixed}
    return splits, info


def plan_meld(
    source: str | Path | None, opts: ImportOptions
) -> tuple[dict[str, list[Dialogue]], dict]:
    """MELD: Validation = dev, Testing = test; train dialogues -> labelled training + unlabelled
    pool."""
    train, dev, test = (read_meld(source, s) for s in ("train", "dev", "test"))
    splits = split_by_dialogue(
        train.dialogues, {"Training": opts.labelled, UNLABELED: opts.unlabelled}, opts.seed
    )
    splits["Validation"], splits["Testing"] = dev.dialogues, test.dialogues
    return splits, {
        "corpus": "meld",
        "lang": "en",
        "dialogues_read": len(train.dialogues) + len(dev.dialogues) + len(test.dialogues),
        "dropped_misaligned": 0,
    }


def import_corpus(
    splits: dict[str, list[Dialogue]],
    info: dict,
    out: str | Path,
    text_cfg,
    opts: ImportOptions,
    extract: FeatureExtractor | None = None,
    folder: str = "",
) -> dict:
    """Write the layout for planned splits, extract their text features with `extract` (the CLI
    passes the Ray Data job; None = layout and transcripts only), and write import_summary.json."""

    out = Path(out)
    if out.exists() and any(p.name != ".meiju_packed" for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    write_layout(out, splits)
    folder = folder or default_folder(text_cfg)
    summary = {
        **info,
        "options": vars(opts),
        "feature_folder": folder,
        "splits": {
            name: {
                "dialogues": len(splits[name]),
                "utterances": sum(len(d) for d in splits[name]),
                "labels": _label_counts(splits[name]),
            }
            for name in (*SPLITS, UNLABELED)
        },
    }
    if extract is not None:
        route: dict[str, Path] = {}
        items: list[tuple[str, str]] = []
        for name in (*SPLITS, UNLABELED):
            target = out / ("NoAnnotation/features" if name == UNLABELED else "Annotation/features")
            for d in splits[name]:
                for utt, text in zip(d.utterance_ids(), d.texts):
                    route[utt] = target
                    items.append((utt, text))
        summary["text_features"] = extract(items, route, folder)
    (out / "import_summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return summary
