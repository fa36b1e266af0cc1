"""Re-score the saved stage models of a finished text-classifier run with today's scores, without retraining.

For each stage model in RUN (``<stage>_model/``) this runs the recipe's own evaluation
(``TextClsExperiment.evaluate``: feature scores fitted on the same seeded training subset, every score on the
in-distribution validation texts vs the validation anomalies, the score with the highest validation AUROC selected),
with the run's configuration from ``RUN/results.json``. It prints and writes the validation table of every score and the
selected one; the test detection (the anomaly sets named by ``--test-set``) is written for the selected score only, so
test data plays no part in any choice. Nothing is written into RUN. ``--bootstrap N`` adds, per test set, how far the
selected score's AUROC and FPR95 move with the test texts (``oe_common.maths.metrics.bootstrap_ood_metrics`` on all
in-distribution test texts vs the whole anomaly set, N replicates).

    OE_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 python tools/rescore_textcls_run.py \\
        runs/clinc150_minilm_full_quiet --stages baseline oe --test-set clinc150_oos --out /tmp/rescore.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from oe_common.maths.metrics import bootstrap_ood_metrics
from oe_text.textcls.textcls_experiment import TextClsConfig, TextClsExperiment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run folder (results.json and <stage>_model/ folders)")
    parser.add_argument("--stages", nargs="+", default=["baseline", "oe"], help="the stages to re-score")
    parser.add_argument("--test-set", nargs="+", default=["clinc150_oos"], help="the anomaly sets of the test report")
    parser.add_argument("--data-dir", default=os.environ.get("OE_DATA_DIR"), help="the data directory (default $OE_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write (outside RUN)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=JSON", dest="overrides",
                        help="evaluation settings to change from the run's config, e.g. mahalanobis_examples=15000 knn_k=50")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="also a 95%% bootstrap interval (N replicates) of the selected score's test AUROC / FPR95 per test set")
    args = parser.parse_args(argv)
    if args.bootstrap and args.bootstrap < 2:
        raise SystemExit(f"error: --bootstrap {args.bootstrap}: give at least 2 replicates (e.g. 1000), or leave it out")
    torch.set_num_threads(args.threads)
    results = args.run / "results.json"
    if not results.is_file():
        raise SystemExit(f"error: {results} does not exist: give a finished run folder")
    if args.out.resolve().is_relative_to(args.run.resolve()):
        raise SystemExit(f"error: --out {args.out} is inside the run folder {args.run}; write elsewhere")
    meta = json.loads(results.read_text())["meta"]
    fields = {f.name for f in dataclasses.fields(TextClsConfig)}
    settings = {k: v for k, v in meta["config"].items() if k in fields}
    for override in args.overrides:
        field, sep, value = override.partition("=")
        if not sep or field not in fields:
            raise SystemExit(f"error: --set {override!r}: give FIELD=JSON with FIELD a TextClsConfig field")
        try:
            settings[field] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"error: --set {override!r}: the value is not JSON (numbers as 3, null, strings as '\"text\"')") from None
    config = TextClsConfig(**settings)
    experiment = TextClsExperiment(config)
    data = experiment.load_data(args.data_dir)
    missing = sorted(set(args.test_set) - set(data.ood))
    if missing:
        raise SystemExit(f"error: --test-set {missing} not among the run's anomaly sets {sorted(data.ood)}")
    experiment.data = dataclasses.replace(data, ood={name: data.ood[name] for name in args.test_set})  # only what is reported
    stages = {stage.name: stage for stage in experiment.stages()}
    report: dict = {"run": str(args.run), "run_commit": meta.get("commit"), "config": meta["config"],
                    "overrides": args.overrides, "stages": {}}
    for name in args.stages:
        if name not in stages:
            raise SystemExit(f"error: --stages {name!r} is not a stage of this run ({', '.join(stages)})")
        started = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(args.run / f"{name}_model", use_safetensors=True)
        result = experiment.evaluate(stages[name], model, None)
        state, selected = result.state, result.state["selected_score"]
        test = [r for r in state["records"] if r["task"] == "detection" and r["score"] == selected]
        report["stages"][name] = {"validation": state["validation"], "selected_score": selected,
                                  "selected_on": state["selected_on"], "test_of_selected": test,
                                  "accuracy": state["accuracy"]}
        if args.bootstrap:
            report["stages"][name]["bootstrap_of_selected"] = {
                ood: {"n_in": int(result.arrays["test"][selected].size), "n_out": int(scores[selected].size),
                      **bootstrap_ood_metrics(result.arrays["test"][selected], scores[selected], n_resamples=args.bootstrap,
                                              seed=config.seed)}
                for ood, scores in result.arrays["ood"].items()}
        report["stages"][name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"== {name}: validation ({state['selected_on']})")
        for score, row in state["validation"].items():
            print(f"   {score:20s} AUROC {100 * row['auroc']:6.2f}  FPR95 {100 * row['fpr95']:6.2f}"
                  + ("   <- selected" if score == selected else ""))
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} (test detection of the selected scores inside)")


if __name__ == "__main__":
    main()
