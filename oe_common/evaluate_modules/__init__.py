"""Paths of the `evaluate` modules shipped with the toolkit (load them with ``evaluate.load(path)``)."""

from pathlib import Path

#: ``evaluate.load(OOD_DETECTION_PATH)`` gives the OOD detection metric, offline.
OOD_DETECTION_PATH = str(Path(__file__).with_name("ood_detection.py"))
