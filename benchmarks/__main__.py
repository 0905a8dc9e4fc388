"""The benchmark suite: `python -m benchmarks NAME [options]` (run by hand; results: BENCHMARKS.md).

    python -m benchmarks NAME           # NAME is one of the benchmarks below
    python -m benchmarks NAME --help    # each one's size knobs (--scale, ...)

    time_to_quality   paper model vs baseline preset (and --peer: the official code): time to score
    throughput        samples/s: local, Ray Train 1 and 2 workers; bucketing vs padding
    data_path         packed Parquet shards vs the baseline's per-file .npy loader
    pseudo_label      plain loop vs Ray Data (1, 2 actors) at 10k / 100k rows; peak memory
    sweep             8 trials: ASHA vs run to completion; re-thresholding vs re-inference
    end_to_end        teacher -> pseudo-label 10k -> student at Track 1 scale, per stage
    extract           extractor throughput: clips/s per actor, 1 vs 2 actors, per model
    ssl               semi-supervised recipes vs supervised on test, paired seeds (-> RESULTS.md)

Each prints its table and replaces its own section of BENCHMARKS.md (the command, the machine,
the figures). Run them one at a time on an otherwise idle machine: on 2 cores a second busy
process makes every number wrong.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from pathlib import Path

from benchmarks.common import BENCHMARKS_MD, ORDER, env_setup, write_section


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    runnable = [n for n in ORDER if (Path(__file__).parent / f"{n}.py").is_file()]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in runnable:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"benchmarks.{name}")
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks {name}", description=module.__doc__.splitlines()[0]
    )
    module.add_args(parser)
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone"
    )
    args = parser.parse_args(rest)
    env_setup()
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S"
    )
    body = module.run(args)
    print(body)
    if not args.no_write:
        command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in [name, *rest])
        target = getattr(module, "RESULTS_FILE", BENCHMARKS_MD)
        section = getattr(module, "section_name", lambda _: name)(args)
        title = getattr(module, "section_title", lambda _: module.TITLE)(args)
        write_section(section, title, command, body, path=target)
        print(f"[bench] updated {target.name} section {section!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
