#!/usr/bin/env bash
# Run one recipe THERE, on the device machine, from the carried working tree (see tools/device/prepare.sh):
#   tools/device/run.sh recipes/ptb_word_oe.py --preset paper
#   LAUNCH="accelerate launch" tools/device/run.sh examples/oe_custom_model.py --max-steps 200
# Installs the carried wheels into /tmp/site (the image has torch, transformers, accelerate already), reads the
# corpora from .devdata/data, writes the run into $OUT/run (results.json, results.md, PNGs, log; the models stay
# behind: they exceed what a call brings back) and prints the GPU and package versions first.
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="$PWD:/tmp/site" OE_DATA_DIR="$PWD/.devdata/data" PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
if [ -f "$HOME/cifar10/test.npz" ]; then export OE_CIFAR10_DIR="$HOME/cifar10"; fi  # staged by earlier calls (README.md)
out=${OUT:-/tmp/out}/run
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)"
recipe=${1:?usage: tools/device/run.sh RECIPE [ARGS...]}; shift
start=$(date +%s)
# /tmp/run may hold an earlier call's run (the machine stays warm): replace it, unless this call resumes it
case " $* " in *" --resume "*) fresh=() ;; *) fresh=(--overwrite) ;; esac
${LAUNCH:-python3} "$recipe" --output-dir /tmp/run ${fresh[@]+"${fresh[@]}"} "$@" 2>&1 | tr '\r' '\n' | grep -v -E '^ *[0-9]+%\|' > "$out/log.txt"
status=${PIPESTATUS[0]}
echo "recipe exit $status after $(( $(date +%s) - start )) s"
tail -n 40 "$out/log.txt"
cp /tmp/run/results.json /tmp/run/results.md /tmp/run/run_manifest.json "$out/" 2>/dev/null
ls /tmp/run/*.png 2>/dev/null | head -n 5 | xargs -r cp -t "$out/"
exit "$status"
