"""Peak memory of OE training with a STREAMING outlier corpus of 1x and 100x the size.

Each size runs in its own subprocess: it writes nothing but reads a local text corpus with
``datasets.load_dataset("text", streaming=True)``, tokenizes it on the fly (characters -> ids), and trains a tiny
GPT-2 with :class:`oe_common.training.trainer.OETrainer` for the SAME number of steps, chosen so that the 100x corpus is read
from end to end once (the 1x corpus is cycled ~100 times). Peak RSS comes from ``resource.getrusage``. With a
constant-memory stream the two peaks agree (target: within 5%).

Both sizes are read in chunks of the same size (``--chunk-kib``, passed to the ``text`` loader as ``chunksize``),
smaller than the smallest file. With the loader's default of 10 MiB, a 50 kB file and a 5 MB file are each read
whole, so the reading buffer (not the corpus) differs between the two runs: about +130 MiB for 5 MB files,
bounded by the 10 MiB chunk however large the corpus grows (``--chunk-kib 10240`` shows it).

    python bench/streaming_rss_bench.py                 # 1x = 2,000 lines (~200 kB), 100x = 200,000 lines (~20 MB)
    python bench/streaming_rss_bench.py --base-lines 500 --scale 100 --chunk-kib 10240

Not a test: it takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN = 32
LINE_CHARS = 100
IN_BATCH, OE_BATCH = 16, 256


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def write_corpus(folder: Path, lines: int, files: int = 4) -> list[str]:
    """``lines`` lines of pseudo-random lowercase text split over ``files`` files (so ``datasets`` has shards)."""
    import random

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    paths = []
    for k in range(files):
        path = folder / f"part{k}.txt"
        with path.open("w") as handle:
            for _ in range(lines // files):
                handle.write("".join(rng.choice(letters) for _ in range(LINE_CHARS)) + "\n")
        paths.append(str(path))
    return paths


def child(files: list[str], steps: int, chunk_bytes: int) -> dict:
    """Train with the streaming corpus; report peak RSS before and after training."""
    import datasets
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from oe_common.training.trainer import OETrainer, OETrainingArguments

    torch.set_num_threads(1)
    datasets.disable_progress_bars()

    def encode(example):  # characters -> ids 1..27, padded/truncated to SEQ_LEN
        ids = [1 + (ord(c) - ord("a") if c != " " else 26) for c in example["text"][:SEQ_LEN]]
        ids += [0] * (SEQ_LEN - len(ids))
        return {"input_ids": ids, "attention_mask": [1] * SEQ_LEN}

    text = datasets.load_dataset("text", data_files=files, split="train", streaming=True, chunksize=chunk_bytes)
    stream = text.map(encode, remove_columns=["text"])
    rng = np.random.default_rng(0)
    train_ids = rng.integers(1, 28, (IN_BATCH * 8, SEQ_LEN))
    train = datasets.Dataset.from_dict({"input_ids": train_ids.tolist(), "attention_mask": np.ones_like(train_ids).tolist(), "labels": train_ids.tolist()})
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=28, n_positions=SEQ_LEN, n_embd=16, n_layer=1, n_head=2))
    args = OETrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=IN_BATCH, oe_batch_size=OE_BATCH, max_steps=steps,
        learning_rate=1e-3, logging_steps=max(1, steps // 4), save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0,
    )
    trainer = OETrainer(model=model, args=args, train_dataset=train, outlier_dataset=stream)
    before = peak_rss_mib()
    start = time.perf_counter()
    trainer.train()
    return {
        "outlier_examples_read": steps * OE_BATCH,
        "passes": trainer.outlier_stream.epoch,
        "peak_rss_before_train_mib": before,
        "peak_rss_mib": peak_rss_mib(),
        "train_seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-lines", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--chunk-kib", type=int, default=16, help="read size of the text loader (datasets' default: 10240)")
    parser.add_argument("--child", nargs=3, metavar=("FILES_JSON", "STEPS", "CHUNK_BYTES"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(child(json.loads(opts.child[0]), int(opts.child[1]), int(opts.child[2]))))
        return

    big_lines = opts.base_lines * opts.scale
    steps = -(-big_lines // OE_BATCH)  # one full pass over the big corpus
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, lines in (("1x", opts.base_lines), (f"{opts.scale}x", big_lines)):
            folder = Path(tmp) / label
            folder.mkdir()
            files = write_corpus(folder, lines)
            size_mb = sum(os.path.getsize(f) for f in files) / 1e6
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(files), str(steps), str(opts.chunk_kib * 1024)], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{label} run failed:\n{done.stderr[-4000:]}")
            results[label] = {"lines": lines, "corpus_mb": size_mb, **json.loads(done.stdout.strip().splitlines()[-1])}

    print(f"OE training, streaming outliers, {steps} steps x {OE_BATCH} outliers (+{IN_BATCH} in-distribution), tiny GPT-2, CPU")
    print(f"text loader chunk: {opts.chunk_kib} KiB; shuffle buffer: 1000 examples")
    print(f"{'corpus':>7} {'lines':>9} {'MB':>8} {'passes':>7} {'RSS before train':>17} {'peak RSS':>10} {'train s':>8}")
    for label, r in results.items():
        print(
            f"{label:>7} {r['lines']:>9} {r['corpus_mb']:>8.1f} {r['passes']:>7} {r['peak_rss_before_train_mib']:>13.1f} MiB"
            f" {r['peak_rss_mib']:>6.1f} MiB {r['train_seconds']:>8.1f}"
        )
    small, big = (results[k]["peak_rss_mib"] for k in results)
    ratio = big / small
    print(f"peak RSS ratio {list(results)[1]} / 1x = {ratio:.3f} ({'within' if abs(ratio - 1) <= 0.05 else 'OUTSIDE'} the 5% target)")


if __name__ == "__main__":
    main()
