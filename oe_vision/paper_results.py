"""The OE paper's vision numbers (percentages), for display NEXT TO our measured numbers.

These are the paper's numbers, not ours: results tables label them "paper". They were measured with the paper's
OE source (80 Million Tiny Images, withdrawn in 2020), the paper's anomaly sets (several are not available here)
and the authors' models. Keys use our set names where a paper row has an identical counterpart here; rows with no
counterpart keep a descriptive key (``cifar10bw``, ``icons50``, ``textures``, ...) and are listed, not compared.

Sources: Table 1 (CIFAR-10 rows), Table 2, Table 3, Table 7, Table 8 (MNIST rows), Table 9 of Hendrycks, Mazeika
& Dietterich (ICLR 2019); misclassification numbers from Hendrycks & Gimpel (ICLR 2017).
"""

from __future__ import annotations

__all__ = [
    "TABLE8_MNIST",
    "TABLE9_MNIST",
    "TABLE1_CIFAR10",
    "TABLE2_CIFAR10",
    "TABLE3",
    "TABLE7",
    "MSP_MISCLASSIFICATION",
    "MSP_TABLE11_MEAN_AUROC",
    "MSP_TABLE11_NOTEBOOK",
    "OE_SCRATCH_CIFAR10",
    "PAPER_ONLY_ROWS",
    "detection_table",
    "scores_table",
]

#: Table 8, MNIST (ConvNet): per anomaly set ``metric -> (MSP baseline, MSP + OE)``; FPR at 99% recall.
TABLE8_MNIST: dict[str, dict[str, tuple[float, float]]] = {
    "gaussian": {"fpr99": (1.0, 0.0), "auroc": (99.9, 100.0), "aupr": (99.4, 100.0)},
    "bernoulli": {"fpr99": (3.3, 0.0), "auroc": (99.6, 100.0), "aupr": (97.0, 100.0)},
    "cifar10bw": {"fpr99": (7.7, 0.0), "auroc": (99.5, 100.0), "aupr": (97.4, 100.0)},
    "icons50": {"fpr99": (6.4, 0.0), "auroc": (99.5, 100.0), "aupr": (97.7, 99.9)},
    "fashion_mnist": {"fpr99": (12.1, 4.7), "auroc": (98.2, 99.9), "aupr": (91.4, 99.3)},
    "negative_mnist": {"fpr99": (17.8, 0.4), "auroc": (98.0, 100.0), "aupr": (90.4, 99.9)},
    "notmnist": {"fpr99": (32.4, 12.8), "auroc": (96.2, 98.8), "aupr": (76.8, 92.6)},
    "omniglot": {"fpr99": (45.2, 48.5), "auroc": (95.8, 95.5), "aupr": (77.8, 77.6)},
    "mean": {"fpr99": (15.7, 8.3), "auroc": (98.3, 99.3), "aupr": (91.0, 96.2)},
}

#: Table 9, MNIST OE model: mean over sets, ``metric -> (MSP score, KL[U||p] = uniform_xent score)``.
TABLE9_MNIST: dict[str, tuple[float, float]] = {"fpr99": (8.3, 7.0), "auroc": (99.3, 99.4), "aupr": (96.2, 97.0)}

#: Table 1, CIFAR-10 (WRN): per anomaly set ``metric -> (MSP baseline, MSP + OE)``; FPR at 95% recall.
TABLE1_CIFAR10: dict[str, dict[str, tuple[float, float]]] = {
    "gaussian": {"fpr95": (29.6, 0.7), "auroc": (86.6, 99.7), "aupr": (42.1, 97.1)},
    "rademacher": {"fpr95": (36.0, 0.6), "auroc": (84.6, 99.8), "aupr": (39.1, 97.6)},
    "blobs": {"fpr95": (19.9, 4.0), "auroc": (92.9, 99.0), "aupr": (67.5, 94.1)},
    "textures": {"fpr95": (36.8, 8.0), "auroc": (89.4, 98.5), "aupr": (60.8, 93.7)},
    "svhn": {"fpr95": (18.1, 8.3), "auroc": (93.3, 98.0), "aupr": (68.8, 88.7)},
    "places365": {"fpr95": (50.0, 11.1), "auroc": (86.9, 97.7), "aupr": (56.3, 91.3)},
    "lsun": {"fpr95": (42.7, 6.8), "auroc": (87.1, 98.7), "aupr": (54.6, 93.5)},
    "cifar100": {"fpr95": (42.7, 26.4), "auroc": (85.4, 94.3), "aupr": (50.8, 80.1)},
    "mean": {"fpr95": (34.5, 8.2), "auroc": (88.3, 98.2), "aupr": (55.0, 92.0)},
}

#: Table 2, CIFAR-10 OE model: mean over sets, ``metric -> (MSP score, KL[U||p] score)``.
TABLE2_CIFAR10: dict[str, tuple[float, float]] = {"fpr95": (8.2, 7.3), "auroc": (98.2, 98.2), "aupr": (92.0, 91.9)}

