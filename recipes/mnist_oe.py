"""MNIST ConvNet with Outlier Exposure: MSP baseline, OE fine-tuning, confidence branch (+ OE), calibration.

    python recipes/mnist_oe.py --preset tiny                          # 2-core CPU, a few minutes, iSUN outliers
    OE_CIFAR10_DIR=DIR python recipes/mnist_oe.py --preset paper      # GPU; CIFAR-10 (gray) as the OE source
    python recipes/mnist_oe.py --preset paper --oe-from-scratch       # also OE from scratch

Writes results.json, results.md (paper Tables 8, 9, 3, 7 layouts), ROC / histogram / reliability PNGs and the
models to --output-dir (default runs/mnist_<preset>). See docs/vision.md.
"""

from oe_vision.recipe_cli import main

if __name__ == "__main__":
    main(dataset="mnist")
