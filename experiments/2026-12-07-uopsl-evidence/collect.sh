#!/bin/bash
# collect.sh SRC DST: keep what the summary and a reader need of a grid run under SRC (configs,
# per-epoch logs, test scores, zero-shot scores, the split files, the summary) in DST; never the
# checkpoints, run states or image caches.
set -e
src=$1; dst=$2
mkdir -p "$dst"
cd "$src"
for f in test_split.csv grid.json summary.md summary.json; do [ -f "$f" ] && cp "$f" "$dst/"; done
find . -path ./cache -prune -o \( -name scores.npz -o -name zero_shot.npz -o -name config.json -o -name epochs.csv \) -print |
  while read -r f; do mkdir -p "$dst/$(dirname "$f")"; cp "$f" "$dst/$f"; done
