"""`meiju-ray` command line: a thin argparse layer over plain entry-point functions.

Every subcommand maps to one function that tests call directly. Errors in input data or config
print one clear line (`error: <file>:<line>: ...`) and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from meiju_ray.config import ConfigError, load_config
from meiju_ray.layout import UNLABELED, DataError
from meiju_ray.tracking import TrackingError

log = logging.getLogger("meiju_ray")


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment YAML, e.g. experiments/smoke.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.epochs=5 data.root=worlds/demo")


def cmd_synth(args: argparse.Namespace) -> int:
    from meiju_ray.synth import write_world
    summary = write_world(args.out, seed=args.seed, scale=args.scale, unlabeled=args.unlabeled,
                          progress=lambda msg: log.info(msg))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from meiju_ray.packing import pack_split
    cfg = load_config(args.experiment, args.overrides, require=False)
    if not cfg.data.root:
        raise ConfigError("config key 'data.root' must be set")
    for split in args.splits:
        path = pack_split(cfg.data, split, lambda msg: log.info(msg), force=args.force)
        print(f"{split}: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from meiju_ray.training import run_train
    cfg = load_config(args.experiment, args.overrides)
    _address(args, cfg)
    metrics = run_train(cfg)
    print(json.dumps({k: metrics[k] for k in ("emo", "int", "joint", "best_epoch", "epochs_run")}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from meiju_ray.inference import evaluate_checkpoint
    result = evaluate_checkpoint(args.checkpoint, args.data_root, args.split, args.device)
    print(f"{args.split}: n={result['n']}  emo {result['emo']:.4f}  int {result['int']:.4f}  "
          f"joint {result['joint']:.4f}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from meiju_ray.inference import predict_checkpoint
    path = predict_checkpoint(args.checkpoint, args.out, args.data_root, args.split, args.device)
    print(path)
    return 0


def _address(args: argparse.Namespace, cfg) -> None:
    if getattr(args, "address", None):
        cfg.ray.address = args.address


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from meiju_ray.pseudo_label import run_pseudo_label
    from meiju_ray.ray_env import init_ray
    cfg = load_config(args.experiment, args.overrides)
    _address(args, cfg)
    teacher = Path(args.checkpoint or Path(cfg.output_dir) / "checkpoint")
    out = Path(args.out or Path(cfg.output_dir) / "pseudo_labels")
    init_ray(cfg.ray)
    info = run_pseudo_label(cfg, teacher, out)
    print(json.dumps({k: info[k] for k in ("n_rows", "n_selected", "selection_rate", "n_emotion_kept",
                                           "n_intent_kept")} | {"out": str(out)}))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from meiju_ray.pipeline import run_pipeline
    cfg = load_config(args.experiment, args.overrides)
    _address(args, cfg)
    m = run_pipeline(cfg)
    t, s = m["teacher"], m["student"]
    print(f"\nteacher (labelled only):  emo {t['emo']:.4f}  int {t['int']:.4f}  joint {t['joint']:.4f}")
    print(f"student (+{m['n_pseudo']} pseudo):   emo {s['emo']:.4f}  int {s['int']:.4f}  joint {s['joint']:.4f}"
          f"  ({m['gain_joint']:+.4f})")
    print(f"results:    {Path(cfg.output_dir).resolve()}/metrics.json")
    print(f"submission: {m['submission']}")
    if m["mlflow"]["tracking_uri"]:
        print(f"browse:     meiju-ray ui --tracking-uri '{m['mlflow']['tracking_uri']}'   "
              f"(or: mlflow ui --backend-store-uri '{m['mlflow']['tracking_uri']}')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meiju-ray", description="Joint emotion + intent recognition for MEIJU'25 Track 1, with Ray and MLflow.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic world in the official MEIJU Track 1 layout")
    p.add_argument("out", help="directory to create (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="1.0 = Track 1 Mandarin sizes (2294/324/643)")
    p.add_argument("--unlabeled", type=int, default=None, help="unlabelled pool size (default 8000 x scale)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("pack", help="pack .npy features into Parquet shards (cached; training does this itself)")
    _experiment_args(p)
    p.add_argument("--splits", nargs="+", default=["Training", "Validation", "Testing"],
                   help=f"splits to pack; {UNLABELED} is the unlabelled pool")
    p.add_argument("--force", action="store_true", help="re-pack even if the cache is current")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("train", help="train on Training, select on Validation; writes checkpoint/ + metrics.json")
    _experiment_args(p)
    p.add_argument("--address", default=None, help="Ray cluster for scaling.num_workers >= 1 (default: $RAY_ADDRESS or local)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pseudo-label", help="teacher inference on the unlabelled pool with Ray Data + selection")
    _experiment_args(p)
    p.add_argument("--checkpoint", default=None, help="teacher checkpoint (default <output_dir>/checkpoint)")
    p.add_argument("--out", default=None, help="output directory (default <output_dir>/pseudo_labels)")
    p.add_argument("--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)")
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser("pipeline", help="teacher -> pseudo-labels -> student -> metrics.json + submission.csv")
    _experiment_args(p)
    p.add_argument("--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)")
    p.set_defaults(func=cmd_pipeline)

    for name, helptext in (("evaluate", "scores of a checkpoint on a labelled split"),
                           ("predict", "write submission.csv (filename,emo_pred,int_pred) for a split")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", required=True, help="a checkpoint directory (<output_dir>/checkpoint)")
        p.add_argument("--data-root", default=None, help="data root (default: the one the model was trained on)")
        p.add_argument("--split", default="Validation" if name == "evaluate" else "Testing")
        p.add_argument("--device", default="auto")
        if name == "evaluate":
            p.add_argument("--json", action="store_true", help="also print the full result as JSON")
            p.set_defaults(func=cmd_evaluate)
        else:
            p.add_argument("--out", required=True, help="CSV path to write, e.g. submission.csv")
            p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, TrackingError, FileNotFoundError, PermissionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
