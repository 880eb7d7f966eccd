"""What the order of the disclosure ledger costs the calibration table: for each model a
demo run trained (its held-out risks, in the stage folders of ``forewarn demo``'s
working directory), the calibration groups, the operating points shown, the
decision-curve points and ROC points that one ledger of published cut-offs
(``privacy.Cutoffs``) leaves, when the calibration groups join it

- after the operating points and the decision curve (``evaluate.py``'s order), or
- right after the operating budget (the lead times and subgroups rest on it), before
  the other alert budgets, the fixed thresholds and the decision curve.

    python benchmarks/ledger_order.py forewarn-demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from forewarn.evaluation import clinical, metrics
from forewarn.evaluation.evaluate import EvaluationConfig, held_out_frame, split_frame
from forewarn.models.train import PRIMARY, TrainedModels
from forewarn.records import privacy, schema


def published(y, p, tuning, config: EvaluationConfig, *, calibration_early: bool) -> dict:
    ledger = privacy.Cutoffs(y, p)

    def table(**levels):
        return clinical.threshold_table(y, p, budget_from=tuning, operating_budget=config.operating_budget,
                                        cutoffs=ledger, **levels)

    if calibration_early:
        table(thresholds=[], alert_rates=[config.operating_budget])
        calibration = metrics.calibration_curve(y, p, cutoffs=ledger)
    rows = table(thresholds=config.thresholds, alert_rates=config.alert_budgets)
    dca = clinical.decision_curve(y, p, thresholds=config.net_benefit_thresholds, cutoffs=ledger)
    if not calibration_early:
        calibration = metrics.calibration_curve(y, p, cutoffs=ledger)
    roc = clinical.disclosed_curve(y, p, cutoffs=ledger)
    return {
        "groups": [int(n) for n in calibration["n"] if n is not None],
        "operating_points": int(sum(r is not None for r in rows["tp"])),
        "decision_curve_points": int(dca["net_benefit_model"].notna().sum()),
        "roc_points": len(roc[0]) if isinstance(roc, tuple) else len(roc),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="forewarn demo's working directory")
    args = parser.parse_args()
    config = EvaluationConfig()
    folders = sorted(args.workdir.glob("sites/*/work/stages/train-*/*/predictions")) + sorted(
        args.workdir.glob("sites/*/work/stages/network-*/*/models/predictions"))
    print(f"{'model':42s} {'events':>6s}  {'order':8s} {'calibration groups (rows)':34s} ops  dca  roc")
    for folder in folders:
        trained = TrainedModels(folder.parent)
        held = held_out_frame(trained, PRIMARY)
        y = held[schema.BOOLEAN_VALUE].to_numpy(bool)
        p = held[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
        tuning = split_frame(trained, PRIMARY, schema.TUNING)[schema.PREDICTED_BOOLEAN_PROBABILITY].to_numpy(float)
        if not privacy.Cutoffs(y, p).open:
            continue
        site = folder.parts[folder.parts.index("sites") + 1]
        stage = folder.parts[folder.parts.index("stages") + 1]
        for early in (False, True):
            r = published(y, p, tuning if tuning.size else p, config, calibration_early=early)
            name = f"{site} {stage}" if not early else ""
            print(f"{name:42s} {int(np.sum(y)) if not early else '':>6}  {'early' if early else 'current':8s} "
                  f"{' '.join(map(str, r['groups'])):34s} {r['operating_points']:3d} {r['decision_curve_points']:4d} "
                  f"{r['roc_points']:4d}")


if __name__ == "__main__":
    main()
