"""Give a zoo phantom made before manifests carried ``field_angle_deg`` the column, from each row's camera.

The value is what ``predilect phantom`` now writes itself: the camera profile's published field angle
(``training/predilect/training/phantom/cameras.toml``), formatted ``%g``. The images are untouched.

    python experiments/2026-12-08-field-angle-normalisation/add_field_angles.py /tmp/cams_exp/zoo/manifest.csv
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from predilect.manifest import FIELD_ANGLE_COLUMN
from predilect.training.phantom.cameras import PROFILES


def main(manifest: Path) -> None:
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or FIELD_ANGLE_COLUMN in rows[0]:
        return
    for row in rows:
        camera = row.get("camera", "")
        row[FIELD_ANGLE_COLUMN] = f"{PROFILES[camera].field_angle_deg:g}" if camera in PROFILES else ""
    tmp = manifest.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(manifest)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
