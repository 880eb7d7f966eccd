"""What a study that changes its feature settings does to the champion check.

Two nights of the nightly flow on one demo network, the same data both nights: the first
with the default feature settings, the second with one setting changed (``--change``).
The second night re-scores the first night's champion on the same held-out rows, in its
own columns, and checks drift against its profile. With nothing in the data changed,
the champion's AUROC should be the one it was published with, and drift should find
nothing. Printed per site (and for the network's model): the champion's published
held-out AUROC, its AUROC tonight, the drift action, and the vocabulary check's churn
(the share of the champion's codes lost, and of tonight's codes new to it).

    .venv/bin/python benchmarks/champion_settings.py --people 20000 --change windows=365d,full
    .venv/bin/python benchmarks/champion_settings.py --people 20000 --change min_code_subjects=1000

Run from a checkout: the code measured is the one ``forewarn`` imports (session 31 ran it
on the session's code and on cab93dc, from a folder whose ``forewarn`` links there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if key == "windows":
        return key, value.split(",")
    if key in ("rollup_icd10", "parent_codes"):
        return key, value.lower() == "true"
    return key, (float(value) if "." in value else int(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20000)
    parser.add_argument("--change", type=setting, required=True, help="KEY=VALUE, e.g. windows=365d,full")
    parser.add_argument("--task", default="t2d_2y")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="champion-settings-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(work)

    import mlflow
    from prefect.testing.utilities import prefect_test_harness

    from forewarn.flows.nightly import nightly
    from forewarn.flows.study import parse_study
    from forewarn.records.demo import generate_network

    network = generate_network(work / "network", people=args.people, seed=7)
    key, value = args.change

    def study(features: dict):
        return parse_study({
            "name": "settings", "demo": True, "tasks": [args.task],
            "sites": [{"name": n, "source": {"location": str(p)}} for n, p in network.items()],
            "features": features, "models": {"search": {"trials": 0}},
            "validation": {"designs": ["internal", "network"]},
        }, base_dir=work)

    seconds = {}
    with prefect_test_harness(server_startup_timeout=180):
        for night, features in (("first", {}), ("second", {key: value})):
            started = time.perf_counter()
            nightly(study(features))
            seconds[night] = round(time.perf_counter() - started, 1)

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"forewarn/{args.task}")

    def runs(where: str):
        return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], filter_string=where)

    def artifact(run, path: str) -> dict:
        return json.loads(Path(client.download_artifacts(run.info.run_id, path)).read_text())

    def churn(compare: dict | None) -> dict:
        vocabulary = (compare or {}).get("vocabulary") or {}
        return {"lost": vocabulary.get("lost"), "new": vocabulary.get("new")}

    rows = []
    for site in network:
        first, second = runs(f"tags.`forewarn.validation_design` = 'internal' AND tags.`forewarn.site` = '{site}'")[:2]
        drift = artifact(second, "validation/drift.json")
        rows.append({"model": f"{site}'s", "published": first.data.metrics["held_out/auroc"],
                     "tonight": second.data.metrics.get("champion/held_out/auroc"),
                     "drift": drift["decision"]["action"],
                     **churn(drift.get("compare"))})
    registrations = runs("tags.`forewarn.role` = 'registration'")
    if len(registrations) >= 2:
        drift = artifact(registrations[1], "validation/drift.json")
        for site in network:
            first = runs(f"tags.`forewarn.validation_design` = 'network' AND tags.`forewarn.site` = '{site}'")[0]
            reasons = artifact(registrations[1], "validation/promotion.json")["reasons"]
            said = next((r for r in reasons if r.startswith(f"{site}: ") and "champion v1 AUROC" in r), "")
            tonight = float(said.split("champion v1 AUROC ")[1].split()[0]) if said else None
            site_drift = drift.get("sites", {}).get(site, {})
            rows.append({"model": f"network at {site}", "published": first.data.metrics["held_out/auroc"],
                         "tonight": tonight, "drift": site_drift.get("decision", {}).get("action"),
                         **churn(site_drift.get("compare"))})

    def number(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    print(f"\n{args.people:,} people, {args.task}; second night: {key} = {value}; seconds per night {seconds}\n")
    print("| champion | published AUROC | AUROC tonight | drift action | its codes lost | new codes |")
    print("|---|---:|---:|---|---:|---:|")
    for r in rows:
        lost, new = ("-" if r[k] is None else f"{r[k]:.0%}" for k in ("lost", "new"))
        print(f"| {r['model']} | {number(r['published'])} | {number(r['tonight'])} | {r['drift']} | {lost} | {new} |")
    if args.json:
        args.json.write_text(json.dumps({"people": args.people, "change": [key, value], "seconds": seconds,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
