#!/bin/bash
# The 'full' UOPSL cell of the hard-phantom grid (training/RESULTS.md, /tmp/m9/grid.sh), seed 0,
# with conv-local tokens and the evidence heatmap; then heatmap localisation on its export.
cd /work/main
COMMON=(--manifest /tmp/m9/hard/manifest.csv --out /tmp/m9/grid-local/out --set data.preprocess.size=128 --set 'model.widths=[24,48,96]' --set loop.lr=0.002 --set pretrain.in_memory=true --set finetune.in_memory=true --set loop.log_every_steps=10 --pretrain-set loop.epochs=16 --finetune-set loop.epochs=20 --resamples 1000 --set 'model.backbone="conv-local"' --set 'model.heatmap="evidence"')
.venv/bin/predilect experiment "${COMMON[@]}" --seeds 0 --variants full
.venv/bin/predilect export --checkpoint /tmp/m9/grid-local/out/full/seed0/model.safetensors --out /tmp/m9/grid-local/model.onnx
.venv/bin/predilect localisation --onnx /tmp/m9/grid-local/model.onnx --phantom /tmp/m9/hard --report /tmp/m9/grid-local/localisation.md
