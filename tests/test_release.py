"""The rule of 11 for the leaves of trees that leave the site (``models.release``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
import xgboost as xgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forewarn.models.release import FLT_MAX, ReleaseSettings, release_trees


def data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(n, 20, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    y = np.asarray(X[:, 0].todense()).ravel() + rng.normal(0, 0.3, n) > 0.5
    return X, y


def trees_of(booster: xgb.Booster) -> list[dict]:
    return json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]["model"]["trees"]


def subject_counts(booster, X, y, subjects, base_margin=None):
    """(subjects with the outcome, without) in every leaf of every tree, counted afresh."""
    leaves = booster.predict(xgb.DMatrix(X, base_margin=base_margin), pred_leaf=True, strict_shape=True)
    leaves = leaves.reshape(X.shape[0], -1)
    out = []
    for t in range(leaves.shape[1]):
        for leaf in np.unique(leaves[:, t]):
            rows = leaves[:, t] == leaf
            out.append((np.unique(subjects[rows & y]).size, np.unique(subjects[rows & ~y]).size))
    return out


def shown_thresholds(booster, X, subjects) -> list[tuple[int, float, int, int]]:
    """The splits whose threshold would show a value: neither +-FLT_MAX nor with 11+
    subjects of the train rows ``X`` having a (present) value below it and 11+ at or
    above it, counted afresh: (feature, threshold, subjects below, at or above)."""
    dense = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
    present = ~np.isnan(dense)
    if sp.issparse(X):  # a stored entry is present (even an explicit 0); an unstored one is missing
        coo = X.tocoo()
        present = np.zeros(dense.shape, bool)
        present[coo.row, coo.col] = True
    out = []
    for tree in trees_of(booster):
        for k, child in enumerate(tree["left_children"]):
            if child == -1:
                continue
            f, t = tree["split_indices"][k], np.float32(tree["split_conditions"][k])
            if abs(t) == np.float32(FLT_MAX):
                continue
            v, s = dense[present[:, f], f], subjects[present[:, f]]
            below, above = np.unique(s[v < t]).size, np.unique(s[v >= t]).size
            if below < 11 or above < 11:
                out.append((f, float(t), below, above))
    return out


@pytest.mark.parametrize("extra", [
    {},
    {"num_parallel_tree": 2},
    {"max_delta_step": 0.5, "scale_pos_weight": 3.0},
    {"reg_lambda": 5.0, "offset": True},
])
def test_recomputed_leaves_are_xgboosts_own_on_the_rows_it_was_fitted_on(extra):
    """With nothing to prune (min_cell 1) and no row or column sampling, the Newton step
    recomputed tree after tree gives back XGBoost's own model: the learning rate divided
    among a round's parallel trees, the max_delta_step cap, class weights, lambda, and
    per-row starting margins."""
    X, y = data()
    extra = dict(extra)
    margin = np.random.default_rng(1).normal(-1, 0.5, y.size) if extra.pop("offset", False) else None
    params = dict(n_estimators=30, learning_rate=0.3, max_depth=4, subsample=1.0, colsample_bytree=1.0,
                  tree_method="hist", reg_lambda=1.0, min_child_weight=0.5) | extra
    clf = xgb.XGBClassifier(**params).fit(X, y, base_margin=margin)
    booster = clf.get_booster()
    released, summary = release_trees(booster, X, y, np.arange(y.size), ReleaseSettings.from_params(params),
                                      base_margin=margin, min_cell=1)
    dm = xgb.DMatrix(X, base_margin=margin)
    np.testing.assert_allclose(released.predict(dm, output_margin=True), booster.predict(dm, output_margin=True), atol=1e-5)
    assert summary["trees_changed"] == 0 and summary["leaves_before"] == summary["leaves_after"]
    assert summary["trees"] == 30 * params.get("num_parallel_tree", 1)


def test_every_released_leaf_holds_0_or_11_subjects_with_and_without_the_outcome():
    X, y = data()
    subjects = np.arange(y.size) // 3  # three rows a subject: the rule counts subjects, not rows
    params = dict(n_estimators=20, learning_rate=0.3, max_depth=5, subsample=0.8, tree_method="hist", min_child_weight=0.5,
                  random_state=0)
    booster = xgb.XGBClassifier(**params).fit(X, y).get_booster()
    before = subject_counts(booster, X, y, subjects)
    assert any(0 < e < 11 or 0 < n < 11 for e, n in before)  # the fit left small leaves
    released, summary = release_trees(booster, X, y, subjects, ReleaseSettings.from_params(params))
    after = subject_counts(released, X, y, subjects)
    assert all((e == 0 or e >= 11) and (n == 0 or n >= 11) for e, n in after)
    assert summary["leaves_after"] == len(after) < summary["leaves_before"] == len(before)
    assert summary["splits_moved"] > 0  # some small leaves were widened rather than merged
    # Mending routed the rows as XGBoost does (missing values to their default side), in
    # every tree: each leaf's cover is the hessian of the rows XGBoost itself sends there,
    # at the margin of the trees before it.
    released_trees = trees_of(released)
    leaves = released.predict(xgb.DMatrix(X), pred_leaf=True, strict_shape=True).reshape(y.size, -1).astype(int)
    values = np.stack([np.asarray(t["split_conditions"])[leaves[:, i]] for i, t in enumerate(released_trees)], axis=1)
    margin = released.predict(xgb.DMatrix(X), output_margin=True) - values.sum(axis=1)
    for i, tree in enumerate(released_trees):
        p = 1 / (1 + np.exp(-margin))
        cover = np.bincount(leaves[:, i], weights=p * (1 - p), minlength=len(tree["left_children"]))
        is_leaf = [k for k, c in enumerate(tree["left_children"]) if c == -1]
        assert (cover[is_leaf] > 0).all()  # no leaf is left that no row reaches
        np.testing.assert_allclose(np.asarray(tree["sum_hessian"])[is_leaf], cover[is_leaf], rtol=1e-4)
        margin = margin + values[:, i]
    # Thresholds are XGBoost's own histogram cuts, as the fit's are, with 11+ subjects on either
    # side, or +-FLT_MAX (present against missing): no other value of a row shows.
    cut_ptr, cut_values = xgb.QuantileDMatrix(X, max_bin=256).get_quantile_cut()
    for tree in released_trees:
        for k, child in enumerate(tree["left_children"]):
            if child != -1:
                f = tree["split_indices"][k]
                allowed = np.r_[cut_values[cut_ptr[f]:cut_ptr[f + 1]], -FLT_MAX, FLT_MAX].astype(np.float32)
                assert np.float32(tree["split_conditions"][k]) in allowed
    assert shown_thresholds(booster, X, subjects) and not shown_thresholds(released, X, subjects)
    # The covers are the recomputed hessian sums, so TreeSHAP still adds up to the margin.
    dm = xgb.DMatrix(X)
    contribs = released.predict(dm, pred_contribs=True)
    np.testing.assert_allclose(contribs.sum(axis=1), released.predict(dm, output_margin=True), atol=1e-4)
    for tree in trees_of(released):
        assert tree["loss_changes"] == [0.0] * len(tree["left_children"])
        assert tree["parents"][0] == 2147483647 and int(tree["tree_param"]["num_nodes"]) == len(tree["left_children"])


def test_a_stump_on_3_events_becomes_one_leaf_with_the_newton_step_by_hand():
    """One split: 3 of the 40 subjects with x > 0.5 have the outcome, 20 of the 60 with
    x <= 0.5. The right leaf breaks the rule, so the stump collapses into its root, whose
    value is the Newton step over all 100 rows from the base score."""
    x = np.r_[np.full(40, 0.9), np.full(60, 0.1)].astype(np.float32)
    y = np.r_[np.ones(3), np.zeros(37), np.ones(20), np.zeros(40)].astype(bool)
    X = sp.csr_matrix(x.reshape(-1, 1))
    params = dict(n_estimators=1, learning_rate=0.5, max_depth=1, tree_method="hist", min_child_weight=0, reg_lambda=1.0,
                  base_score=0.25)
    booster = xgb.XGBClassifier(**params).fit(X, y).get_booster()
    assert len(trees_of(booster)[0]["left_children"]) == 3
    released, summary = release_trees(booster, X, y, np.arange(100), ReleaseSettings.from_params(params))
    (tree,) = trees_of(released)
    assert tree["left_children"] == [-1] and summary["trees_changed"] == 1
    # g = p - y with p = 0.25 everywhere: G = 100 * 0.25 - 23 = 2; H = 100 * 0.25 * 0.75 = 18.75
    assert tree["split_conditions"][0] == pytest.approx(0.5 * -2 / (18.75 + 1.0), rel=1e-6)
    assert tree["sum_hessian"][0] == pytest.approx(18.75, rel=1e-6)
    np.testing.assert_allclose(released.predict(xgb.DMatrix(X), output_margin=True),
                               np.log(0.25 / 0.75) + 0.5 * -2 / 19.75, rtol=1e-6)


def test_a_split_that_isolates_a_small_group_moves_to_the_best_threshold_that_obeys_the_rule():
    """Four groups on one feature (events / non-events): x = 0.1 12 / 63, x = 0.5 2 / 9,
    x = 0.7 4 / 2, x = 0.9 8 / 0. At base score 0.25 XGBoost's best stump is x < 0.7,
    whose right leaf holds 2 subjects without the outcome. Of the thresholds on x, only
    x < 0.5 leaves both sides 0 or 11+ of each class (12 / 63 and 14 / 11), so the split
    moves there, and the leaves take the Newton step on their rows by hand."""
    x = np.repeat(np.float32([0.1, 0.5, 0.7, 0.9]), [75, 11, 6, 8])
    y = np.r_[np.ones(12), np.zeros(63), np.ones(2), np.zeros(9), np.ones(4), np.zeros(2), np.ones(8)].astype(bool)
    X = sp.csr_matrix(x.reshape(-1, 1))
    params = dict(n_estimators=1, learning_rate=0.5, max_depth=1, tree_method="hist", min_child_weight=0, reg_lambda=1.0,
                  base_score=0.25)
    booster = xgb.XGBClassifier(**params).fit(X, y).get_booster()
    assert trees_of(booster)[0]["split_conditions"][0] == pytest.approx(0.7)
    released, summary = release_trees(booster, X, y, np.arange(100), ReleaseSettings.from_params(params))
    (tree,) = trees_of(released)
    assert summary["splits_moved"] == 1 and summary["trees_changed"] == 1 and summary["leaves_after"] == 2
    assert tree["split_conditions"][0] == pytest.approx(0.5)
    # Left (x < 0.5): G = 75 * 0.25 - 12 = 6.75, H = 75 * 0.1875 = 14.0625; right: G = 25 * 0.25 - 14 = -7.75, H = 4.6875.
    left, right = 0.5 * -6.75 / 15.0625, 0.5 * 7.75 / 5.6875
    assert tree["split_conditions"][1:] == pytest.approx([left, right], rel=1e-6)
    assert tree["sum_hessian"] == pytest.approx([18.75, 14.0625, 4.6875], rel=1e-6)
    margin = released.predict(xgb.DMatrix(X), output_margin=True)
    np.testing.assert_allclose(margin, np.log(0.25 / 0.75) + np.where(x < 0.5, left, right), rtol=1e-6)
    # Without moving splits the stump collapses, as before.
    collapsed, summary = release_trees(booster, X, y, np.arange(100),
                                       dataclasses.replace(ReleaseSettings.from_params(params), move_splits=False))
    assert trees_of(collapsed)[0]["left_children"] == [-1] and summary["splits_moved"] == 0


def groups_of(*groups: tuple[float, int, int]) -> tuple[sp.csr_matrix, np.ndarray]:
    """One feature from (value, rows, events) groups, a row a subject; NaN: missing."""
    x = np.concatenate([np.full(n, v) for v, n, _ in groups]).astype(np.float32)
    y = np.concatenate([np.arange(n) < e for _, n, e in groups])
    X = sp.csr_matrix(np.nan_to_num(x).reshape(-1, 1))
    X.eliminate_zeros()  # unstored: missing, as XGBoost reads a sparse matrix
    return X, y


STUMP = dict(n_estimators=1, learning_rate=0.5, max_depth=1, tree_method="hist", min_child_weight=0, reg_lambda=1.0,
             base_score=0.25)


def test_a_split_of_present_from_missing_values_shows_no_value_and_routes_every_row_as_before():
    """x = 1, 2, 3 on 20, 15, 10 subjects (15, 10, 7 with the outcome); 55 subjects
    without x (11 with it). XGBoost parts present from missing at x < 6.00001: its last
    histogram cut, the largest value doubled, which shows that value (3). Both leaves
    obey the rule, so only the threshold changes, to FLT_MAX, and every row keeps its
    leaf and its value."""
    X, y = groups_of((1, 20, 15), (2, 15, 10), (3, 10, 7), (np.nan, 55, 11))
    booster = xgb.XGBClassifier(**STUMP).fit(X, y).get_booster()
    (fitted,) = trees_of(booster)
    assert fitted["split_conditions"][0] == pytest.approx(2 * 3 + 1e-5) and fitted["default_left"][0] == 0
    released, summary = release_trees(booster, X, y, np.arange(100), ReleaseSettings.from_params(STUMP))
    (tree,) = trees_of(released)
    assert np.float32(tree["split_conditions"][0]) == np.float32(FLT_MAX) and tree["split_conditions"][1:] == pytest.approx(fitted["split_conditions"][1:])
    assert summary["thresholds_replaced"] == 1 and summary["splits_moved"] == 0 and summary["trees_changed"] == 0
    dm = xgb.DMatrix(X)
    np.testing.assert_allclose(released.predict(dm), booster.predict(dm), rtol=1e-6)


def test_a_split_among_the_10_largest_values_moves_to_one_that_shows_none():
    """x = 0.1 on 100 subjects (11 with the outcome), 0.5 on 30 (4), 0.9 on 5 (5); 31
    subjects without x (20). XGBoost splits at x < 0.9 with missing values right: both
    leaves obey the rule, but only 5 subjects have x >= 0.9, so the threshold would show
    the 5 largest values. No threshold between 0.5 and 0.9 routes the rows as before and
    has 11 subjects at or above it, so the split moves; of the thresholds that show no
    value, present-against-missing gains most by hand (29.14 against 21.54 for x < 0.5):
    left 135 rows, 20 events (G = 135 * 0.25 - 20 = 13.75, H = 135 * 0.1875 = 25.3125);
    right 31, 20 (G = -12.25, H = 5.8125)."""
    X, y = groups_of((0.1, 100, 11), (0.5, 30, 4), (0.9, 5, 5), (np.nan, 31, 20))
    booster = xgb.XGBClassifier(**STUMP).fit(X, y).get_booster()
    assert trees_of(booster)[0]["split_conditions"][0] == pytest.approx(0.9)
    released, summary = release_trees(booster, X, y, np.arange(166), ReleaseSettings.from_params(STUMP))
    (tree,) = trees_of(released)
    assert summary["splits_moved"] == 1 and summary["thresholds_replaced"] == 0
    assert tree["split_conditions"] == pytest.approx([FLT_MAX, 0.5 * -13.75 / 26.3125, 0.5 * 12.25 / 6.8125], rel=1e-6)
    assert tree["sum_hessian"] == pytest.approx([31.125, 25.3125, 5.8125], rel=1e-6)
    # Without moving splits, it collapses.
    collapsed, _ = release_trees(booster, X, y, np.arange(166),
                                 dataclasses.replace(ReleaseSettings.from_params(STUMP), move_splits=False))
    assert trees_of(collapsed)[0]["left_children"] == [-1]


def test_a_train_split_with_fewer_than_11_subjects_of_a_class_cannot_be_released():
    X, y = data(n=400)
    y = np.zeros(400, bool)
    y[:6] = True
    params = dict(n_estimators=3, max_depth=2, tree_method="hist")
    booster = xgb.XGBClassifier(**params).fit(X, y).get_booster()
    with pytest.raises(ValueError, match="the train split holds <11 subjects with the outcome and 394 without: a model "
                                         "trained on it would carry a count below 11, so it cannot leave the site"):
        release_trees(booster, X, y, np.arange(400), ReleaseSettings.from_params(params))


def test_trees_before_first_tree_are_kept_as_they_are():
    """The network's cyclic boosting: a site releases only the trees it added."""
    X, y = data()
    params = {"objective": "binary:logistic", "eta": 0.3, "max_depth": 5, "tree_method": "hist", "min_child_weight": 0.5}
    first = xgb.train(params, xgb.DMatrix(X[:1500], label=y[:1500]), 5)
    both = xgb.train(params, xgb.DMatrix(X[1500:], label=y[1500:]), 5, xgb_model=first.copy())
    released, summary = release_trees(both, X[1500:], y[1500:], np.arange(1500), ReleaseSettings.from_params(params),
                                      first_tree=5)
    assert summary["trees"] == 5
    assert trees_of(released)[:5] == trees_of(both)[:5]
    after = subject_counts(released[5:], X[1500:], y[1500:], np.arange(1500))
    assert all((e == 0 or e >= 11) and (n == 0 or n >= 11) for e, n in after)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(150, 900), rows_per_subject=st.integers(1, 4),
       prevalence=st.floats(0.05, 0.5), depth=st.integers(1, 6), parallel=st.integers(1, 2), dense=st.booleans(),
       offset=st.booleans(), move=st.booleans())
