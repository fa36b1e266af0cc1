"""`evaluate` metric module wrapping :func:`oe_common.maths.metrics.ood_metrics`.

Load it offline from its file path (no Hub access needed)::

    import evaluate
    from oe_common.evaluate_modules import OOD_DETECTION_PATH
    metric = evaluate.load(OOD_DETECTION_PATH)
    metric.compute(predictions=scores, references=is_anomaly, recall_level=0.95)

``predictions``: anomaly scores (higher = more anomalous); ``references``: 1 for anomalies, 0 for
in-distribution examples. Returns ``auroc``, ``aupr_out``, ``aupr_in`` and ``fpr`` as fractions.
"""

import datasets
import evaluate
import numpy as np

from oe_common.maths.metrics import ood_metrics

_DESCRIPTION = "Out-of-distribution detection metrics (AUROC, AUPR with anomalies / in-distribution positive, FPR at a recall level) computed from one sort; anomalies are the positive class."
_CITATION = "Hendrycks, Mazeika, Dietterich. Deep Anomaly Detection with Outlier Exposure. ICLR 2019."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): anomaly scores, higher = more anomalous.
    references (list of int): 1 = anomaly (positive), 0 = in-distribution.
    recall_level (float, optional): recall for the FPR, in (0, 1]. Default 0.95.
Returns:
    auroc, aupr_out, aupr_in, fpr (fractions in [0, 1]).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class OodDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, recall_level=0.95):
        scores = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("references must be 0 (in-distribution) or 1 (anomaly)")
        return ood_metrics(scores[labels == 0], scores[labels == 1], recall_level=recall_level)
