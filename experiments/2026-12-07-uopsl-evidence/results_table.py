"""The claim table of training/RESULTS.md, printed from the committed grid summaries (grid0: phantom
seed 0, grid1: phantom seed 1); tests/test_results_layout.py recomputes every row from the scores.

    .venv/bin/python experiments/2026-12-07-uopsl-evidence/results_table.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _interval(i: dict) -> str:
    return f"[{i['low']:+.3f}, {i['high']:+.3f}]" if i["low"] == i["low"] else "n/a"


def main() -> None:
    print("| claim | comparison | classes | phantom | images | estimate | patients 95% | seeds + patients 95% "
          "| between seeds 95% | seeds | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for grid in ("grid0", "grid1"):
        path = HERE / grid / "summary.json"
        if not path.is_file():
            continue
        for entry in json.loads(path.read_text())["claims"]:
            claim = entry["claim"]
            a, b = claim["comparison"]
            for rows, d in entry["rows"].items():
                print(
                    f"| {claim['text']} | {a} - {b} | {claim['classes']} | {grid} | {rows} | {d['value']:+.3f} | "
                    f"{_interval(d['patients'])} | {_interval(d['seeds_and_patients'])} | "
                    f"{_interval(d['between_seeds'])} | {len(d['seeds'])} | {d['verdict']} |"
                )


if __name__ == "__main__":
    main()
