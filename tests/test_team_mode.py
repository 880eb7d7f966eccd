"""Team mode: one MLflow store on PostgreSQL, a shared artifact root, `forewarn ui` for a team.

The PostgreSQL test runs against the server of ``FOREWARN_TEST_POSTGRES_URL`` (default
127.0.0.1:5432, database ``test``) in a schema of its own (see ``pg_schema`` in conftest),
skipped when no server answers unless ``FOREWARN_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from forewarn.flows import tracking
from forewarn.flows.cli import app
from forewarn.flows.tracking import TrackingSettings, redact_uri, ui_command
from forewarn.records.config import explain


def _tiny_xgboost(path: Path, seed: int) -> Path:
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
    xgb.XGBClassifier(n_estimators=3, max_depth=2, random_state=seed, n_jobs=1).fit(X, y).save_model(path)
    return path


def test_postgresql_store_end_to_end(pg_schema, tmp_path, restore_tracking):
    import mlflow
    import sqlalchemy as sa
    from mlflow.store.db.utils import _get_latest_schema_revision

    engine, schema = pg_schema
    uri = engine.url.set(drivername="postgresql+psycopg", query={"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)
    assert uri.endswith(f"/test?options=-csearch_path%3D{schema}")
    root = tmp_path / "shared" / "artifacts"
    settings = TrackingSettings(uri=uri, artifact_root=str(root))

    assert tracking.configure(settings.uri, settings.artifact_root, cwd=tmp_path / "elsewhere") == uri
    assert mlflow.get_tracking_uri() == uri and os.environ[tracking.ARTIFACT_ROOT_ENV] == root.as_uri()
    assert root.is_dir() and not (tmp_path / "elsewhere").exists()

    experiment = tracking.experiment_name("t2d_2y")
    run_id = tracking.start_site_run(experiment=experiment, site="north", run_name="north-1",
                                     tags={"task": "t2d_2y", "validation_design": "internal"})
    # MLflow's alembic migrations created its tables in the test's schema, at the latest revision.
    with engine.connect() as conn:
        tables = set(conn.execute(sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                                  {"s": schema}).scalars())
        revision = conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar_one()
    assert {"alembic_version", "experiments", "runs", "metrics", "params", "tags",
            "registered_models", "model_versions", "registered_model_aliases", "logged_models"} <= tables
    assert revision == _get_latest_schema_revision()

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    xgb_path = _tiny_xgboost(model_dir / "xgboost.json", seed=1)
    (model_dir / "calibration.json").write_text(json.dumps({"method": "isotonic"}))
    tracking.log_records(
        run_id=run_id, params={"gap_days": 30, "windows": "30d,full"},
        metrics={"held_out/auroc": 0.875, "held_out/auprc": 0.5},
        artifacts={"model_inputs/xgboost.json": xgb_path, "model_inputs/calibration.json": model_dir / "calibration.json"},
        dicts={"validation/promotion.json": {"promoted": True}}, note="north: first model", tags={"promoted": "true"},
    )
    name, version, aliases = tracking.register_model(
        run_id=run_id, task="t2d_2y", site="north", xgb_model_path=xgb_path, n_features=3, promote=True, decision="first model",
    )
    assert (name, version, aliases) == ("forewarn-t2d_2y-north", "1", ("challenger", "champion"))
    tracking.set_champion(name, version)  # the flow moves it last, once the run holds the model's inputs

    # A second run that is not promoted: challenger moves, champion stays.
    run2 = tracking.start_site_run(experiment=experiment, site="north", run_name="north-2", tags={"task": "t2d_2y"})
    second = _tiny_xgboost(tmp_path / "xgboost.json", seed=2)
    assert tracking.register_model(run_id=run2, task="t2d_2y", site="north", xgb_model_path=second, n_features=3,
                                   promote=False, decision="kept") == ("forewarn-t2d_2y-north", "2", ("challenger",))

    dest = tmp_path / "champion"
    assert tracking.champion_inputs("t2d_2y", "north", dest) == "1"
    assert sorted(p.name for p in dest.iterdir()) == ["calibration.json", "xgboost.json"]
    assert (dest / "xgboost.json").read_bytes() == xgb_path.read_bytes()
    assert tracking.champion_inputs("t2d_2y", "south", tmp_path / "none") is None

    # Read it all back as a team member would: a fresh client on the same URI.
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp.artifact_location == root.as_uri()
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`forewarn.site` = 'north' and tags.`forewarn.promoted` = 'true'")
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.run_name == "north-1" and run.info.artifact_uri == f"{root.as_uri()}/{run_id}/artifacts"
    assert run.data.params == {"gap_days": "30", "windows": "30d,full"}
    assert run.data.metrics == {"held_out/auroc": 0.875, "held_out/auprc": 0.5}
    assert {k: v for k, v in run.data.tags.items() if k.startswith("forewarn.") or k == "mlflow.note.content"} == {
        "forewarn.site": "north", "forewarn.task": "t2d_2y", "forewarn.validation_design": "internal",
        "forewarn.promoted": "true", "forewarn.decision": "first model", "mlflow.note.content": "north: first model",
    }
    assert (root / run_id / "artifacts" / "validation" / "promotion.json").read_text() == '{\n  "promoted": true\n}'
    champion = client.get_model_version_by_alias(name, "champion")
    assert (str(champion.version), champion.run_id, champion.tags) == ("1", run_id, {"forewarn.decision": "first model"})
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"challenger": "2", "champion": "1"}
    # The model lives under the shared root: a model from code holding the trees in XGBoost's own JSON.
    assert champion.source.startswith("models:/m-")
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    assert logged.artifact_location == f"{root.as_uri()}/models/{logged.model_id}/artifacts"
    (trees,) = (root / "models" / logged.model_id / "artifacts").rglob("xgboost.json")
    assert trees.read_bytes() == xgb_path.read_bytes()
    # Its requirements are the installed versions of what serving it needs (given, not inferred).
    from importlib.metadata import version
    requirements = (root / "models" / logged.model_id / "artifacts" / "requirements.txt").read_text().split()
    assert requirements == [f"mlflow=={mlflow.__version__}", f"xgboost=={version('xgboost')}",
                            f"scikit-learn=={version('scikit-learn')}", f"numpy=={np.__version__}", f"scipy=={version('scipy')}"]
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")  # predicts risks, not labels
    x = np.array([[0, 0, 0], [1, 2, 3]], dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), _load(xgb_path).predict_proba(x)[:, 1])


def _load(path: Path):
    import xgboost as xgb

    clf = xgb.XGBClassifier()
    clf.load_model(path)
    return clf


def test_redact_uri_masks_passwords_only():
    assert redact_uri("postgresql+psycopg://alice:s3cr%40t@db.example.org:5432/mlflow?options=-csearch_path%3Dx") == (
        "postgresql+psycopg://alice:***@db.example.org:5432/mlflow?options=-csearch_path%3Dx")
    assert redact_uri("postgresql://alice@db/mlflow?sslmode=require&password=hunter2") == (
        "postgresql://alice@db/mlflow?sslmode=require&password=***")
    assert redact_uri("https://user:token@mlflow.example.org/") == "https://user:***@mlflow.example.org/"
    assert redact_uri("postgresql://a:b@c@host/db") == "postgresql://a:***@host/db"
    for unchanged in ("sqlite:////srv/mlruns/mlflow.db", "postgresql+psycopg://forewarn@db:5432/mlflow", "databricks"):
        assert redact_uri(unchanged) == unchanged


def test_tracking_settings_reject_passwords_and_relative_roots():
    assert TrackingSettings().model_dump() == {"uri": None, "artifact_root": None}
    ok = TrackingSettings(uri="postgresql+psycopg://forewarn@db:5432/mlflow", artifact_root="s3://bucket/forewarn")
    assert ok.artifact_root == "s3://bucket/forewarn"
    with pytest.raises(ValidationError) as exc:
        TrackingSettings(uri="postgresql+psycopg://forewarn:hunter2@db/mlflow")
    assert "tracking.uri must not contain a password; got 'postgresql+psycopg://forewarn:***@db/mlflow'" in str(exc.value)
    assert "hunter2" not in str(exc.value)
    assert explain(exc.value, TrackingSettings) == (
        "  - uri: Value error, tracking.uri must not contain a password; got 'postgresql+psycopg://forewarn:***@db/mlflow'. "
        "Put the password in ~/.pgpass (or PGPASSFILE / PGPASSWORD) on each machine.")
    with pytest.raises(ValidationError, match="tracking.uri must be a URI with a scheme"):
        TrackingSettings(uri="mlruns/mlflow.db")
    with pytest.raises(ValidationError, match="tracking.artifact_root must be an absolute folder or a URI"):
        TrackingSettings(artifact_root="shared/artifacts")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrackingSettings(url="postgresql://x/y")


def test_store_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.ARTIFACT_ROOT_ENV, raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    assert tracking.resolve_store(cwd=tmp_path) == (f"sqlite:///{db}", (tmp_path / "mlruns" / "artifacts").as_uri())
    pg = "postgresql+psycopg://forewarn@db/mlflow"
    assert tracking.resolve_store(pg, cwd=tmp_path) == (pg, (tmp_path / "mlruns" / "artifacts").as_uri())
    assert tracking.resolve_store(pg, "/srv/forewarn/artifacts") == (pg, "file:///srv/forewarn/artifacts")
    assert tracking.resolve_store("https://mlflow.example.org") == ("https://mlflow.example.org", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg)
    monkeypatch.setenv(tracking.ARTIFACT_ROOT_ENV, "s3://bucket/forewarn/")
    assert tracking.resolve_store() == (pg, "s3://bucket/forewarn")
    # An explicit study setting beats the environment.
    assert tracking.resolve_store("sqlite:////srv/m.db", "/srv/a") == ("sqlite:////srv/m.db", "file:///srv/a")


def test_the_default_sqlite_store_keeps_its_artifacts_beside_it(tmp_path, monkeypatch, restore_tracking):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.ARTIFACT_ROOT_ENV, raising=False)
    assert tracking.configure(cwd=tmp_path) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    # Not exported: the next store of this process (another working directory) derives its own.
    assert tracking.ARTIFACT_ROOT_ENV not in os.environ and (tmp_path / "mlruns" / "artifacts").is_dir()
    location = mlflow.get_experiment(tracking.experiment_id("forewarn/t2d_2y")).artifact_location
    assert location == (tmp_path / "mlruns" / "artifacts").as_uri()


def test_ui_command_line_keeps_the_password_out_of_argv():
    uri = "postgresql+psycopg://forewarn:hunter2@db.example.org:5432/mlflow"
    argv, env = ui_command(backend_store_uri=uri, artifact_root="file:///srv/forewarn/artifacts", host="0.0.0.0", port=5001,
                           allowed_hosts="mlflow.hospital.org")
    assert argv == [sys.executable, "-m", "mlflow", "server", "--default-artifact-root", "file:///srv/forewarn/artifacts",
                    "--host", "0.0.0.0", "--port", "5001", "--workers", "1", "--allowed-hosts", "mlflow.hospital.org"]
    assert env == {"MLFLOW_BACKEND_STORE_URI": uri}
    argv, _ = ui_command(backend_store_uri="sqlite:////w/mlruns/mlflow.db", artifact_root="file:///w/mlruns/artifacts")
    assert argv == [sys.executable, "-m", "mlflow", "server", "--default-artifact-root", "file:///w/mlruns/artifacts",
                    "--host", "127.0.0.1", "--port", "5000", "--workers", "1"]


def test_ui_help_and_a_server_uri_is_refused(monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["ui", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--backend-store-uri", "--artifact-root", "--host", "--allowed-hosts", "--port"):
        assert option in result.output
    monkeypatch.setattr(os, "execvpe", lambda *a: pytest.fail(f"must not start a server: {a}"))
    result = runner.invoke(app, ["ui", "--backend-store-uri", "https://u:tok@mlflow.example.org"])
    assert result.exit_code == 2
    assert "--backend-store-uri must be a database URL" in result.output and "'https://u:***@mlflow.example.org'" in result.output
    assert "tok" not in result.output


def test_ui_prints_the_store_redacted_and_execs_mlflow(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execvpe", lambda file, argv, env: calls.append((file, argv, env)))
    monkeypatch.delenv(tracking.ARTIFACT_ROOT_ENV, raising=False)
    uri = "postgresql+psycopg://forewarn:hunter2@db.example.org/mlflow"
    root = tmp_path / "artifacts"
    result = CliRunner().invoke(app, ["ui", "--backend-store-uri", uri, "--artifact-root", str(root), "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert result.output.splitlines() == [
        f"MLflow UI on http://0.0.0.0:5000 over postgresql+psycopg://forewarn:***@db.example.org/mlflow (artifacts of new experiments: {root.as_uri()})",
        "Listening beyond this machine: MLflow has no login here; serve it only behind an authenticating proxy.",
    ]
    [(file, argv, env)] = calls
    assert file == sys.executable and argv == ui_command(backend_store_uri=uri, artifact_root=root.as_uri(), host="0.0.0.0")[0]
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri and root.is_dir()


def test_offset_and_blend_model_registers_as_code_and_serves_the_same_probabilities(tmp_path, restore_tracking, capfd):
    """A rare outcome's trees boost from an L1 offset and blend with the L1: the registered
    model (a model from code holding the four JSON files, no pickle) predicts what
    Forewarn's own model does, calibrated."""
    import mlflow
    import scipy.sparse as sp
    from test_models import rare_matrix

    from forewarn.models.calibration import Calibrator
    from forewarn.models.train import ModelConfig, load_primary, train_models

    matrix = rare_matrix(tmp_path)
    # Offset, then blended with the L1 at 0.2, calibrated by a sigmoid (fixed here: the serving is under test).
    trained = train_models(matrix, tmp_path / "model", ModelConfig(n_jobs=1, blend=0.2, calibration="sigmoid"))
    assert trained.offset_path.exists() and trained.blend_path.exists()
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"), cwd=tmp_path)
    run_id = tracking.start_site_run(experiment=tracking.experiment_name("rare"), site="north", run_name="north-1", tags={})
    X, _, _ = matrix.load()
    name, version, _ = tracking.register_model(
        run_id=run_id, task="rare", site="north", xgb_model_path=trained.xgboost_path, n_features=X.shape[1], promote=True,
        decision="first model", offset_path=trained.offset_path, blend_path=trained.blend_path,
        calibration_path=trained.calibration_path,
    )
    # MLflow's "Successfully registered model" and "Created version" lines would land in
    # the middle of the flow's console output.
    assert "Successfully registered" not in capfd.readouterr().err
    assert mlflow.MlflowClient().get_model_version(name, version).run_id == run_id
    logged = mlflow.MlflowClient().get_model_version(name, version).source.removeprefix("models:/")
    assert json.loads(mlflow.MlflowClient().get_logged_model(logged).tags["mlflow.modelVersions"]) == [
        {"name": name, "version": version}]
    tracking.set_champion(name, version)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert loaded.metadata.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert not list((tmp_path / "artifacts").rglob("*.pkl"))  # code and JSON, never a pickle
    dense = np.asarray(X[:50].todense(), dtype=np.float32)
    dense[dense == 0] = np.nan  # unstored entries are missing features, as in training
    expected = load_primary(trained).probability(sp.csr_matrix(X[:50]))
    calibrator = Calibrator.from_json(json.loads(trained.calibration_path.read_text()))
    assert calibrator.method == "sigmoid"  # so calibration moves every probability
    # The calibrated risk by default (the one the report's thresholds refer to), the raw one on request.
    np.testing.assert_allclose(loaded.predict(dense), calibrator(expected), rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(dense, params={"calibrated": False}), expected, rtol=1e-5)
    assert not np.allclose(calibrator(expected), expected, rtol=1e-3)

    # The next night's champion comes back with its offset: the promotion rule scores it as trained.
    from forewarn.flows.nightly import model_inputs
    from forewarn.models.train import TrainedModels

    profile = tmp_path / "profile.json"
    profile.write_text("{}")
    inputs = model_inputs(trained, matrix, profile)
    assert sorted(inputs) == ["age_sex.json", "calibration.json", "columns.parquet", "l1_logistic.json", "profile.json",
                              "xgboost.json", "xgboost_blend.json", "xgboost_offset.json"]
    tracking.log_records(run_id=run_id, params={}, metrics={}, artifacts={f"{tracking.MODEL_INPUTS}/{k}": v for k, v in inputs.items()},
                         dicts={}, note="rare")
    assert tracking.champion_inputs("rare", "north", tmp_path / "champion") == version
    champion = load_primary(TrainedModels(tmp_path / "champion"))
    assert champion.offset is not None and champion.blend == 0.2
    np.testing.assert_array_equal(champion.probability(sp.csr_matrix(X[:50])), expected)


