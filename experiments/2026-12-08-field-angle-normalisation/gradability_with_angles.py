"""The camera zoo's gradability with each photograph cropped at its camera's field angle: the grader's rules
with the packaged thresholds (as served), and recalibrated on the seen cameras' new squares.

Reads the measurements ``zoo_gradability.py report`` caches (``OUT/measured.pkl``), made on a copy of that
experiment's phantom and degraded sets whose manifests carry ``field_angle_deg`` (``add_field_angles.py``):

    python experiments/2026-12-08-field-angle-normalisation/gradability_with_angles.py OUT RESULT.md
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from predilect.quality import load_quality_cfg
from predilect.training import gradability as G

PACKAGED = Path(__file__).resolve().parents[2] / "predilect" / "quality_calibration.json"


def main(out: Path, result: Path) -> None:
    measured = pickle.loads((out / "measured.pkl").read_bytes())
    packaged = load_quality_cfg(PACKAGED)
    recalibrated = load_quality_cfg(out / "quality_calibration.json")
    sections, data = [], {}
    for name, cfg in (("packaged thresholds (served)", packaged), ("recalibrated on the seen cameras", recalibrated)):
        cal, mea = G.evaluate(measured["calibration"], cfg), G.evaluate(measured["measurement"], cfg)
        sections.append(G.report_markdown(cal, mea, cfg, header=[f"## {name}", ""]))
        data[name] = {"quality": cfg.to_dict(), "calibration": cal.to_dict(), "measurement": mea.to_dict()}
    command = " ".join(["python", "experiments/2026-12-08-field-angle-normalisation/gradability_with_angles.py", *sys.argv[1:]])
    head = [
        "# Gradability on the camera zoo, each photograph cropped at its camera's field angle",
        "",
        f"Command: `{command}` (measurements: `zoo_gradability.py report` on {out}).",
        "",
    ]
    result.write_text("\n".join(head) + "\n\n".join(sections))
    result.with_suffix(".json").write_text(json.dumps({"command": command, **data}, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
