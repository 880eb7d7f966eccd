"""One model across sites without moving rows: cyclic boosting and a pooled Platt scaling
(``models.federated``), on small synthetic sites."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from test_models import write_matrix

from forewarn.evaluation.evaluate import EvaluationConfig, evaluate_and_explain, held_out_metrics
from forewarn.models.calibration import Calibrator
from forewarn.models.federated import (
    MIN_ROWS,
    SiteRows,
    shared_columns,
    train_federated,
    untrainable,
)
from forewarn.models.train import ModelConfig, XGBoostConfig, load_primary
from forewarn.records import schema

# No row or column sampling, so a fit does not depend on the seed of each visit.
EXACT = ModelConfig(n_jobs=1, xgboost=XGBoostConfig(n_estimators=30, subsample=1.0, colsample_bytree=1.0, early_stopping_rounds=1000))
# The trees as XGBoost fits them (the rule of 11 for their leaves off: development only), to
# check the cyclic boosting against one fit; the released trees have a test of their own.
AS_FITTED = EXACT.model_copy(update={"leaf_min_cell": 1})


def site_matrix(tmp_path, name: str, n: int = 1200, seed: int = 0, tuning_events: int | None = None,
                train_events: int | None = None):
    """A site's matrix in 30 shared columns: the outcome follows columns 0 and 1."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, 30, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    signal = np.asarray(X[:, 0].todense()).ravel() + np.asarray(X[:, 1].todense()).ravel()
    y = signal + rng.normal(0, 0.25, n) > 0.6
    split = np.array(["train", "tuning", "held_out"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    if tuning_events is not None:  # keep only the first few tuning events
        events = np.flatnonzero((split == "tuning") & y)
        y[events[tuning_events:]] = False
    if train_events is not None:  # keep only the first few train events
        events = np.flatnonzero((split == "train") & y)
        y[events[train_events:]] = False
    matrix = write_matrix(tmp_path / name, X, y, split)
    names = pd.read_parquet(matrix.columns_path)["name"]
    parts = names.str.rsplit("/", n=3)
    pd.DataFrame({"name": names, "code": parts.str[0], "agg": parts.str[1] + "/" + parts.str[2], "window": parts.str[3],
                  "description": parts.str[0]}).to_parquet(matrix.columns_path)
    return matrix


def tuning_rows(site: SiteRows):
    X, rows, _ = site.matrix.load()
    keep = (rows[schema.SPLIT] == schema.TUNING).to_numpy()
    return X[keep], rows.loc[keep, schema.BOOLEAN_VALUE].to_numpy(bool)


def test_the_network_keeps_its_sigmoid_only_beyond_one_standard_error_of_none(tmp_path):
    """``calibration_choice`` from the sites' sums is ``simplest_within_one_se`` on the pooled
    rows: the same Brier scores, and the sigmoid only where it beats no calibrator by more
    than one standard error of their per-subject difference."""
    from forewarn.models.calibration import Calibrator, simplest_within_one_se
    from forewarn.models.federated import _platt, calibration_choice

    sites = [SiteRows("a", site_matrix(tmp_path, "a", seed=1)), SiteRows("b", site_matrix(tmp_path, "b", n=900, seed=2))]
    config = ModelConfig(n_jobs=1, xgboost=XGBoostConfig(n_estimators=6, early_stopping_rounds=1000))
    model = train_federated(sites, config, rounds_per_visit=3)
    outcomes = []
    # the Platt scalings the flow fits (six trees leave the risks too flat: a gain), then two near none
    for folds in ({0: _platt(sites, model.trees, 1), 1: _platt(sites, model.trees, 0)},
                  {0: Calibrator("sigmoid", a=0.0, b=1.01), 1: Calibrator("sigmoid", a=0.0, b=0.99)}):
        cv, gain = calibration_choice(sites, model.trees, folds)
        errors = {"none": [], "sigmoid": []}
        subjects = []
        for s in sites:
            X, rows, _ = s.matrix.load()
            tune = (rows[schema.SPLIT] == schema.TUNING).to_numpy()
            y = rows.loc[tune, schema.BOOLEAN_VALUE].to_numpy(float)
            ids = rows.loc[tune, schema.SUBJECT_ID].to_numpy()
            raw = model.booster().predict(xgb.DMatrix(X[tune])).astype(float)
            sig = np.where(ids % 2 == 0, folds[0](raw), folds[1](raw))
            errors["none"].append((raw - y) ** 2)
            errors["sigmoid"].append((sig - y) ** 2)
            subjects.append(np.char.add(f"{s.name}-", ids.astype(str)))
        pooled = {k: np.concatenate(v) for k, v in errors.items()}
        assert cv == pytest.approx({k: float(v.mean()) for k, v in pooled.items()}, rel=1e-5)
        assert gain == (simplest_within_one_se(pooled, np.concatenate(subjects)) == "sigmoid")
        outcomes.append(gain)
    assert outcomes == [True, False]


def test_shared_columns_are_every_sites_columns_once_by_name():
    a = pd.DataFrame({"name": ["b/code/count/full", "a/code/count/full"], "code": ["b", "a"], "agg": ["code/count"] * 2,
                      "window": ["full"] * 2, "description": ["B", "A at a"]})
    b = pd.DataFrame({"name": ["c/code/count/full", "a/code/count/full"], "code": ["c", "a"], "agg": ["code/count"] * 2,
                      "window": ["full"] * 2, "description": ["C", "A at b"]})
    out = shared_columns([a, b])
    assert out["name"].tolist() == ["a/code/count/full", "b/code/count/full", "c/code/count/full"]
    assert out["description"].tolist() == ["A at a", "B", "C"]
    with pytest.raises(ValueError, match="at least one site"):
        shared_columns([])


def test_one_site_cycles_give_the_trees_of_one_fit(tmp_path):
    """Continuing a model visit by visit grows the trees one fit would, and the tree
    count is the checked count with the lowest tuning log-loss."""
    site = SiteRows("a", site_matrix(tmp_path, "a"))
    model = train_federated([site], AS_FITTED, rounds_per_visit=7)
    X, rows, _ = site.matrix.load()
    y = rows[schema.BOOLEAN_VALUE].to_numpy(bool)
    train = (rows[schema.SPLIT] == schema.TRAIN).to_numpy()
    params = {"objective": "binary:logistic", "tree_method": "hist", "eta": 0.05, "max_depth": 4, "min_child_weight": 2.0,
              "subsample": 1.0, "colsample_bytree": 1.0, "lambda": 1.0, "base_score": y[train].mean(), "nthread": 1}
    one = xgb.train(params, xgb.DMatrix(X[train], label=y[train]), num_boost_round=30)
    assert [h["trees"] for h in model.summary["history"]] == [7, 14, 21, 28, 30]
    Xt, yt = tuning_rows(site)
    losses = {n: float(np.mean(np.logaddexp(0, np.where(yt, -1, 1) * one.predict(xgb.DMatrix(Xt), output_margin=True,
                                                                                      iteration_range=(0, n)))))
              for n in (7, 14, 21, 28, 30)}
    assert model.n_trees == min(losses, key=losses.get)
    assert [h["tuning_logloss"] for h in model.summary["history"]] == pytest.approx([losses[n] for n in losses], abs=1e-6)
    np.testing.assert_allclose(model.booster().predict(xgb.DMatrix(X), output_margin=True),
                               one.predict(xgb.DMatrix(X), output_margin=True, iteration_range=(0, model.n_trees)), rtol=1e-5, atol=1e-5)


def test_platt_across_sites_is_the_pooled_maximum_likelihood_fit(tmp_path):
    sites = [SiteRows("a", site_matrix(tmp_path, "a", seed=1)), SiteRows("b", site_matrix(tmp_path, "b", n=900, seed=2))]
    # Few trees leave the risks too flat, so the pooled Platt scaling is kept (b > 1).
    config = ModelConfig(n_jobs=1, xgboost=XGBoostConfig(n_estimators=6, early_stopping_rounds=1000))
    model = train_federated(sites, config, rounds_per_visit=3)
    assert model.n_trees == 6 and model.calibrator.method == "sigmoid"
    z, y = [], []
    for s in sites:
        Xt, yt = tuning_rows(s)
        p = np.clip(model.booster().predict(xgb.DMatrix(Xt)).astype(float), 1e-6, 1 - 1e-6)
        z.append(np.log(p / (1 - p)))
        y.append(yt)
    pooled = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(np.concatenate(z).reshape(-1, 1), np.concatenate(y))
    assert model.calibrator.a == pytest.approx(float(pooled.intercept_[0]), abs=1e-5)
    assert model.calibrator.b == pytest.approx(float(pooled.coef_[0, 0]), abs=1e-5)
    assert model.calibrator.b > 1
    assert set(model.summary["calibration_cv_brier"]) == {"none", "sigmoid"}


MESSAGES = ("label_counts", "boost", "tuning_logloss", "platt_sums", "brier_sums")


def recording(site: SiteRows) -> SiteRows:
    """``site``, writing down everything it hands to the coordinator in ``site.sent``."""
    site.sent = []

    def sender(name: str):
        method = getattr(site, name)

        def send(*args, **kwargs):
            out = method(*args, **kwargs)
            site.sent.append((name, out))
            return out
        return send

    for name in MESSAGES:
        setattr(site, name, sender(name))
    return site


def test_only_the_model_and_sums_leave_a_site(tmp_path):
    sites = [recording(SiteRows(n, site_matrix(tmp_path, n, seed=seed))) for n, seed in (("a", 1), ("b", 2))]
    model = train_federated(sites, EXACT, rounds_per_visit=10)
    for site in sites:
        kinds = {kind for kind, _ in site.sent}
        assert kinds == set(MESSAGES)
        for kind, value in site.sent:
            if kind == "boost":
                assert isinstance(value, bytes)
                xgb.Booster(model_file=bytearray(value))  # a model, nothing else
            elif kind == "label_counts":
                assert set(value) == {"rows", "events"} and min(value["events"], value["rows"] - value["events"]) >= MIN_ROWS
            elif kind == "platt_sums":
                grad, hess = value
                assert grad.shape == (2,) and hess.shape == (2, 2)
            elif kind == "brier_sums":  # and the sums of the per-subject differences from no calibrator, over 11+ subjects
                total, n, d, d2, subjects = value
                assert isinstance(total, float) and isinstance(n, int) and n >= MIN_ROWS
                assert isinstance(d, float) and isinstance(d2, float) and d2 >= 0 and subjects >= MIN_ROWS
            else:  # a sum and the number of rows it is over
                total, n = value
                assert isinstance(total, float) and isinstance(n, int) and n >= MIN_ROWS
    # The sites took turns: a, b, a.
    assert [h["site"] for h in model.summary["history"]] == ["a", "b", "a"]


def test_each_site_releases_the_trees_it_adds_under_the_rule_of_11(tmp_path):
    """Each visit's trees leave the site they were fitted at: every leaf holds 0 or at least
    11 of that site's train subjects with the outcome, and without it."""
    sites = [SiteRows(n, site_matrix(tmp_path, n, seed=seed)) for n, seed in (("a", 1), ("b", 2))]
    model = train_federated(sites, EXACT, rounds_per_visit=10)
    assert model.summary["boosting_sites"] == ["a", "b"]
    booster = model.booster()
    for visit, h in enumerate(model.summary["history"]):
        if h["trees"] > model.n_trees:
            break
        site = next(s for s in sites if s.name == h["site"])
        X, rows, _ = site.matrix.load()
        train = (rows[schema.SPLIT] == schema.TRAIN).to_numpy()
        y, subjects = rows[schema.BOOLEAN_VALUE].to_numpy(bool)[train], rows[schema.SUBJECT_ID].to_numpy()[train]
        leaves = booster.predict(xgb.DMatrix(X[train]), pred_leaf=True, strict_shape=True).reshape(train.sum(), -1)
        for t in range(visit * 10, min(h["trees"], model.n_trees)):
            for leaf in np.unique(leaves[:, t]):
                at = leaves[:, t] == leaf
                e, n = np.unique(subjects[at & y]).size, np.unique(subjects[at & ~y]).size
                assert (e == 0 or e >= 11) and (n == 0 or n >= 11), (h["site"], t, leaf, e, n)


def test_a_site_with_few_train_events_fits_no_trees_but_tunes(tmp_path):
    big = SiteRows("a", site_matrix(tmp_path, "a", seed=1))
    small = SiteRows("b", site_matrix(tmp_path, "b", seed=2, train_events=6))
    assert big.can_boost and not small.can_boost and small.can_tune
    model = train_federated([big, small], EXACT, rounds_per_visit=10)
    assert model.summary["boosting_sites"] == ["a"] and model.summary["tuning_sites"] == ["a", "b"]
    assert {h["site"] for h in model.summary["history"]} == {"a"}
    # the network's training size: the label counts of the sites that could share them (a's)
    assert model.summary["count_sites"] == ["a"]
    assert (model.summary["train_rows"], model.summary["train_events"]) == tuple(big.label_counts().values())
    with pytest.raises(ValueError, match=r"no site of \['b'\] has 11 train subjects with the outcome and 11 without"):
        train_federated([small], EXACT)


def test_a_site_with_few_tuning_events_adds_trees_but_no_sums(tmp_path):
    big, small = SiteRows("a", site_matrix(tmp_path, "a", seed=1)), SiteRows("b", site_matrix(tmp_path, "b", seed=2, tuning_events=8))
    assert big.can_tune and not small.can_tune
    with pytest.raises(PermissionError, match="site 'b' reports no tuning sums"):
        small.tuning_logloss(b"")
    model = train_federated([big, small], EXACT, rounds_per_visit=10)
    assert model.summary["tuning_sites"] == ["a"]
    assert {h["site"] for h in model.summary["history"]} == {"a", "b"}
    with pytest.raises(ValueError, match=r"no site of \['b'\] has 11 tuning events"):
        train_federated([small], EXACT)


def test_sites_must_share_their_columns(tmp_path):
    a = SiteRows("a", site_matrix(tmp_path, "a"))
    other = site_matrix(tmp_path, "b")
    pd.read_parquet(other.columns_path).iloc[::-1].to_parquet(other.columns_path)
    with pytest.raises(ValueError, match=r"site 'b' has other feature columns than site 'a'.*shared_columns"):
        train_federated([a, SiteRows("b", other)], EXACT)
    # Before the shared columns are built, the sites' own matrices answer the rest.
    assert untrainable([a, SiteRows("b", other)], columns=False) is None
    with pytest.raises(ValueError, match="site names must be unique"):
        train_federated([a, a], EXACT)


def test_network_model_is_evaluated_at_a_site_like_its_own(tmp_path):
    sites = [SiteRows("a", site_matrix(tmp_path, "a", seed=1)), SiteRows("b", site_matrix(tmp_path, "b", seed=2))]
    model = train_federated(sites, EXACT, rounds_per_visit=10)
    trained = sites[1].write_trained(model, tmp_path / "b-model", EXACT)
    X, rows, _ = sites[1].matrix.load()
    raw = model.booster().predict(xgb.DMatrix(X))
    np.testing.assert_allclose(load_primary(trained).probability(X), raw, rtol=1e-6)
    pred = pd.read_parquet(trained.predictions_path("xgboost"))
    np.testing.assert_allclose(pred[schema.PREDICTED_BOOLEAN_PROBABILITY], model.calibrator(raw), rtol=1e-6)
    summary = json.loads(trained.summary_path.read_text())
    assert summary["federated"]["sites"] == ["a", "b"] and summary["xgboost"]["best_iteration"] == model.n_trees - 1
    # The site's own L1 baseline is recorded as train_models records it (the report reads its columns left out).
    assert summary["l1_logistic"]["min_cell"] == 11 and isinstance(summary["l1_logistic"]["columns_left_out"], int)
    assert set(json.loads(trained.l1_path.read_text())) == {"C", "intercept", "weights"}  # no max-abs scale leaves
    assert Calibrator.from_json(json.loads(trained.calibration_path.read_text())) == model.calibrator
    config = EvaluationConfig(bootstrap=20)
    record = evaluate_and_explain(sites[1].matrix, trained, tmp_path / "eval", config, site="b").load_metrics()
    assert record["held_out"]["xgboost"]["auroc"] > 0.8
    assert record["held_out"]["xgboost"]["constant_risk"] is False  # what the network's promotion reads at each site
    # The numbers alone (what the temporal design logs) are the full evaluation's, key for key.
    assert held_out_metrics(trained, config) == record["held_out"]["xgboost"]
    # The network design's record at the site publishes no calibration groups: the evaluation above publishes
    # cut-offs of the same risks under its own ledger. An external design's record, the only one of its ranking, does.
    from forewarn.evaluation.validation import external_validation

    network = external_validation(trained, sites[1].matrix, n_boot=20, site="b")
    assert "calibration" not in network and "smoothed_calibration" not in network
    shipped = external_validation(trained, sites[1].matrix, n_boot=20, site="b", curves=True)
    groups = shipped["calibration"]["as_shipped"]
    assert sum(g["n"] for g in groups) == shipped["as_shipped"]["n"] and len(shipped["smoothed_calibration"]) == 50
    if shipped["recalibrated"] is not None:  # the same groups, their mean recalibrated risk
        again = shipped["calibration"]["recalibrated"]
        assert [(g["n"], g["events"], g["observed"]) for g in again] == [(g["n"], g["events"], g["observed"]) for g in groups]
    # with curves, the ECE is the one over the published groups
    assert shipped["as_shipped"]["ece"] == pytest.approx(
        sum(g["n"] * abs(g["observed"] - g["mean_predicted"]) for g in groups) / sum(g["n"] for g in groups))


def test_sites_in_processes_of_their_own_train_the_same_model_and_refuse_other_calls(tmp_path):
    """``models.site_process``: each site loads its rows in a process of its own and answers
    only the training's calls; the model is the in-process one, tree for tree, and what
    each site sent back is recorded."""
    from forewarn.models import wire
    from forewarn.models.site_process import METHODS, PROPERTIES, SiteProcess

    matrices = {"a": site_matrix(tmp_path, "a", seed=0), "b": site_matrix(tmp_path, "b", seed=1)}
    local = train_federated([SiteRows(n, m) for n, m in matrices.items()], EXACT, rounds_per_visit=5)
    with SiteProcess("a", matrices["a"]) as a, SiteProcess("b", matrices["b"]) as b:
        remote = train_federated([a, b], EXACT, rounds_per_visit=5)
        # the coordinator's side holds no row: no array, matrix or frame of the site's
        assert not any(isinstance(v, (np.ndarray, sp.spmatrix)) for v in vars(a).values())
        with pytest.raises(PermissionError, match=r"site 'a' answers only .*; it refuses '_margin'"):
            a._call("_margin", remote.trees, "tuning")
        with pytest.raises(PermissionError, match="refuses '_X'"):
            a._call("_X")
        assert a.tuning_logloss(remote.trees)[1] > 0  # still answering after a refusal
        # an error that is not Forewarn's own crosses as its kind alone (its message stays in the site's log)
        with pytest.raises(RuntimeError, match=r"site 'a': XGBoostError while answering 'tuning_logloss' \(see the "
                                               r"site's log\)"):
            a.tuning_logloss(b"not a model")
        assert a.tuning_logloss(remote.trees)[1] > 0
        # calls and answers cross in models.wire's plain encoding: a pickled call is refused by the site
        # (never unpickled), which goes on answering
        a._send.send_bytes(pickle.dumps(("label_counts", (), {})))
        a._pending = "label_counts"
        with pytest.raises(ValueError, match=r"not a Forewarn wire message: it should start with b'FWW1'"):
            a._answer("label_counts")
        assert a.label_counts() == SiteRows("a", matrices["a"]).label_counts()
        # the site releases its trees under the rule of 11 whatever the coordinator asks
        with pytest.raises(PermissionError, match=r"site 'a' releases trees only with every leaf holding 0 or at least "
                                                  r"11 .* it refuses min_cell=1"):
            a.boost(None, 2, {"max_depth": 2}, 0, min_cell=1)
    assert (remote.trees, remote.n_trees, remote.calibrator) == (local.trees, local.n_trees, local.calibrator)
    assert local.summary["boundary"] == {"kind": "in-process", "answers": {}}
    boundary = remote.summary["boundary"]
    assert boundary["kind"] == "process" and sorted(boundary["answers"]) == ["a", "b"]
    visits = {s: sum(h["site"] == s for h in remote.summary["history"]) for s in ("a", "b")}
    for site, calls in boundary["answers"].items():
        assert set(calls) <= set(PROPERTIES + METHODS)
        assert calls["boost"]["answers"] == visits[site]  # one model back a visit
        assert calls["tuning_logloss"]["answers"] == len(remote.summary["history"])  # every visit's check
        assert all(c["bytes"] > 0 for c in calls.values())
        # what is counted is each answer's encoded bytes: for the label counts (asked for the pooled
        # parameters and for the summary), exactly these
        counts = SiteRows(site, matrices[site]).label_counts()
        assert calls["label_counts"] == {"answers": 2, "bytes": 2 * len(wire.encode(["ok", counts]))}
    assert a._process.poll() == 0 and b._process.poll() == 0  # closed cleanly


def test_a_site_process_that_cannot_load_its_rows_says_why(tmp_path):
    from forewarn.models.site_process import SiteProcess

    matrix = site_matrix(tmp_path, "a", train_events=0)
    with pytest.raises(ValueError, match="site 'a': its train split has no events"):
        SiteProcess("a", matrix)
    site = SiteProcess("a", matrix, wait=False)  # started; loading fails when it is waited for
    with pytest.raises(ValueError, match="its train split has no events"):
        site.ready()
    assert site._process.poll() is not None and site._send.closed and site._recv.closed


def test_closing_a_site_process_with_a_call_in_flight_kills_it_rather_than_ask_it_to_stop(tmp_path):
    """Its answer may be blocked on a full pipe nobody reads: asked to stop, it would never
    hear; it is killed."""
    import signal

    from forewarn.models import wire
    from forewarn.models.site_process import SiteProcess

    site = SiteProcess("a", site_matrix(tmp_path, "a"))
    site._send.send_bytes(wire.encode(["tuning_logloss", [b"x" * 1_000_000], {}]))  # sent, its answer never read
    site._pending = "tuning_logloss"
    site.close()
    assert site._process.returncode == -signal.SIGKILL and site._send.closed and site._recv.closed
    idle = SiteProcess("b", site_matrix(tmp_path, "b"))
    idle.close()
    assert idle._process.returncode == 0  # nothing in flight: asked, and it stopped


def test_a_site_answering_with_a_pickle_is_refused_and_its_payload_never_run(tmp_path):
    """The coordinator decodes a site's answer with ``models.wire`` only: a pickle from a
    site (or from whatever could write to its pipe) cannot run code there."""
    from multiprocessing import Pipe

    from forewarn.models import wire
    from forewarn.models.site_process import SiteProcess

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with SiteProcess("a", site_matrix(tmp_path, "a")) as site:
        theirs, ours = Pipe(duplex=False)
        real, site._recv = site._recv, theirs
        ours.send_bytes(pickle.dumps(("ok", Payload())))
        with pytest.raises(RuntimeError, match=r"site 'a': its answer to 'label_counts' is not a Forewarn wire message "
                                               r"\(not a Forewarn wire message: it should start with b'FWW1'"):
            site._answer("label_counts")
        # a well-encoded answer of the wrong shape is refused too, whatever its first item
        for shape in (["error", ["x"], "m"], [np.zeros(2), 1], ["ok"], []):
            ours.send_bytes(wire.encode(shape))
            with pytest.raises(RuntimeError, match=r"is neither \['ok', value\] nor \['error', kind, message'\]"):
                site._answer("label_counts")
        theirs.close(), ours.close()
        site._recv = real
    assert not marker.exists() and site.messages == []