def test_registered_model_applies_an_isotonic_calibrator_as_forewarn_does(tmp_path, restore_tracking):
    """The served risk goes through the same step function (and tie-break) as
    ``models.calibration.Calibrator``: a hand-written isotonic map, checked by eye."""
    import mlflow

    from forewarn.models.calibration import Calibrator

    xgb_path = _tiny_xgboost(tmp_path / "xgboost.json", seed=3)
    calibrator = Calibrator("isotonic", x=(0.2, 0.5, 0.8), y=(0.05, 0.3, 0.6))
    (tmp_path / "calibration.json").write_text(json.dumps(calibrator.to_json()))
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"), cwd=tmp_path)
    run_id = tracking.start_site_run(experiment=tracking.experiment_name("iso"), site="north", run_name="north-1", tags={})
    name, version, _ = tracking.register_model(run_id=run_id, task="iso", site="north", xgb_model_path=xgb_path, n_features=3,
                                         promote=True, decision="first", calibration_path=tmp_path / "calibration.json")
    tracking.set_champion(name, version)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    raw = loaded.predict(x, params={"calibrated": False})
    np.testing.assert_allclose(raw, _load(xgb_path).predict_proba(x)[:, 1], rtol=1e-6)
    assert raw.min() < 0.5 < raw.max()  # both steps of the map are used
    np.testing.assert_allclose(loaded.predict(x), calibrator(raw), rtol=1e-9)
    # By eye: a raw 0.35 lies halfway between the knots 0.2 and 0.5, so 0.175 (plus 1e-6 of itself).
    assert calibrator(np.array([0.35]))[0] == pytest.approx(0.175, abs=1e-6)
