#!/usr/bin/env bash
# Stage what a GPU run on the `device` machine needs, HERE (a machine with registry access), into two folders
# that git ignores and the device call carries (`carry: [".whl", ".devdata"]`):
#   .whl/      wheels the device image lacks (datasets, evaluate, dill, multiprocess; pure Python, cp312)
#   .devdata/  the corpora of one experiment family, copied from $OE_DATA_DIR (never committed)
# Usage: tools/device/prepare.sh text|vision     (a call carries at most 64 MiB: text ~25 MB, vision ~27 MB)
#        tools/device/prepare.sh cifar-part K    (K = 1, 2, 3: two of CIFAR-10's six 28 MB arrays into
#                                                 .devdata/cifar10_part, from $OE_CIFAR10_DIR; see README.md)
set -euo pipefail
family=${1:?usage: tools/device/prepare.sh text|vision|cifar-part K}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if [ "$family" = cifar-part ]; then
  cifar=${OE_CIFAR10_DIR:?set OE_CIFAR10_DIR to the folder that fetch.py filled}
  case "${2:-}" in
    1) files="train-00.npz train-01.npz" ;;
    2) files="train-02.npz train-03.npz" ;;
    3) files="train-04.npz test.npz" ;;
    *) echo "cifar-part needs K = 1, 2 or 3" >&2; exit 2 ;;
  esac
  rm -rf .devdata/cifar10_part && mkdir -p .devdata/cifar10_part
  for f in $files; do cp "$cifar/$f" .devdata/cifar10_part/; done
  du -sh .devdata/cifar10_part
  exit 0
fi
data=${OE_DATA_DIR:?set OE_DATA_DIR to the corpora folder (e.g. ../shared/data)}
rm -rf .whl .devdata/data && mkdir -p .whl .devdata/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19
case "$family" in
  text) sets="ptb wikitext-2 ewt" ;;
  vision) sets="mnist fashion-mnist notmnist omniglot isun" ;;
  *) echo "unknown family '$family' (text|vision)" >&2; exit 2 ;;
esac
for s in $sets; do cp -r "$data/$s" .devdata/data/; done
du -sh .whl .devdata
