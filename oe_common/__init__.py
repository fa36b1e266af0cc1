"""oe_common: what every modality shares: OE losses, anomaly scores, detection metrics, calibration, OETrainer.

Conventions: anomalies are the POSITIVE class and every score is "higher = more anomalous".
"""

from .maths.calibration import calibration_errors, calibration_report, fit_temperature, rescale_01, soft_f1
from .experiments.data_dir import MissingDataError, resolve_data_dir
from .maths.losses import confidence_branch_oe_loss, density_margin_loss, energy_oe_loss, oe_uniform_loss
from .maths.metrics import OODTable, evaluate_ood, fpr_at_recall, misclassification_metrics, ood_metrics, sample_base_rate
from .maths.scores import (
    energy_score,
    max_logit_score,
    msp_score,
    sequence_nll_score,
    sequence_uniform_xent_score,
    uniform_xent_score,
)

__all__ = [
    "MissingDataError", "OODTable", "calibration_errors", "calibration_report", "confidence_branch_oe_loss", "density_margin_loss",
    "energy_oe_loss", "energy_score", "evaluate_ood", "fit_temperature", "fpr_at_recall", "max_logit_score", "misclassification_metrics",
    "msp_score", "ood_metrics", "oe_uniform_loss", "rescale_01", "resolve_data_dir", "sample_base_rate", "sequence_nll_score",
    "sequence_uniform_xent_score", "soft_f1", "uniform_xent_score",
]

__version__ = "0.1.0"
