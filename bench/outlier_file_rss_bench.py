"""Peak memory (max RSS) of the text-classifier recipe with a generated outlier FILE of 1 GB vs a small one.

For each size a corpus of pseudo-random lines (~100 characters, one text per line) is written into a temporary
folder (deleted at the end, also on failure), then two child processes are measured, each on its own (peak RSS from
``os.wait4``'s rusage, i.e. the child's ``ru_maxrss``):

1. ``recipe``: ``recipes/textcls_oe.py --outliers FILE`` (CLINC150, the GRU, preset ``test``, ``--oe-max-steps``
   OE steps of 32 + 32 texts, one torch thread): loading, training, evaluation, report; the outlier file is streamed
   through ``oe_common.experiments.table_files.stream_text_column`` and the trainer's outlier stream (shuffle buffer 10,000).
   The OE steps read ``steps x 32`` texts plus the shuffle buffer, a small part of a 1 GB file.
2. ``full pass``: the same reader (``stream_text_column``) iterated over EVERY line of the file, no training: memory
   while the whole file goes through the reader.

    python bench/outlier_file_rss_bench.py                     # 1 GB vs 1 MB, 300 OE steps
    python bench/outlier_file_rss_bench.py --big-mb 64 --oe-steps 50

Not a test: a few minutes on 2 CPU cores (writing 1 GB, two short recipe runs, one pass over 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
         "you were her she there one all we their been has would when if so no what up out them about more into some "
         "time could only other new may then do first any my now such like our over man me even most made after also "
         "did many before must through back years where much your way well down should because each just those people").split()


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """About ``megabytes`` MB of lines of random words (a pool of 20,000 lines written in shuffled rounds); returns
    the number of lines."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(20_000)]
    target, written, lines = int(megabytes * 1e6), 0, 0
    with path.open("w") as handle:
        while written < target:
            rng.shuffle(pool)
            block = "\n".join(pool) + "\n"
            if written + len(block) > target:  # the last round: only as many lines as fit
                keep = block[: target - written].rsplit("\n", 1)[0] + "\n"
                block = keep if keep.strip() else block
            handle.write(block)
            written += len(block)
            lines += block.count("\n")
    return lines


def measure(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """``(peak RSS MiB, seconds, exit status)`` of ``cmd`` run as a child process (output to ``log``)."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0, time.perf_counter() - start, proc.returncode


def full_pass(path: str) -> None:
    """Child of measurement 2: every text of ``path`` through the recipe's streaming reader."""
    from oe_common.experiments.table_files import stream_text_column

    count = chars = 0
    for row in stream_text_column(path):
        count += 1
        chars += len(row["text"])
    print(json.dumps({"texts": count, "chars": chars}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=float, default=1024.0, help="size of the large corpus (MB, 10^6 bytes)")
    parser.add_argument("--small-mb", type=float, default=1.0)
    parser.add_argument("--oe-steps", type=int, default=300)
    parser.add_argument("--data-dir", default=None, help="the corpora (default: $OE_DATA_DIR)")
    parser.add_argument("--tmp", default=None, help="folder for the generated corpora (default: the system's temp folder)")
    parser.add_argument("--full-pass", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.full_pass:
        full_pass(opts.full_pass)
        return
    data_dir = ["--data-dir", opts.data_dir] if opts.data_dir else []
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="oe-outlier-rss-", dir=opts.tmp) as tmp:
        for label, size in (("small", opts.small_mb), ("big", opts.big_mb)):
            path = Path(tmp) / f"outliers_{label}.txt"
            start = time.perf_counter()
            lines = write_corpus(path, size)
            written = time.perf_counter() - start
            recipe = [sys.executable, "recipes/textcls_oe.py", "--dataset", "clinc150", "--model", "gru", "--preset", "test",
                      "--outliers", str(path), "--baseline-max-steps", "10", "--oe-max-steps", str(opts.oe_steps),
                      "--threads", "1", "--output-dir", str(Path(tmp) / f"run_{label}"), *data_dir]
            rss_run, sec_run, rc_run = measure(recipe, Path(tmp) / f"recipe_{label}.log")
            if rc_run != 0:
                sys.exit(f"the recipe failed on the {label} corpus:\n{(Path(tmp) / f'recipe_{label}.log').read_text()[-3000:]}")
            meta = json.loads((Path(tmp) / f"run_{label}" / "results.json").read_text())["meta"]
            oe_steps = meta["training_steps"]["oe"]
            rss_pass, sec_pass, rc_pass = measure([sys.executable, __file__, "--full-pass", str(path)], Path(tmp) / f"pass_{label}.log")
            if rc_pass != 0:
                sys.exit(f"the full pass failed on the {label} corpus:\n{(Path(tmp) / f'pass_{label}.log').read_text()[-3000:]}")
            counted = json.loads((Path(tmp) / f"pass_{label}.log").read_text().strip().splitlines()[-1])
            rows.append({"label": label, "bytes": path.stat().st_size, "lines": lines, "write_s": written, "recipe_rss": rss_run,
                         "recipe_s": sec_run, "oe_steps": oe_steps, "outliers": meta["outlier_corpus"], "pass_rss": rss_pass,
                         "pass_s": sec_pass, "pass_texts": counted["texts"]})
            path.unlink()
    print(f"# outlier file streamed by recipes/textcls_oe.py (clinc150, gru, preset test, {opts.oe_steps} OE steps of 32 + 32 texts, "
          f"1 torch thread); {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# load average before: {', '.join(f'{x:.2f}' for x in load_before)}; after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| corpus | file size | lines | recipe: peak RSS | recipe: seconds | OE steps done / planned | full pass: peak RSS | full pass: texts | full pass: seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        steps = r["oe_steps"]
        print(f"| {r['label']} | {r['bytes'] / 1e6:,.1f} MB | {r['lines']:,} | {r['recipe_rss']:,.0f} MiB | {r['recipe_s']:.0f} | "
              f"{steps.get('steps')} / {steps.get('planned_steps')} | {r['pass_rss']:,.0f} MiB | {r['pass_texts']:,} | {r['pass_s']:.0f} |")
    small, big = rows
    print(f"peak RSS big / small: recipe {big['recipe_rss'] / small['recipe_rss']:.3f}, full pass {big['pass_rss'] / small['pass_rss']:.3f}")
    print(f"records: outliers = {big['outliers']}")


if __name__ == "__main__":
    main()
