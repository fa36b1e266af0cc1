"""Speed of oe_common.maths.metrics.ood_metrics vs scikit-learn, torchmetrics and pytorch-ood, measured in the same run.

Every library computes the same four numbers (AUROC, AUPR with anomalies positive, AUPR with in-distribution
positive, FPR at 95% recall) from the same scores, each given the inputs its API takes (built before timing):

* scikit-learn: ``roc_auc_score`` + two ``average_precision_score`` + ``roc_curve`` (for the FPR) -- the reference
  for the values;
* torchmetrics: ``binary_auroc`` + two ``binary_average_precision`` + ``binary_roc`` (``validate_args=False``);
* pytorch-ood: ``OODMetrics().update(scores, labels).compute()`` (it also computes AUTC; its AUPR is a trapezoid,
  not scikit-learn's step sum, so it differs in the 5th digit).

Scores lie in [0, 1] (Beta(2, 3) in-distribution, Beta(3, 2) anomalies) so that torchmetrics takes them as
probabilities unchanged. Two tie regimes: ``ties`` rounds every score to 3 decimals (1001 levels), ``no ties`` keeps
the float64 draws. The table gives our time, each library's time divided by ours (> 1: we are faster), and the
largest absolute difference from scikit-learn over the four numbers. Timings are the best of ``--repeats`` rounds;
each round runs every library once, in turn, so that load on a shared machine hits all of them alike. A library
that is not installed is skipped with a note (``pip install -e .[dev]`` installs all three).

    python bench/metrics_bench.py [--sizes 10000 100000 1000000 10000000] [--repeats 3] [--out-fraction 0.5]
                                  [--torch-threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from typing import Callable

import numpy as np

from oe_common.maths.metrics import ood_metrics

KEYS = ("auroc", "aupr_out", "aupr_in", "fpr")
RECALL = 0.95


def sklearn_runner(in_scores: np.ndarray, out_scores: np.ndarray) -> Callable[[], dict[str, float]]:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    y = np.r_[np.zeros(in_scores.size), np.ones(out_scores.size)]
    s = np.r_[in_scores, out_scores]

    def run() -> dict[str, float]:
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        return {
            "auroc": roc_auc_score(y, s),
            "aupr_out": average_precision_score(y, s),
            "aupr_in": average_precision_score(1 - y, -s),
            "fpr": float(fpr[np.searchsorted(tpr, RECALL, side="left")]),
        }

    return run


def torchmetrics_runner(in_scores: np.ndarray, out_scores: np.ndarray) -> Callable[[], dict[str, float]]:
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc

    preds = torch.from_numpy(np.r_[in_scores, out_scores])
    flipped = 1.0 - preds  # in-distribution positive: lower score = more in-distribution, kept inside [0, 1]
    target = torch.cat([torch.zeros(in_scores.size, dtype=torch.long), torch.ones(out_scores.size, dtype=torch.long)])

    def run() -> dict[str, float]:
        fpr, tpr, _ = binary_roc(preds, target, validate_args=False)
        index = int(torch.searchsorted(tpr, torch.tensor([RECALL], dtype=tpr.dtype))[0])
        return {
            "auroc": float(binary_auroc(preds, target, validate_args=False)),
            "aupr_out": float(binary_average_precision(preds, target, validate_args=False)),
            "aupr_in": float(binary_average_precision(flipped, 1 - target, validate_args=False)),
            "fpr": float(fpr[index]),
        }

    return run


def pytorch_ood_runner(in_scores: np.ndarray, out_scores: np.ndarray) -> Callable[[], dict[str, float]]:
    import torch
    from pytorch_ood.metrics import OODMetrics

    scores = torch.from_numpy(np.r_[in_scores, out_scores])
    labels = torch.cat([torch.zeros(in_scores.size, dtype=torch.long), -torch.ones(out_scores.size, dtype=torch.long)])

    def run() -> dict[str, float]:
        result = OODMetrics(fpr_at=RECALL).update(scores, labels).compute()
        return {"auroc": result["AUROC"], "aupr_out": result["AUPR-OUT"], "aupr_in": result["AUPR-IN"], "fpr": result["FPR95TPR"]}

    return run


LIBRARIES = {  # name -> (module that must be importable, runner factory)
    "scikit-learn": ("sklearn", sklearn_runner),
    "torchmetrics": ("torchmetrics", torchmetrics_runner),
    "pytorch-ood": ("pytorch_ood", pytorch_ood_runner),
}


def scores(rng: np.random.Generator, n: int, out_fraction: float, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    n_out = max(1, round(n * out_fraction))
    in_scores, out_scores = rng.beta(2.0, 3.0, size=n - n_out), rng.beta(3.0, 2.0, size=n_out)
    if ties:
        in_scores, out_scores = np.round(in_scores, 3), np.round(out_scores, 3)
    return in_scores, out_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6, 10**7], help="total scores (in + out)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-fraction", type=float, default=0.5, help="fraction of anomalies among the scores")
    parser.add_argument("--torch-threads", type=int, default=None, help="CPU threads of torchmetrics / pytorch-ood (default: torch's)")
    args = parser.parse_args()
    if not 0.0 < args.out_fraction < 1.0:
        parser.error(f"--out-fraction must be in (0, 1), got {args.out_fraction}")
    if min(args.sizes) < 2 or args.repeats < 1:
        parser.error("--sizes must be >= 2 and --repeats >= 1")

    present = {}
    for name, (module, factory) in LIBRARIES.items():
        if importlib.util.find_spec(module) is None:
            print(f"# note: {name} is not installed; skipped (pip install -e .[dev] installs it)")
        else:
            present[name] = factory
    versions = [f"numpy {np.__version__}"]
    for name, module in (("scikit-learn", "sklearn"), ("torch", "torch"), ("torchmetrics", "torchmetrics"), ("pytorch-ood", "pytorch_ood")):
        if importlib.util.find_spec(module) is not None:
            versions.append(f"{name} {__import__(module).__version__}")
    threads = ""
    if importlib.util.find_spec("torch") is not None:
        import torch

        if args.torch_threads is not None:
            torch.set_num_threads(args.torch_threads)
        threads = f", torch threads {torch.get_num_threads()}"
    print(f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs{threads} | " + ", ".join(versions))
    print(f"# anomalies {args.out_fraction:g} of the scores, FPR at {RECALL:.0%} recall, best of {args.repeats}")
    names = list(present)
    header = ["scores", "ties", "ours (s)", *(f"{name} ÷ ours" for name in names)]
    if "scikit-learn" in present:
        header += [f"max abs diff vs scikit-learn: {name}" for name in ["ours", *names[1:]]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    rng = np.random.default_rng(0)
    for n in args.sizes:
        for ties in (True, False):
            in_scores, out_scores = scores(rng, n, args.out_fraction, ties)
            runners = {"ours": lambda a=in_scores, b=out_scores: ood_metrics(a, b, RECALL)}
            runners.update({name: present[name](in_scores, out_scores) for name in names})
            best = {name: float("inf") for name in runners}
            results: dict[str, dict[str, float]] = {}
            for _ in range(args.repeats):
                for name, run in runners.items():
                    start = time.perf_counter()
                    results[name] = run()
                    best[name] = min(best[name], time.perf_counter() - start)
            cells = [f"{n:,}", "yes" if ties else "no", f"{best['ours']:.4f}"]
            cells += [f"{best[name] / best['ours']:.2f}" for name in names]
            if "scikit-learn" in results:
                ref = results["scikit-learn"]
                for name in ["ours", *names[1:]]:
                    cells.append(f"{max(abs(results[name][k] - ref[k]) for k in KEYS):.1e}")
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
