#!/bin/bash
# grid.sh CODE_DIR PHANTOM OUT SEEDS VARIANTS [extra args]: train the missing cells (resumable), niced;
# CODE_DIR is a frozen copy of the tree (snap.sh), so the cells do not change as the branch moves on
code=$1; phantom=$2; out=$3; seeds=$4; variants=$5; shift 5
pp=$code
for part in kernels models training build serving client dicom benchmarks; do pp=$pp:$code/$part; done
cd "$code"
PYTHONPATH=$pp PYTHONSAFEPATH= nice -n 19 /work/wt/method/.venv/bin/python -m predilect.cli experiment \
  --manifest "$phantom/manifest.csv" --out "$out" --seeds "$seeds" --variants "$variants" \
  --set data.preprocess.size=128 --set 'model.widths=[24,48,96]' --set loop.lr=0.002 \
  --set pretrain.in_memory=true --set finetune.in_memory=true --set loop.log_every_steps=10 \
  --pretrain-set loop.epochs=16 --finetune-set loop.epochs=20 --train-only "$@"
