"""CIFAR-10 Wide ResNet 40-2 with Outlier Exposure (iSUN outliers): MSP baseline, OE fine-tuning, calibration.

    OE_CIFAR10_DIR=DIR python recipes/cifar10_oe.py --preset paper    # GPU: 100 + 10 epochs (paper settings)
    OE_CIFAR10_DIR=DIR python recipes/cifar10_oe.py --preset short    # GPU with limited time: 15 + 3 epochs
    OE_CIFAR10_DIR=DIR python recipes/cifar10_oe.py --preset test     # CPU smoke run (a few steps on a subset)

CIFAR-10 comes from `python <data_dir>/cifar10/fetch.py DIR` (never committed). Writes results.json, results.md
(paper Tables 1, 2, 7 layouts; Table 3 with --branch), PNGs and the models to --output-dir. See docs/vision.md.
"""

from oe_vision.recipe_cli import main

if __name__ == "__main__":
    main(dataset="cifar10")