def test_any_fit_released_obeys_the_rule_as_xgboost_routes_its_rows(seed, n, rows_per_subject, prevalence, depth,
                                                                     parallel, dense, offset, move):
    """Whatever the data and settings (sparse with missing values or dense, several rows a
    subject, parallel trees, per-row offsets, moving or only collapsing), every leaf of the
    released trees holds 0 or 11+ subjects of each class as XGBoost itself routes the train
    rows, no leaf is empty, and the covers are the hessians of those rows."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, 8, density=0.5, format="csr", random_state=seed, dtype=np.float32)
    X.data = np.round(X.data * 10) / 10  # ties, as counts and codes have
    signal = np.asarray(X[:, 0].todense()).ravel() + np.asarray(X[:, 1].todense()).ravel()
    y = signal + rng.normal(0, 0.5, n) > np.quantile(signal + rng.normal(0, 0.5, n), 1 - prevalence)
    if y.sum() < 11 or (~y).sum() < 11:
        y[:11], y[-11:] = True, False
    if dense:
        X = X.toarray()
    subjects = np.arange(n) // rows_per_subject
    margin = rng.normal(-1, 0.3, n) if offset else None
    params = dict(n_estimators=6, learning_rate=0.3, max_depth=depth, tree_method="hist", min_child_weight=0.1,
                  num_parallel_tree=parallel, subsample=0.8, random_state=seed)
    booster = xgb.XGBClassifier(**params).fit(X, y, base_margin=margin).get_booster()
    settings_ = dataclasses.replace(ReleaseSettings.from_params(params), move_splits=move)
    try:
        released, summary = release_trees(booster, X, y, subjects, settings_, base_margin=margin)
    except ValueError as error:  # only a train split too small for any tree
        assert "cannot leave the site" in str(error)
        assert min(np.unique(subjects[y]).size, np.unique(subjects[~y]).size) < 11
        return
    assert move or summary["splits_moved"] == 0
    assert all((e == 0 or e >= 11) and (k == 0 or k >= 11)
               for e, k in subject_counts(released, X, y, subjects, base_margin=margin))
    assert not shown_thresholds(released, X, subjects)
    dm = xgb.DMatrix(X, base_margin=margin)
    trees = trees_of(released)
    leaves = released.predict(dm, pred_leaf=True, strict_shape=True).reshape(n, -1).astype(int)
    values = np.stack([np.asarray(t["split_conditions"])[leaves[:, i]] for i, t in enumerate(trees)], axis=1)
    running = released.predict(dm, output_margin=True) - values.sum(axis=1)
    for start in range(0, len(trees), parallel):
        p = 1 / (1 + np.exp(-running))
        for i in range(start, start + parallel):
            cover = np.bincount(leaves[:, i], weights=p * (1 - p), minlength=len(trees[i]["left_children"]))
            is_leaf = [k for k, c in enumerate(trees[i]["left_children"]) if c == -1]
            assert (np.bincount(leaves[:, i], minlength=len(trees[i]["left_children"]))[is_leaf] > 0).all()
            np.testing.assert_allclose(np.asarray(trees[i]["sum_hessian"])[is_leaf], cover[is_leaf], rtol=1e-3, atol=1e-6)
        running = running + values[:, start:start + parallel].sum(axis=1)


def test_settings_from_classifier_params_take_xgboost_defaults_for_none():
    """``XGBClassifier.get_xgb_params()`` lists unset parameters as None: XGBoost's defaults."""
    settings = ReleaseSettings.from_params(xgb.XGBClassifier(n_estimators=5, learning_rate=0.2).get_xgb_params())
    assert (settings.learning_rate, settings.reg_lambda, settings.min_child_weight, settings.max_delta_step) == (0.2, 1.0, 1.0, 0.0)
    assert (settings.scale_pos_weight, settings.num_parallel_tree, settings.max_bin) == (1.0, 1, 256)
    assert ReleaseSettings.from_params({"eta": 0.1, "lambda": 5, "min_child_weight": 0}).min_child_weight == 0.0
    assert ReleaseSettings.from_params({"eta": 0.1, "lambda": 5}).reg_lambda == 5.0
