"""Deployment: the detector, its folder and card, post-hoc detectors, preprocessing interface, plugins, the `oe` CLI."""
