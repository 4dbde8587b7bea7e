"""Per disease, the share of truly positive test images whose heatmap peak lands on a drawn lesion:
mean over the seeds of each (variant, map), on all, seen-camera and held-out-camera images, from
the reports localise.py wrote (localisation/*.json). Writes localisation/summary.md.

    .venv/bin/python experiments/2026-12-07-uopsl-evidence/localisation_table.py
"""

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "localisation"
GROUPS = {"all": "all_positive", "seen": "seen cameras", "held_out": "held-out cameras"}


def main() -> None:
    runs: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(HERE.glob("*-seed*-*.json")):
        m = re.fullmatch(r"(?P<variant>\w+)-seed(?P<seed>\d+)-(?P<map>\w+)", path.stem)
        if m:
            runs[f"{m['variant']} / {m['map']}"].append(json.loads(path.read_text()))
    diseases = sorted({d for reports in runs.values() for r in reports for d in r["all_positive"]})
    lines = [
        "# Heatmap localisation over seeds (hard phantom, test split)",
        "",
        "Share of truly positive test images whose hottest heatmap cell overlaps a lesion drawn for the disease,",
        "mean over seeds (min-max in brackets), from `localise.py` (`predilect localisation` per cell).",
        "Chance: a random field-of-view cell of the same image. >= 90%: the target.",
        "",
    ]
    for name, reports in runs.items():
        lines += [f"## {name} ({len(reports)} seeds)", "", "| disease | all | seen cameras | held-out cameras | chance |"]
        lines.append("|---|---|---|---|---|")
        for disease in diseases:
            cells = []
            for group in GROUPS.values():
                rows = [r["all_positive"] if group == "all_positive" else r["by_group"].get(group, {}) for r in reports]
                rates = [row[disease]["hit_rate"] for row in rows if disease in row and row[disease]["images"]]
                images = sum(row[disease]["images"] for row in rows if disease in row) // max(len(reports), 1)
                cells.append(
                    f"{100 * np.mean(rates):.0f}% ({100 * min(rates):.0f}-{100 * max(rates):.0f}; n={images})"
                    if rates
                    else "n/a"
                )
            chance = np.mean([r["all_positive"][disease]["chance"] for r in reports if disease in r["all_positive"]])
            lines.append(f"| {disease} | {' | '.join(cells)} | {100 * chance:.0f}% |")
        met = [
            d
            for d in diseases
            if np.mean([r["all_positive"][d]["hit_rate"] for r in reports if d in r["all_positive"]]) >= 0.9
        ]
        lines += ["", f">= 90% (mean over seeds, all images): {', '.join(met) or 'none'}", ""]
    (HERE / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
