#!/usr/bin/env bash
# The camera-zoo comparison again, with every photograph sent with its camera's field angle (angular
# normalisation: the crop scaled to the model's 45 degrees; frame-filling crops taken as the frame's
# circumscribed circle; the acquisition policy's narrow-field shape). Same phantom, recipe and seeds as
# experiments/2026-12-07-camera-zoo-shift: 3 seeds with the policy, 3 without, then `predilect bench cameras`.
# Run from the repository root of the commit in manifest.toml.
set -euo pipefail
PHANTOM=${PHANTOM:-/tmp/cams_exp/zoo}
RUNS=${RUNS:-/tmp/angle_exp/runs}
P=.venv/bin/predilect
HERE=experiments/2026-12-08-field-angle-normalisation
[ -f "$PHANTOM/manifest.csv" ] || nice -n 15 $P phantom --preset zoo --count 840 --test-fraction 0.2 --seed 0 --workers 2 --out "$PHANTOM"
.venv/bin/python "$HERE/add_field_angles.py" "$PHANTOM/manifest.csv"  # a phantom made before the column
for recipe in policy baseline; do
  extra=()
  [ "$recipe" = baseline ] && extra=(--set data.augment.acquisition.enabled=false)
  for seed in 0 1 2; do
    run="$RUNS/$recipe-$seed"
    [ -f "$run/checkpoint/model.safetensors" ] && continue
    nice -n 15 $P train pretrain --config demo --manifest "$PHANTOM/manifest.csv" --oct-manifest "$PHANTOM/oct_manifest.csv" \
      --cache-dir "$RUNS/cache" --set loop.seed=$seed "${extra[@]}" --out "$run/pretrain"
    nice -n 15 $P train finetune --config demo --manifest "$PHANTOM/manifest.csv" --pretrained "$run/pretrain/pretrain.safetensors" \
      --cache-dir "$RUNS/cache" --set loop.seed=$seed "${extra[@]}" --out "$run/checkpoint"
  done
done
args=()
for recipe in policy baseline; do for seed in 0 1 2; do args+=(--checkpoint "$recipe=$RUNS/$recipe-$seed/checkpoint/model.safetensors"); done; done
nice -n 15 $P bench cameras --phantom "$PHANTOM" "${args[@]}" --workdir "$RUNS/bench" \
  --out benchmarks/results/cameras --name "${NAME:-$(date +%F)-field-angle-2core-shared}"
