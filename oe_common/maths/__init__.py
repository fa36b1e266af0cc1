"""The maths: OE losses, anomaly scores (the one registry), fitted feature scores, detection metrics, calibration, thresholds."""
