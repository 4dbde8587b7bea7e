#!/usr/bin/env bash
# Train the demo recipe 3 seeds with the acquisition-shift policy (the recipe) and 3 without it, on a zoo
# phantom, then serve every checkpoint and compare the cameras: `predilect bench cameras`.
# Run from the repository root of the commit in manifest.toml; PHANTOM is made by the first command.
set -euo pipefail
PHANTOM=${PHANTOM:-/tmp/cams_exp/zoo}
RUNS=${RUNS:-/tmp/cams_exp/runs}
P=.venv/bin/predilect
[ -f "$PHANTOM/manifest.csv" ] || nice -n 15 $P phantom --preset zoo --count 840 --test-fraction 0.2 --seed 0 --workers 2 --out "$PHANTOM"
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
  --out benchmarks/results/cameras --name "${NAME:-$(date +%F)-2core-shared}"
