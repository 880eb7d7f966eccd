"""Forewarn's XGBoost against both baselines over several demo networks at once: the
development networks scored by ``model_variants.py`` and the benchmark network scored by
``model_comparison.py``, each cell with the configuration Forewarn now picks for it.

    python benchmarks/model_variants.py --people 20000 --work /tmp/fwv --seeds 101,102,103,104,105,106 \\
        --variants blend_tuned,l1off_blend_tuned --json /tmp/fwv/dev.json
    python benchmarks/model_comparison.py --people 20000 --json /tmp/fwv/seed7.json
    python benchmarks/networks_summary.py --variants /tmp/fwv/dev.json --comparison /tmp/fwv/seed7.json

A development cell takes ``l1off_blend_tuned`` where ``offset: auto`` would boost from the L1
(a rare outcome with fewer than ``OFFSET_MAX_EVENTS`` training events), else ``blend_tuned``
(``--blend cv``: ``l1off_blend_cv`` / ``blend_cv``; ``--blend none``: ``l1off`` below 200 events and
``default``, session 7's model); the
benchmark's cells are as ``train_models`` trained them. Cells with fewer than 5 held-out
events, or no tuning event, are left out. A ``model_variants.py`` file of one network (keys
without ``seed<N>/``) names its cells' network by its file name. Prints one row per task: comparisons below a
baseline, the mean differences and the smallest AUROC difference against the L1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from forewarn.models.train import OFFSET_MAX_EVENTS, RARE_PREVALENCE

SESSION7_OFFSET_MAX_EVENTS = 200  # the offset's threshold before the blend
BASELINES = {"L1-logistic": "L1-logistic", "MEDS-Tab-style": "MEDS-Tab-style default XGBoost"}
OURS = "Forewarn XGBoost (calibrated)"
METRICS = ("auroc", "auprc")


def development_cells(path: Path, blend: str = "tuned") -> list[dict]:
    """``model_variants.py --json`` cells (keys ``seed<N>/<site>/<task>``) as Forewarn
    configures them with the blend chosen as ``blend`` says (``blend_<blend>`` and
    ``l1off_blend_<blend>``); "none": as session 7's model."""
    cells = []
    for key, cell in json.loads(path.read_text()).items():
        seed, site, task = key.split("/") if key.count("/") == 2 else (path.stem, *key.split("/"))
        train, tuning, held = (int(x) for x in cell["events"].split("/"))
        # The variants' JSON has no row counts; the rare task is the only one below 2% prevalence.
        rare = task == "pancreatic_cancer_1y"
        names = (f"blend_{blend}", f"l1off_blend_{blend}") if blend != "none" else ("default", "l1off")
        threshold = OFFSET_MAX_EVENTS if blend != "none" else SESSION7_OFFSET_MAX_EVENTS
        variant = names[1] if rare and train < threshold else names[0]
        if variant not in cell:
            raise SystemExit(f"{path}: cell {key} has no {variant!r} scores; run model_variants.py with "
                             f"--variants {','.join(names)}")
        cells.append({"network": seed, "site": site, "task": task, "held": held, "tuning": tuning,
                      "delta": {b: {m: cell[variant][m] - cell[b][m] for m in METRICS} for b in BASELINES}})
    return cells


def comparison_cells(path: Path) -> list[dict]:
    """``model_comparison.py --json`` cells (the benchmark network, seed 7)."""
    cells = []
    for cell in json.loads(path.read_text()):
        records, ours = cell["records"], cell["records"][OURS]
        cells.append({"network": "seed7", "site": cell["site"], "task": cell["task"], "held": cell["positives"]["held_out"],
                      "tuning": cell["positives"]["tuning"],
                      "delta": {b: {m: ours[m] - records[full][m] for m in METRICS} for b, full in BASELINES.items()}})
    return cells


def summary_rows(cells: list[dict]) -> list[str]:
    rows = []
    for task in dict.fromkeys(c["task"] for c in cells):
        kept = [c for c in cells if c["task"] == task and c["held"] >= 5 and c["tuning"] > 0]
        if not kept:
            continue
        below = sum(c["delta"][b][m] < 0 for c in kept for b in BASELINES for m in METRICS)
        mean = {b: {m: float(np.mean([c["delta"][b][m] for c in kept])) for m in METRICS} for b in BASELINES}
        worst = min(kept, key=lambda c: c["delta"]["L1-logistic"]["auroc"])
        rows.append(
            f"| {task} | {len(kept)} | {below} of {4 * len(kept)} | "
            + " | ".join(f"{mean[b]['auroc']:+.3f} / {mean[b]['auprc']:+.3f}" for b in BASELINES)
            + f" | {worst['delta']['L1-logistic']['auroc']:+.3f} ({worst['network']}, {worst['site']}) |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=Path, nargs="+", required=True, help="model_variants.py --json outputs (development networks)")
    parser.add_argument("--comparison", type=Path, nargs="*", default=[], help="model_comparison.py --json outputs (the benchmark network)")
    parser.add_argument("--blend", default="tuned",
                        help="development cells' blend: tuned (session 8, the tuning split), cv (session 9, out-of-fold "
                             "train rows and the tuning split), or another model_variants.py blend_<name>; none: session 7's model")
    args = parser.parse_args()
    cells = [c for p in args.variants for c in development_cells(p, args.blend)] + [c for p in args.comparison for c in comparison_cells(p)]
    print(f"(rare: train prevalence below {RARE_PREVALENCE:.0%}; offset below {OFFSET_MAX_EVENTS} training events)\n")
    print("| task | cells | comparisons below a baseline | mean ΔAUROC / ΔAUPRC vs L1 | vs MEDS-Tab-style | "
          "smallest ΔAUROC vs L1 (network, site) |\n|---|---|---|---|---|---|")
    print("\n".join(summary_rows(cells)))


if __name__ == "__main__":
    main()