#: Table 3 (WRN 40-4 trained with DeVries & Taylor's code): mean over sets,
#: ``metric -> (MSP, confidence branch, branch + OE)``; FPR at 95% recall. The paper has no MNIST row.
TABLE3: dict[str, dict[str, tuple[float, float, float]]] = {
    "cifar10": {"fpr95": (49.3, 38.7, 20.8), "auroc": (84.4, 86.9, 93.7), "aupr": (51.9, 48.6, 66.6)},
    "cifar100": {"fpr95": (55.6, 47.9, 42.0), "auroc": (77.6, 81.2, 85.5), "aupr": (36.5, 44.4, 54.7)},
    "tiny_imagenet": {"fpr95": (64.3, 66.9, 20.1), "auroc": (65.3, 63.4, 90.6), "aupr": (30.3, 25.7, 75.2)},
}

#: Table 7: mean over sets, ``metric -> (temperature-tuned baseline, + 0-1 rescaling, + OE)``.
TABLE7: dict[str, dict[str, tuple[float, float, float]]] = {
    "mnist": {"rms": (13.5, 12.7, 5.9), "mav": (7.1, 6.8, 3.0), "soft_f1": (53.9, 57.3, 74.4)},
    "cifar10": {"rms": (20.3, 18.6, 6.2), "mav": (13.2, 12.1, 3.8), "soft_f1": (41.1, 44.4, 73.6)},
}

#: MSP paper (Hendrycks & Gimpel 2017): misclassification detection with the MSP, and the test error.
MSP_MISCLASSIFICATION: dict[str, dict[str, float]] = {
    "mnist": {"auroc": 97.0, "aupr_err": 48.0, "aupr_succ": 100.0, "test_error": 1.69},
    "cifar10": {"auroc": 93.0, "aupr_err": 43.0, "aupr_succ": 100.0, "test_error": 4.96},
}

#: OE trained from scratch on CIFAR-10 (paper, Sec. 5): mean FPR95 / AUROC.
OE_SCRATCH_CIFAR10: dict[str, float] = {"fpr95": 6.2, "auroc": 98.6}

#: Paper rows with no counterpart among our anomaly sets, by dataset (display names).
PAPER_ONLY_ROWS: dict[str, dict[str, str]] = {
    "mnist": {"cifar10bw": "CIFAR-10bw (grayscale CIFAR-10; isun_gray takes its place)", "icons50": "Icons-50 (not available)"},
    "cifar10": {
        "textures": "Textures (not in the data directory)",
        "svhn": "SVHN (not in the data directory)",
        "places365": "Places365 (not in the data directory)",
        "lsun": "LSUN (not in the data directory)",
        "cifar100": "CIFAR-100 (not in the data directory)",
    },
}

def detection_table(dataset: str) -> dict[str, dict[str, tuple[float, float]]]:
    """The paper's per-set MSP baseline -> MSP + OE table for ``dataset`` (``{}`` when the paper has none)."""
    return {"mnist": TABLE8_MNIST, "cifar10": TABLE1_CIFAR10}.get(dataset, {})


def scores_table(dataset: str) -> dict[str, tuple[float, float]]:
    """The paper's MSP vs KL[U||p] means for the OE model of ``dataset`` (Table 9 / Table 2; ``{}`` if none)."""
    return {"mnist": TABLE9_MNIST, "cifar10": TABLE2_CIFAR10}.get(dataset, {})


#: The MSP paper (Hendrycks & Gimpel, ICLR 2017), Table 11, MNIST: mean AUROC over its five anomaly sets,
#: ``(softmax baseline, abnormality module)``.
MSP_TABLE11_MEAN_AUROC: tuple[float, float] = (93.0, 100.0)

#: The output printed in the authors' notebook (``Vision/MNIST_Abnormality_Module.ipynb`` of hendrycks/error-detection)
#: for the Table 11 sets: ``set -> metric -> (softmax "Prediction Prob", abnormality module)``; ``aupr_in`` is its
#: "Normality Detection" AUPR, ``aupr`` its "Abnormality Detection" AUPR. Shown as the notebook's, not the paper's.
MSP_TABLE11_NOTEBOOK: dict[str, dict[str, tuple[float, float]]] = {
    "omniglot": {"auroc": (94.12, 99.5), "aupr_in": (95.01, 99.56), "aupr": (93.39, 99.45)},
    "notmnist": {"auroc": (86.1, 99.99), "aupr_in": (87.5, 99.99), "aupr": (88.01, 99.99)},
    "cifar10bw": {"auroc": (97.26, 99.93), "aupr_in": (97.57, 99.93), "aupr": (96.96, 99.93)},
    "gaussian_unclipped": {"auroc": (86.78, 100.0), "aupr_in": (88.06, 100.0), "aupr": (88.21, 100.0)},
    "uniform": {"auroc": (99.02, 100.0), "aupr_in": (99.27, 100.0), "aupr": (98.68, 100.0)},
}
