"""A model trained again with the same result is the champion, not a new version.

A changed setting that cannot change the trees (``class_weight: auto`` is ``none`` above 2%
prevalence), like a new release of code that does not change them, gives a new training
key, so the models train again; they come out the same trees, calibrator and columns as
the champions. Before, each was registered as v2 and
judged against itself by the non-inferiority rule (its CI's lower bound below its own
AUROC minus the margin) and refused. Now each site's run and the network's registration
say the champion is unchanged, and nothing new is registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import flow_workdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nights(tmp_path_factory, demo_network, prefect_server):
    work = tmp_path_factory.mktemp("work")
    with flow_workdir(work, tmp_path_factory.mktemp("prefect-home")):
        from forewarn.flows.nightly import nightly
        from forewarn.flows.study import parse_study

        def study(class_weight: str, slope_low: float):
            return parse_study({
                "name": "alike", "demo": True, "tasks": ["t2d_2y"],
                "sites": [{"name": n, "source": {"location": str(p)}} for n, p in demo_network.items()],
                "evaluation": {"bootstrap": 20, "shap_rows": 100},
                "models": {"n_jobs": 1, "search": {"trials": 0}, "class_weight": class_weight, "blend": "tuned"},
                # the registry's decisions, not calibration, are under test: the raw blend of this small
                # network's community site keeps no calibrator (none beats it by one standard error) and its
                # held-out slope is 1.6
                "promotion": {"slope_low": slope_low, "slope_high": 2.0},
                "validation": {"designs": ["internal", "network"]},
            }, base_dir=work)

        first = nightly(study("none", 0.6))
        # the trees train again (a new training key) and the registry decides again (a
        # new promotion rule; the same rule and trees would come from the stage cache)
        second = nightly(study("auto", 0.55))
        yield {"work": work, "first": first, "second": second}


def test_a_site_model_trained_again_alike_is_the_champion_unchanged(nights):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{nights['work'] / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("forewarn/t2d_2y")
    for site in ("academic", "community"):
        name = f"forewarn-t2d_2y-{site}"
        assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
        first, last = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], filter_string=(
            f"tags.`forewarn.validation_design` = 'internal' AND tags.`forewarn.site` = '{site}'"))
        assert first.data.tags["forewarn.train_key"] != last.data.tags["forewarn.train_key"]  # trained again
        assert last.data.tags["forewarn.registered_version"] == "1"
        assert last.data.tags["forewarn.decision"] == (
            f"{name} v1 the champion, unchanged: this model is champion v1 itself, trained again with the same result "
            "(the same trees, calibrator and columns): nothing new to register.")
        promotion = json.loads(Path(client.download_artifacts(last.info.run_id, "validation/promotion.json")).read_text())
        assert promotion["unchanged"] is True and promotion["promoted"] is False
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_the_network_model_trained_again_alike_is_the_champion_unchanged(nights):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{nights['work'] / 'mlruns' / 'mlflow.db'}")
    name = "forewarn-t2d_2y-network"
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    for site in ("academic", "community"):
        report = (nights["work"] / "sites" / site / "work" / "reports" / "t2d_2y" / "network-report.html").read_text()
        assert (f"{name} v1 is the champion and was trained again with the same result (the same trees, calibrator "
                "and columns): nothing new to register") in report
