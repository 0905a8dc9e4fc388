"""Real-data results table (RESULTS.md): XDailyDialog zh/en and MELD, low-resource, several seeds.

    python -m benchmarks.results_real                # every dataset, seeds 0 1 2, then RESULTS.md
    python -m benchmarks.results_real --datasets meld --seeds 0
    python -m benchmarks.results_real --render-only  # rebuild RESULTS.md from finished runs

Needs the imported data roots of the experiments (docs/real_data.md), e.g.
    meiju-ray import xdailydialog --lang zh --out worlds/xdd_zh

Per dataset and seed (each run is skipped when its result file exists, so an interrupted table
resumes):
  reference   logistic regression on [mean | max]-pooled features (meiju_ray.train.reference)
  baseline    the `baseline` preset (experiments/baseline.yaml's model/loss/train sections),
              labelled data only
  paper       experiments/<dataset>.yaml pipeline: teacher (supervised only) -> pseudo-labels
              (per-task 0.99) -> student; teacher = "paper, supervised",
              student = "paper + pseudo 0.99"
  rules       the same teacher, other selection rules (RULES below) -> one student each; the rule
              with the best mean validation joint is reported as "best rule" (chosen on
              validation: optimistic)
All numbers are validation weighted F1 (Track 1 metric); joint = harmonic mean (emotion only for
MELD).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import REPO, preset_overrides

DATASETS = {
    "xdd_zh": "XDailyDialog (Mandarin text)",
    "xdd_en": "XDailyDialog (English text)",
    "meld": "MELD (English, emotion only)",
}
RULES = {  # name -> pseudo.* overrides; per_task_0.99 is the pipeline's own student
    "per_task_0.99": [],
    "per_task_0.9": ["pseudo.threshold=0.9"],
    "joint_0.9": ["pseudo.rule=joint", "pseudo.threshold=0.9"],
    "topk_150": ["pseudo.rule=topk", "pseudo.topk_per_class=150", "pseudo.min_confidence=0.5"],
}
COMMON = ["train.num_threads=1", "tracking.enabled=false"]
log = logging.getLogger("meiju_ray")


def baseline_overrides() -> list[str]:
    return preset_overrides("baseline")


def _cfg(dataset: str, seed: int, out: Path, *extra: str):
    from meiju_ray.config import load_config

    return load_config(
        REPO / "experiments" / f"{dataset}.yaml",
        [f"seed={seed}", f"output_dir={out}", *COMMON, *extra],
    )


def _done(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_seed(dataset: str, seed: int, root: Path, rules: list[str], baseline: bool = True) -> dict:
    """Every method for one dataset and seed; results are cached in <root>/<dataset>/seed<k>/."""
    from meiju_ray.distributed.pseudo_label import run_pseudo_label
    from meiju_ray.distributed.train import run_train
    from meiju_ray.pipeline import run_pipeline
    from meiju_ray.pseudo.labelling import load_pseudo_rows

    base = root / dataset / f"seed{seed}"
    res: dict = {}
    t0 = time.time()
    paper = base / "paper"
    if (m := _done(paper / "metrics.json")) is None:
        log.info("== %s seed %d: paper pipeline (teacher -> pseudo 0.99 -> student)", dataset, seed)
        m = run_pipeline(_cfg(dataset, seed, paper))
    res["reference"] = m["reference_logistic"]
    res["paper_supervised"] = m["teacher"]
    res["majority"] = m["majority_baseline"]
    pseudo = _done(paper / "pseudo_r1" / "summary.json") or {}
    res["rules"] = {"per_task_0.99": {**m["student"], "pseudo": _pseudo_info(pseudo)}}
    teacher = paper / "teacher" / "checkpoint"
    from meiju_ray.distributed.cluster import init_ray

    # a no-op after run_pipeline; needed when it was cached
    init_ray(_cfg(dataset, seed, paper).ray)
    for name in rules:
        if name == "per_task_0.99":
            continue
        out = base / f"rule_{name}"
        if (s := _done(out / "student" / "metrics.json")) is None:
            log.info("== %s seed %d: rule %s", dataset, seed, name)
            cfg = _cfg(dataset, seed, out / "student", *RULES[name])
            info = run_pseudo_label(cfg, teacher, out / "pseudo")
            s = run_train(cfg, extra_train=load_pseudo_rows(cfg, out / "pseudo"))
        info = _done(out / "pseudo" / "summary.json") or {}
        res["rules"][name] = {k: s[k] for k in ("emo", "int", "joint")} | {
            "pseudo": _pseudo_info(info)
        }
    out = base / "baseline"
    if (b := _done(out / "metrics.json")) is None and baseline:
        log.info("== %s seed %d: baseline preset", dataset, seed)
        b = run_train(_cfg(dataset, seed, out, *baseline_overrides(), "pseudo.enabled=false"))
    if b is not None:
        res["baseline"] = {k: b[k] for k in ("emo", "int", "joint")}
    res["seconds"] = round(time.time() - t0, 1)
    (base / "result.json").write_text(json.dumps(res, indent=2, default=_nan))
    return res


def _nan(x):
    return None


def _pseudo_info(info: dict) -> dict:
    keys = (
        "n_rows",
        "n_selected",
        "n_emotion_kept",
        "n_intent_kept",
        "emotion_accuracy",
        "intent_accuracy",
        "emotion_accuracy_all",
        "intent_accuracy_all",
    )
    return {k: info.get(k) for k in keys}


# --------------------------------------------------------------------------------------------
# rendering


def _ms(values: list[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _rows(results: list[dict], get) -> list[float | None]:
    out = []
    for r in results:
        try:
            out.append(get(r))
        except (KeyError, TypeError):
            out.append(None)
    return out


CHECKPOINTS = {
    "baseline": "baseline",
    "paper_supervised": "paper/teacher",
    "per_task_0.99": "paper/student_r1",
}


def macro_f1(run_dir: Path) -> dict | None:
    """Validation macro F1 per task of run_dir's checkpoint (cached next to it); None if absent."""
    cache = run_dir / "val_macro.json"
    if (got := _done(cache)) is not None:
        return got
    if not (run_dir / "checkpoint").is_dir():
        return None
    from meiju_ray.train.inference import evaluate_checkpoint

    conf = evaluate_checkpoint(run_dir / "checkpoint", device="cpu")
    out = {}
    for task in ("emotion", "intent"):
        c = [[float(x) for x in row] for row in conf[f"confusion_{task}"]]
        f1s = []
        for k in range(len(c)):
            tp, support, predicted = c[k][k], sum(c[k]), sum(row[k] for row in c)
            if support:
                f1s.append(2 * tp / (support + predicted))
        out[task] = sum(f1s) / len(f1s) if f1s else None
    cache.write_text(json.dumps(out))
    return out


