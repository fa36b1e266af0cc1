"""Two CPU processes (torchrun + gloo) train a tiny classifier with OE and evaluate it.

Checks that both processes took part: they trained on disjoint outlier examples, end with identical weights,
and the 2-process evaluation (scores gathered without the padding duplicates) equals the 1-process one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "_mp_train_script.py"
STEPS = 4


def _run_two_processes(tmp_path, *script_args) -> list[dict]:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), "--out", str(tmp_path), *script_args]
    # a generous limit only guards against a hung process group; speed is not asserted here
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.multiprocess
def test_two_cpu_processes_train_on_disjoint_outliers_and_evaluate_like_one(tmp_path):
    reports = _run_two_processes(tmp_path, "--steps", str(STEPS))
    assert [r["world_size"] for r in reports] == [2, 2] and [r["rank"] for r in reports] == [0, 1]

    # each process trained on its own outlier shard: STEPS batches of 4, no example shared
    ids = [r["outlier_ids"] for r in reports]
    assert len(ids[0]) == len(ids[1]) == STEPS * 4
    assert len(set(ids[0])) == len(ids[0]) and not set(ids[0]) & set(ids[1])

    # DDP kept the replicas identical, and they did train
    weights = [torch.load(tmp_path / f"weights{rank}.pt") for rank in (0, 1)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    logged = [entry for entry in reports[0]["log_history"] if "loss_oe" in entry]
    assert len(logged) == STEPS // 2 and logged == [entry for entry in reports[1]["log_history"] if "loss_oe" in entry]

    # evaluation: every process gets the full, de-duplicated result ...
    assert reports[0]["scores_in"] == reports[1]["scores_in"] and reports[0]["table"] == reports[1]["table"]
    sys.path.insert(0, str(TESTS))
    from _mp_train_script import N_EVAL_IN, eval_sets
    from transformers import BertForSequenceClassification

    from oe_common.training.trainer import OETrainer, OETrainingArguments

    assert len(reports[0]["scores_in"]) == N_EVAL_IN

    # ... equal to a 1-process evaluation of the same weights
    model = BertForSequenceClassification.from_pretrained(tmp_path / "model")
    args = OETrainingArguments(output_dir=str(tmp_path / "single"), per_device_eval_batch_size=4, report_to="none", use_cpu=True, disable_tqdm=True)
    single = OETrainer(model=model, args=args)
    test_in, test_out = eval_sets()
    np.testing.assert_allclose(single.compute_scores(test_in, "msp"), reports[0]["scores_in"], rtol=1e-6, atol=1e-7)
    table = single.evaluate_ood(test_in, {"random": test_out}, score="msp", n_draws=3).to_dict()
    two_process = reports[0]["table"]
    assert [row["name"] for row in table["rows"]] == [row["name"] for row in two_process["rows"]]
    for row, other in zip(table["rows"], two_process["rows"]):
        assert row.keys() == other.keys()
        for key, value in row.items():
            assert value == (other[key] if isinstance(value, str) else pytest.approx(other[key], rel=1e-9, abs=1e-12)), key


@pytest.mark.multiprocess
def test_a_time_budget_that_runs_out_on_one_process_stops_both(tmp_path):
    """Process 1 alone is over budget after step 2: both stop there (without the all-reduce of the decision,
    process 0 would wait for process 1 in the next gradient all-reduce until the timeout)."""
    reports = _run_two_processes(tmp_path, "--steps", "6", "--rank1-over-budget-at", "2")
    assert [r["global_step"] for r in reports] == [2, 2]
    assert [len(r["outlier_ids"]) for r in reports] == [2 * 4, 2 * 4]


@pytest.mark.multiprocess
def test_a_fitted_time_budget_plans_the_same_length_on_every_process(tmp_path):
    """Alone, process 0 would re-plan to 18 steps and process 1 to 9: both must run 9 (the smaller)."""
    reports = _run_two_processes(tmp_path, "--steps", "20", "--fit-budget")
    assert [r["global_step"] for r in reports] == [9, 9]
