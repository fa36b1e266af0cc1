"""PixelCNN++ density model with Outlier Exposure (paper Table 5): likelihood baseline, OE fine-tuning with the
margin loss ``max(0, D + nll(x_in) - nll(x_out))``, anomaly detection by bits per dimension.

    python recipes/pixelcnn_oe.py --preset tiny                              # 2-core CPU, minutes: MNIST subset, iSUN outliers
    python recipes/pixelcnn_oe.py --preset paper                             # GPU: MNIST (CIFAR-10 gray outliers when present)
    OE_CIFAR10_DIR=DIR python recipes/pixelcnn_oe.py --dataset cifar10 --preset paper [--baseline-checkpoint MODEL]

Writes results.json, results.md (Table 5 layout + the likelihood check), ROC / bits-per-dim histogram PNGs and both
models to --output-dir (default runs/pixelcnn_<dataset>_<preset>). See docs/pixelcnn.md.
"""

from oe_vision.density_recipe import main

if __name__ == "__main__":
    main()
