#!/usr/bin/env bash
# Stage what a GPU run on the `device` machine needs, HERE (a machine with registry access), into two folders
# that git ignores and the device call carries (`carry: [".whl", ".devdata"]`):
#   .whl/      wheels the device image lacks (datasets, evaluate, dill, multiprocess; pure Python, cp312)
#   .devdata/  the corpora of one experiment family, copied from $OE_DATA_DIR (never committed)
# Usage: tools/device/prepare.sh text|vision     (a call carries at most 64 MiB: text ~25 MB, vision ~27 MB)
set -euo pipefail
family=${1:?usage: tools/device/prepare.sh text|vision}
root=$(cd "$(dirname "$0")/../.." && pwd)
data=${OE_DATA_DIR:?set OE_DATA_DIR to the corpora folder (e.g. ../shared/data)}
cd "$root"
rm -rf .whl .devdata && mkdir -p .whl .devdata/data
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
