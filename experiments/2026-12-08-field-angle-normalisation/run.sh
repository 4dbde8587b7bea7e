#!/usr/bin/env bash
# The camera-zoo comparison of experiments/2026-12-07-camera-zoo-shift again (same phantom, recipe and
# seeds: 3 with the acquisition policy, 3 without, then `predilect bench cameras`), now that every
# photograph is sent with its camera's field angle: the crop scaled to the model's 45 degrees, frame-filling
# crops read as the frame's circumscribed circle, the policy's narrow-field shape. Run from the repository
# root of the commit in manifest.toml.
set -euo pipefail
PHANTOM=${PHANTOM:-/tmp/cams_exp/zoo}
HERE=experiments/2026-12-08-field-angle-normalisation
[ -f "$PHANTOM/manifest.csv" ] && .venv/bin/python "$HERE/add_field_angles.py" "$PHANTOM/manifest.csv"  # made before the column
PHANTOM=$PHANTOM RUNS=${RUNS:-/tmp/angle_exp/runs} NAME=${NAME:-$(date +%F)-field-angle-2core-shared} \
  bash experiments/2026-12-07-camera-zoo-shift/run.sh
