"""Speed of oe_common.metrics.ood_metrics vs scikit-learn, measured in the same run.

Reference per size: ``roc_auc_score`` + ``average_precision_score`` (anomalies positive) +
``average_precision_score`` (in-distribution positive, negated scores) + ``roc_curve`` (for the FPR), which
together give the same four numbers as one ``ood_metrics`` call. Scores have many ties (rounded to 3 decimals).

    python bench/metrics_bench.py [--sizes 10000 100000 1000000 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oe_common.metrics import ood_metrics


def sklearn_metrics(in_scores: np.ndarray, out_scores: np.ndarray, recall_level: float) -> dict[str, float]:
    y = np.r_[np.zeros(in_scores.size), np.ones(out_scores.size)]
    s = np.r_[in_scores, out_scores]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_out": average_precision_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        "fpr": float(fpr[np.searchsorted(tpr, recall_level, side="left")]),
    }


def best_time(fn, repeats: int) -> tuple[float, dict]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6, 10**7])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} | numpy {np.__version__} | python {platform.python_version()}")
    print("| total scores | ood_metrics (s) | scikit-learn (s) | speed-up | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        n_out = n // 6  # the paper's 1:5 base rate
        in_scores = np.round(rng.normal(size=n - n_out), 3)
        out_scores = np.round(rng.normal(1.0, 1.0, size=n_out), 3)
        ours_t, ours = best_time(lambda: ood_metrics(in_scores, out_scores, 0.95), args.repeats)
        ref_t, ref = best_time(lambda: sklearn_metrics(in_scores, out_scores, 0.95), args.repeats)
        diff = max(abs(ours[k] - ref[k]) for k in ours)
        print(f"| {n:,} | {ours_t:.4f} | {ref_t:.4f} | {ref_t / ours_t:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