def _macro(r: dict, key: str, task: str) -> float | None:
    sub = CHECKPOINTS.get(key, f"rule_{key}/student")
    got = macro_f1(Path(r["_dir"]) / sub) if "_dir" in r else None
    return None if got is None else got[task]


def render_dataset(dataset: str, results: list[dict], seeds: list[int]) -> tuple[str, str]:
    single = dataset == "meld"
    rules = sorted({n for r in results for n in r["rules"]}, key=list(RULES).index)

    # the best rule is chosen on the seeds where every rule ran (with --rules narrowed for later
    # seeds, the choice is made on the first seed's full comparison and only that rule is run again)
    common = [r for r in results if set(rules) <= set(r["rules"])] or results

    def mean_joint(rule):
        vals = [v for v in _rows(common, lambda r: r["rules"][rule]["joint"]) if v is not None]
        return sum(vals) / len(vals) if vals else -1

    best = max(rules, key=mean_joint)
    lines = [
        f"### {DATASETS[dataset]}: validation weighted F1, "
        f"mean ± std over seeds {', '.join(map(str, seeds))}",
        "",
        "| method | seeds | emotion | "
        + ("act | joint |" if not single else "joint (= emotion) |")
        + " emotion macro-F1 |"
        + (" act macro-F1 |" if not single else ""),
        "|---|---|---|"
        + ("---|---|" if not single else "---|")
        + "---|"
        + ("---|" if not single else ""),
    ]

    def row(name, get, key=None):
        n = sum(v is not None for v in _rows(results, lambda r: get(r)["emo"]))
        cells = [str(n), _ms(_rows(results, lambda r: get(r)["emo"]))]
        if not single:
            cells += [_ms(_rows(results, lambda r: get(r)["int"]))]
        cells += [_ms(_rows(results, lambda r: get(r)["joint"]))]
        for task in ("emotion",) + (() if single else ("intent",)):
            cells.append(
                _ms(_rows(results, lambda r, task=task: _macro(r, key, task) if get(r) else None))
                if key
                else "–"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("majority class (floor)", lambda r: r["majority"])
    row("reference: logistic regression, [mean, max]-pooled", lambda r: r["reference"])
    row("`baseline` preset, supervised", lambda r: r["baseline"], "baseline")
    row("paper model, supervised only", lambda r: r["paper_supervised"], "paper_supervised")
    row(
        "paper model + pseudo-labels (per-task 0.99)",
        lambda r: r["rules"]["per_task_0.99"],
        "per_task_0.99",
    )
    row(
        f"paper model + pseudo-labels, best rule on val (`{best}`)",
        lambda r: r["rules"][best],
        best,
    )
    lines.append("")
    plines = [
        f"#### {DATASETS[dataset]}: pseudo-labels on the unlabelled pool "
        "(mean ± std over the seeds run; accuracy against the withheld labels)",
        "",
        "| rule | seeds | pool | rows kept | emotion kept | emotion acc. (kept) | "
        + ("act kept | act acc. (kept) | " if not single else "")
        + "student joint |",
        "|---|---|---|---|---|---|" + ("---|---|" if not single else "") + "---|",
    ]
    for rule in rules:

        def p(key, rule=rule):
            return _ms(
                _rows(results, lambda r: r["rules"][rule]["pseudo"][key]),
                0 if key.startswith("n_") else 3,
            )

        n_seeds = sum(1 for res in results if rule in res["rules"])
        cells = [
            str(n_seeds),
            p("n_rows"),
            p("n_selected"),
            p("n_emotion_kept"),
            p("emotion_accuracy"),
        ]
        if not single:
            cells += [p("n_intent_kept"), p("intent_accuracy")]
        cells.append(_ms(_rows(results, lambda r, rule=rule: r["rules"][rule]["joint"])))
        plines.append(
            f"| `{rule}`{' (best)' if rule == best else ''} | " + " | ".join(cells) + " |"
        )
    plines.append("")
    return "\n".join(lines), "\n".join(plines)


def collect(root: Path, dataset: str, seeds: list[int]) -> tuple[list[dict], list[int]]:
    results, done = [], []
    for seed in seeds:
        r = _done(root / dataset / f"seed{seed}" / "result.json")
        if r is not None:
            r["_dir"] = str(root / dataset / f"seed{seed}")
            results.append(r)
            done.append(seed)
    return results, done


def data_table(datasets: list[str]) -> str:
    """Split sizes of the imported data roots (import_summary.json)."""
    lines = [
        "| data root | text model (folder) | labelled train | validation | test | "
        "unlabelled pool | dropped (misaligned) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        tree = yaml.safe_load((REPO / "experiments" / f"{dataset}.yaml").read_text())
        path = Path(tree["data"]["root"]) / "import_summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        n = {k: f"{v['utterances']} ({v['dialogues']} dial.)" for k, v in s["splits"].items()}
        lines.append(
            f"| `{tree['data']['root']}` | {s.get('text_features', {}).get('model', '?')} "
            f"(`{s['feature_folder']}`) | {n['Training']} | {n['Validation']} | {n['Testing']} | "
            f"{n['NoAnnotation']} | {s['dropped_misaligned']} |"
        )
    return "\n".join(lines) + "\n"


def render(root: Path, datasets: list[str], seeds: list[int]) -> str:
    parts = [data_table(datasets)]
    for dataset in datasets:
        results, done = collect(root, dataset, seeds)
        if not results:
            parts.append(f"### {DATASETS[dataset]}\n\nnot run yet.\n")
            continue
        main_table, pseudo_table = render_dataset(dataset, results, done)
        parts += [main_table, pseudo_table]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument(
        "--out", default="runs/results_real", help="run directory (results are cached here)"
    )
    parser.add_argument(
        "--tables", default="runs/results_real/tables.md", help="where to write the tables"
    )
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--skip-baseline", action="store_true", help="leave the (slow) baseline preset for later"
    )
    parser.add_argument(
        "--write", default=None, help="also replace the generated block of this file (RESULTS.md)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(args.out)
    import torch

    torch.set_num_threads(1)
    if not args.render_only:
        for dataset in args.datasets:
            for seed in args.seeds:
                run_seed(dataset, seed, root, args.rules, baseline=not args.skip_baseline)
                Path(args.tables).write_text(render(root, args.datasets, args.seeds))
    text = render(root, args.datasets, args.seeds)
    Path(args.tables).parent.mkdir(parents=True, exist_ok=True)
    Path(args.tables).write_text(text)
    if args.write:
        write_between_markers(Path(args.write), text)
    print(text)
    return 0


START, END = "<!-- results_real:start -->", "<!-- results_real:end -->"


def write_between_markers(path: Path, text: str) -> None:
    """Replace the generated block of RESULTS.md; the hand-written text around it stays."""
    doc = path.read_text() if path.is_file() else f"{START}\n{END}\n"
    if START not in doc or END not in doc:
        raise SystemExit(f"{path}: markers {START} / {END} not found")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
