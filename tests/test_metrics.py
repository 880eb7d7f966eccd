"""Evaluation against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from forewarn.evaluation import metrics
from forewarn.records import privacy

Y = np.array([0, 0, 1, 0, 1, 1], bool)
P = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])


def test_six_row_case_by_hand():
    m = metrics.point_metrics(Y, P)
    # Positives beat negatives in 1 + 2 + 3 of 9 pairs.
    assert m["auroc"] == pytest.approx(6 / 9)
    # Precision at each positive, ranked by risk: 1/1, 2/3, 3/5.
    assert m["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.64 + 0.09 + 0.01) / 6)
    assert m["prevalence"] == 0.5 and m["mean_predicted"] == pytest.approx(3.25 / 6)


def test_one_class_gives_nan_not_an_error():
    m = metrics.point_metrics(np.zeros(4, bool), np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.isnan(m["auroc"]) and np.isnan(m["auprc"]) and m["brier"] == pytest.approx(0.075)


def test_bootstrap_is_seeded_and_resamples_subjects_not_rows():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    subjects = np.arange(300)
    a = metrics.bootstrap_ci(y, p, subjects, n_boot=100, seed=5)
    assert a == metrics.bootstrap_ci(y, p, subjects, n_boot=100, seed=5)
    point = metrics.point_metrics(y, p)
    assert a["auroc"][0] < point["auroc"] < a["auroc"][1]
    # Each subject seen twice: a patient bootstrap gives exactly the same interval,
    # where a row bootstrap would wrongly narrow it.
    doubled = metrics.bootstrap_ci(np.repeat(y, 2), np.repeat(p, 2), np.repeat(subjects, 2), n_boot=100, seed=5)
    assert doubled["auroc"] == pytest.approx(a["auroc"]) and doubled["auprc"] == pytest.approx(a["auprc"])


def test_bootstrap_golden_three_replicates_by_hand():
    # Seed 0 draws these subject multiplicities for the 6-row case (one row per subject):
    rng = np.random.default_rng(0)
    draws = [np.bincount(rng.integers(0, 6, 6), minlength=6).tolist() for _ in range(3)]
    assert draws == [[1, 2, 0, 2, 0, 1], [2, 1, 0, 1, 1, 1], [0, 0, 0, 4, 1, 1]]
    # Replicate 1: the only positive drawn (row 5, 0.9) outranks all 5 negative draws: 1.
    # Replicate 2: positives 0.7 and 0.9 against negatives 0.1 (x2), 0.4, 0.8: 8 weighted
    #   pairs; 0.7 beats 3 and loses to 0.8, 0.9 beats 4: 7/8.
    # Replicate 3: positives 0.7 and 0.9 against 0.8 (x4): 0.9 wins 4 of 8 pairs: 1/2.
    # Percentiles of [0.5, 0.875, 1.0] (linear): 2.5% at position 0.05 -> 0.5 + 0.05 x
    # 0.375 = 0.51875; 97.5% at position 1.95 -> 0.875 + 0.95 x 0.125 = 0.99375.
    ci = metrics.bootstrap_ci(Y, P, np.arange(6), n_boot=3, seed=0, metrics=("auroc",))
    assert ci["auroc"] == pytest.approx((0.51875, 0.99375))


def test_calibration_curve_and_small_cell_suppression():
    p = np.linspace(0.01, 0.99, 220)
    y = p > 0.5
    curve = metrics.calibration_curve(y, p, bins=10)
    assert list(curve["bin"]) == list(range(1, 11))
    assert list(curve["n"]) == [22] * 10
    assert list(curve["events"]) == [0] * 5 + [22] * 5
    assert curve["mean_predicted"].iloc[0] == pytest.approx(p[:22].mean())
    assert list(curve["events"])[0] == 0 and isinstance(list(curve["events"])[0], int)
    # 100 rows, no event: deciles of 10 non-events would each be a small cell; from the
    # top down each boundary that leaves 10 merges into the group above, so groups of 20.
    small = metrics.calibration_curve(y[:100], p[:100], bins=10)
    assert list(small["n"]) == [20] * 5 and list(small["events"]) == [0] * 5
    assert small["mean_predicted"].iloc[0] == pytest.approx(p[:20].mean())
    # 5 events in all: the totals are withheld, and so is the table (one group, no numbers)
    rare = metrics.calibration_curve(np.r_[np.ones(5, bool), np.zeros(95, bool)], np.linspace(0.99, 0.01, 100))
    assert len(rare) == 1 and rare.iloc[0].to_dict() == {"bin": 1, "n": None, "events": None, "mean_predicted": None,
                                                          "observed": None}


def _deciles(events_per_bin: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """1,000 rows in ten deciles of 100 rows of rising risk, the first rows of each bin events."""
    p = np.linspace(0.001, 0.999, 1000)
    y = np.zeros(1000, bool)
    for b, e in enumerate(events_per_bin):
        y[100 * b:100 * b + e] = True
    return y, p


def test_calibration_curve_merges_a_bin_that_subtraction_would_give_back():
    # Bin 9 holds 5 events. The held-out total (45) is published, so bin 10's 40 would
    # give bin 9's 5 back: the boundary between them is dropped, and bins 9 and 10 are
    # one group of 200 rows and 45 events; the other deciles are shown as they are.
    curve = metrics.calibration_curve(*_deciles([0] * 8 + [5, 40]))
    assert list(curve["n"]) == [100] * 8 + [200]
    assert list(curve["events"]) == [0] * 8 + [45]
    assert curve["observed"].iloc[-1] == pytest.approx(45 / 200)
    # Bin 10 holds 95 events and so 5 non-events: it merges with bin 9 (125 events, 75 not).
    curve = metrics.calibration_curve(*_deciles([20] * 8 + [30, 95]))
    assert list(curve["n"]) == [100] * 8 + [200]
    assert list(curve["events"]) == [20] * 8 + [125]
    # Bin 8's 6 and bin 9's 7 events: the boundary between them goes, and the group of
    # both (13 events) stands beside bin 10's 40.
    curve = metrics.calibration_curve(*_deciles([0] * 7 + [6, 7, 40]))
    assert list(curve["n"]) == [100] * 7 + [200, 100]
    assert list(curve["events"]) == [0] * 7 + [13, 40]


def test_calibration_bins_move_to_a_published_operating_point_rather_than_leave_a_small_band():
    # The threshold table already shows the 85 highest risks (80 events, 5 non-events
    # would be a small cell, so: 70 events and 15 non-events). The top decile (100 rows)
    # holds 4 more events and 11 more non-events: the band between them (4 events) would
    # come back by subtraction. The decile's boundary moves to the published cut-off,
    # so the top group is those 85 rows; the next boundary (200 rows) is 11+ away.
    y = np.zeros(1000, bool)
    y[[*range(70), *range(85, 89), *range(100, 130)]] = True
    p = np.linspace(0.999, 0.001, 1000)
    ledger = privacy.Cutoffs(y, p)
    assert ledger.add(85) and ledger.counts(85) == (70, 15)
    curve = metrics.calibration_curve(y, p, cutoffs=ledger)
    assert list(curve["n"])[-3:] == [100, 115, 85]
    assert list(curve["events"])[-3:] == [0, 34, 70]
    assert ledger.kept[:4] == [0, 85, 200, 300]  # the bins' boundaries joined the ledger
    # Without the published cut-off the deciles stand as they are.
    plain = metrics.calibration_curve(y, p)
    assert list(plain["n"]) == [100] * 10 and list(plain["events"])[-2:] == [30, 74]


def test_evaluate_record_suppresses_small_counts_and_withholds_their_metrics():
    rec = metrics.evaluate(Y, P, np.arange(6), n_boot=20, seed=0)
    assert rec["n"] is None and rec["events"] is None and rec["subjects"] is None and rec["prevalence"] is None
    # 3 events: AUROC x 3 x n_non-events is a multiple of 1/2, so with the size it would give 3 back
    assert rec["withheld"] is True
    assert all(rec[k] is None for k in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low",
                                        "auprc_ci_high", "brier", "mean_predicted"))
    # a development measurement on synthetic data may keep them
    kept = metrics.evaluate(Y, P, np.arange(6), n_boot=20, seed=0, min_cell=1)
    assert kept["withheld"] is False and kept["auroc"] == pytest.approx(6 / 9) and kept["n"] == 6 and kept["events"] == 3


@pytest.mark.parametrize(("events", "non_events", "withheld"),
                         [(4, 5000, True), (10, 30, True), (30, 10, True), (11, 11, False), (0, 40, False)])
def test_metrics_are_withheld_with_1_to_10_events_or_non_events(events, non_events, withheld):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(events, bool), np.zeros(non_events, bool)]
    p = rng.random(y.size)
    rec = metrics.evaluate(y, p, np.arange(y.size), n_boot=10, seed=0)
    assert rec["withheld"] is withheld
    assert (rec["brier"] is None) is withheld
    # the counts shown never give a small one back: with 1..10 non-events the events go
    assert (rec["n"], rec["events"], rec["few_non_events"]) == {
        (4, 5000): (5004, None, False), (10, 30): (40, None, False), (30, 10): (40, None, True),
        (11, 11): (22, 11, False), (0, 40): (40, 0, False)}[events, non_events]
    if not withheld and events:
        assert rec["auroc"] == pytest.approx(metrics.point_metrics(y, p)["auroc"])


@pytest.mark.parametrize(("count", "kept"), [(0, 0), (1, None), (10, None), (11, 11), (5000, 5000), (None, None)])
def test_suppress(count, kept):
    assert privacy.suppress(count) == kept
    assert privacy.shown(count) == ("<11" if kept is None else f"{kept:,}")


def test_suppress_parts_withholds_a_part_that_would_give_a_small_one_away():
    # read 520 = kept 515 + quarantined 5: the 5 is suppressed and 515 would give it
    # back by subtraction, so both go.
    assert privacy.suppress_parts([515, 5]) == [None, None]
    assert privacy.suppress_parts([500, 40, 200]) == [500, 40, 200]
    assert privacy.suppress_parts([3, 4, 200, 300]) == [None, None, None, 300]  # 3 + 4 < 11
    assert privacy.suppress_parts([0, 5, 100, 30]) == [0, None, 100, None]
    assert privacy.suppress_parts([5, 0]) == [None, 0]  # nothing left to hide


def test_which_parts_are_withheld_beside_small_ones_does_not_depend_on_their_values():
    """A reader who knows the rule could read the small parts' sum from whether a part was
    withheld beside them: 5 + 4 needs one (the sum less 1 leaves 8 at most), 6 + 5 did not
    (until session 42), so a withheld 300 said each "<11" was 9 or fewer. One part at least
    is withheld beside any small one now, so every pair of small values reads alike."""
    patterns = {tuple(privacy.suppress_parts([a, b, 300, 400])) for a in range(1, 11) for b in range(1, 11)}
    assert patterns == {(None, None, None, 400)}
    assert privacy.suppress_parts([6, 5, 300, 400]) == [None, None, None, 400]
    # parts hidden for another reason only (forced) are not small: nothing goes beside them
    # that their pinning does not ask for
    assert privacy.withhold([20, 30, 300, 400], force=(0, 1))[0] == set()


def test_a_withheld_part_known_to_be_11_or_more_cannot_pin_a_small_one():
    # 1 + 11 + 500: the 1 is "<11"; withholding the 11 beside it leaves a hidden sum of
    # 12, and a reader who knows a "withheld" part is 11 or more gets 12 - 11 = 1 back.
    # So the 500 goes too.
    assert privacy.suppress_parts([1, 11, 500]) == [None, None, None]
    # 5 + 30 + 500: the hidden sum 35 leaves the 5 anywhere in 1..10 (and the 30 in 25..34).
    assert privacy.suppress_parts([5, 30, 500]) == [None, None, 500]
    # Two "<11" parts that add up to 20 are both 10: a third part goes.
    assert privacy.suppress_parts([10, 10, 300, 400]) == [None, None, None, 400]
    # A floor the reader knows (a subgroup level shown as not suppressed has 22 or more
    # rows): 4 + 25 hides the 4 only as 1..7 with the floor, so another part goes.
    assert privacy.suppress_parts([4, 25, 300]) == [None, None, 300]
    assert privacy.suppress_parts([4, 25, 300], floors={1: 22}) == [None, None, None]


def _reader_range(parts, hidden, labels, floors):
    """Every value a reader can give hidden part ``i``: brute force over the hidden
    parts' values that fit the labels and add up to the known hidden sum."""
    import itertools

    total = sum(parts[i] for i in hidden)
    ranges = []
    for i in hidden:
        low = floors.get(i, 0) if labels[i] == "force" else max(floors.get(i, 0), 11 if labels[i] == "withheld" else 1)
        high = 10 if labels[i] == "<11" else total
        ranges.append(range(low, high + 1))
    seen = {i: set() for i in hidden}
    for combo in itertools.product(*ranges):
        if sum(combo) == total:
            for i, v in zip(hidden, combo, strict=True):
                seen[i].add(v)
    return seen


@pytest.mark.parametrize("seed", range(80))
def test_complementary_leaves_every_small_hidden_part_its_range(seed):
    # Random small tables, some parts forced away; a brute-force reader who knows the
    # hidden sum and each label (<11, withheld, forced) can neither pin a small part nor
    # rule out 10 for it, nor pin a forced part; and where that cannot be had by
    # withholding alone, withhold says so.
    rng = np.random.default_rng(seed)
    parts = [int(v) for v in rng.choice([0, 1, 2, 5, 9, 10, 11, 12, 15, 22, 30], size=int(rng.integers(2, 6)))]
    force = tuple(i for i in range(len(parts)) if rng.random() < 0.2)
    floors = {i: 22 for i in range(len(parts)) if parts[i] >= 22 and rng.random() < 0.5}
    extra, exposed = privacy.withhold(parts, force=force, floors=floors)
    labels = {i: "force" if i in force else "withheld" if i in extra else "<11" for i in range(len(parts))}
    hidden = [i for i in range(len(parts)) if i in force or i in extra or privacy.suppress(parts[i]) is None]
    if not hidden:
        assert not exposed
        return
    seen = _reader_range(parts, hidden, labels, floors)
    safe = all((i not in force or len(seen[i]) > 1)
               and (not 0 < parts[i] < 11 or (len(seen[i]) > 1 and max(seen[i]) >= 10)) for i in hidden)
    assert safe is not exposed, (parts, force, floors, extra, seen)
    if exposed:  # only once every non-zero part is withheld
        assert all(i in hidden for i in range(len(parts)) if parts[i])


def test_rank_metrics_match_scikit_learn_with_ties_and_weights():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(7)
    y = rng.random(400) < 0.2
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1), 2)  # rounded: many ties
    weights = rng.integers(0, 3, size=(5, 400)).astype(float)
    got = metrics.rank_metrics(y, p, weights)
    for k, w in enumerate(weights):
        assert got["auroc"][k] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
        assert got["auprc"][k] == pytest.approx(average_precision_score(y, p, sample_weight=w), abs=1e-12)
    one_class = metrics.rank_metrics(y, p, np.where(y, 0.0, 1.0)[None, :])
    assert np.isnan(one_class["auroc"][0]) and np.isnan(one_class["auprc"][0])


def test_forced_parts_count_towards_the_exposed_sum():
    # Two levels hidden for too few people hold 3 + 4 = 7 events: the total minus the
    # shown ones would give 7 back, so the smallest shown level goes too.
    assert privacy.suppress_parts([3, 4, 22, 31], force=(0, 1)) == [None, None, None, 31]
    # 15 + 20 events in hidden levels: their sum is not small, nothing more is withheld.
    assert privacy.suppress_parts([15, 20, 22, 31], force=(0, 1)) == [None, None, 22, 31]


def _site(name: str, logit: float, se: float) -> dict:
    """A site whose AUROC is expit(logit), its 95% CI expit(logit ± z se)."""
    z = 1.959963984540054
    expit = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    return {"site": name, "auroc": expit(logit), "auroc_ci_low": expit(logit - z * se), "auroc_ci_high": expit(logit + z * se)}


def test_between_sites_golden_two_sites():
    """By hand, on the logit scale: estimates 1.0 and 1.3, standard errors 0.1 and 0.2.
    Fixed-effect weights 100 and 25: mean (100 + 32.5) / 125 = 1.06; Q = 100 * 0.06² +
    25 * 0.24² = 0.36 + 1.44 = 1.8 on 1 df; I² = (1.8 - 1) / 1.8 = 4/9; DerSimonian-Laird
    tau² = 0.8 / (125 - (100² + 25²) / 125) = 0.8 / 40 = 0.02; random-effects weights
    1 / 0.03 and 1 / 0.06, mean (33.3 * 1.0 + 16.7 * 1.3) / 50 = 1.1, standard error
    1 / sqrt(50). Two sites give no prediction interval (it needs 3)."""
    import math

    got = metrics.between_sites([_site("academic", 1.0, 0.1), _site("community", 1.3, 0.2)])
    expit = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    z = 1.959963984540054
    assert got["sites"] == ["academic", "community"]
    assert got["auroc_min"] == pytest.approx(expit(1.0)) and got["auroc_max"] == pytest.approx(expit(1.3))
    assert got["q"] == pytest.approx(1.8)
    assert got["q_p"] == pytest.approx(math.erfc(math.sqrt(1.8 / 2)))  # chi² on 1 df
    assert got["i2"] == pytest.approx(4 / 9)
    assert got["tau2"] == pytest.approx(0.02)
    assert got["pooled_auroc"] == pytest.approx(expit(1.1))
    assert got["pooled_ci_low"] == pytest.approx(expit(1.1 - z / math.sqrt(50)))
    assert got["pooled_ci_high"] == pytest.approx(expit(1.1 + z / math.sqrt(50)))
    assert got["prediction_low"] is None and got["prediction_high"] is None


def test_between_sites_alike_sites_and_prediction_interval():
    """Three sites with the same estimate (logit 1.0, standard error 0.3 each): Q = 0,
    I² = 0, tau² = 0, the pooled standard error 0.3 / sqrt(3), and the prediction interval
    1.0 ± t(1 df, 0.975) * 0.3 / sqrt(3), t = 12.706."""
    import math

    got = metrics.between_sites([_site(s, 1.0, 0.3) for s in ("a", "b", "c")])
    expit = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert got["q"] == pytest.approx(0, abs=1e-12) and got["i2"] == 0 and got["tau2"] == 0
    assert got["pooled_auroc"] == pytest.approx(expit(1.0))
    half = 12.706204736174698 * 0.3 / math.sqrt(3)
    assert got["prediction_low"] == pytest.approx(expit(1.0 - half))
    assert got["prediction_high"] == pytest.approx(expit(1.0 + half))


def test_between_sites_leaves_out_withheld_sites():
    """A site whose metrics are withheld (or whose CI is missing) does not count; fewer
    than 2 usable sites give nothing."""
    usable = _site("academic", 1.0, 0.1)
    assert metrics.between_sites([usable, {"site": "community", "auroc": None, "withheld": True}]) is None
    assert metrics.between_sites([usable, dict(_site("b", 1.2, 0.1), withheld=True)]) is None
    assert metrics.between_sites([usable, dict(_site("b", 1.2, 0.1), auroc_ci_low=None)]) is None
    assert metrics.between_sites([usable, _site("b", 1.2, 0.1)])["sites"] == ["academic", "b"]


def test_paired_difference_of_a_4_row_case_by_hand():
    # new ranks every event above every non-event (AUROC 1); old puts the event at 0.2
    # below the non-event at 0.3: 3 of 4 pairs in order, AUROC 0.75. Difference 0.25.
    y = np.array([1, 1, 0, 0])
    new, old = np.array([0.9, 0.8, 0.3, 0.1]), np.array([0.9, 0.2, 0.3, 0.1])
    d = metrics.paired_difference(y, new, old, np.arange(4), n_boot=50, seed=0)
    assert d["difference"] == 0.25
    assert 0 <= d["ci_low"] <= d["ci_high"] <= 1  # a draw can lose the misranked pair, never reverse it


def test_paired_difference_of_equal_rankings_is_exactly_zero_where_marginal_intervals_are_wide():
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.2
    p = np.clip(0.2 + 0.3 * y + rng.normal(0, 0.25, 400), 0, 1)
    subjects = np.repeat(np.arange(200), 2)
    assert metrics.paired_difference(y, p, p ** 2, subjects, n_boot=100) == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    low, high = metrics.bootstrap_ci(y, p, subjects, n_boot=100)["auroc"]
    assert high - low > 0.05


def test_paired_difference_equals_a_replicate_by_replicate_loop():
    """The interval is the percentiles of (new - old) scored on the same patient draw."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.3
    new = 1 / (1 + np.exp(-(y + rng.normal(0, 0.8, 300))))  # probabilities: point_metrics takes a Brier score too
    old = 1 / (1 + np.exp(-(y + rng.normal(0, 1.0, 300))))
    subjects = np.arange(300) // 3  # 3 rows a subject
    d = metrics.paired_difference(y, new, old, subjects, n_boot=60, seed=2, metric="auroc")
    diffs = []
    for w in metrics.bootstrap_weights(subjects, n_boot=60, seed=2):
        for row in w:
            keep = row > 0
            diffs.append(roc_auc_score(y[keep], new[keep], sample_weight=row[keep])
                         - roc_auc_score(y[keep], old[keep], sample_weight=row[keep]))
    assert d["difference"] == pytest.approx(roc_auc_score(y, new) - roc_auc_score(y, old))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((np.quantile(diffs, 0.025), np.quantile(diffs, 0.975)))


def test_paired_difference_refuses_mismatched_rows_and_unknown_metrics():
    with pytest.raises(ValueError, match="must be one non-empty row each; got 3, 3, 2 and 3 rows"):
        metrics.paired_difference(np.array([1, 0, 1]), np.ones(3), np.ones(2), np.arange(3))
    with pytest.raises(ValueError, match="metric must be 'auroc' or 'auprc'; got 'brier'"):
        metrics.paired_difference(np.array([1, 0]), np.ones(2), np.ones(2), np.arange(2), metric="brier")


def test_model_based_concordance_of_three_risks_by_hand():
    """p = 0.2, 0.5, 0.8: the six ordered pairs (event i, non-event j) weigh p_i (1 - p_j):
    0.4, 0.64 and 0.4 where i's risk is the higher, 0.1, 0.04 and 0.1 where it is the
    lower; 1.44 / 1.68 = 6/7."""
    from forewarn.evaluation.metrics import model_based_concordance

    assert model_based_concordance(np.array([0.5, 0.8, 0.2])) == pytest.approx(6 / 7, abs=1e-12)
    # ties count half: two rows at 0.5 order each other half the time
    assert model_based_concordance(np.array([0.5, 0.5])) == pytest.approx(0.5, abs=1e-12)
    assert np.isnan(model_based_concordance(np.array([0.3])))


def test_model_based_concordance_matches_every_pair_and_the_auroc_of_outcomes_drawn_from_the_risks():
    from forewarn.evaluation.metrics import model_based_concordance

    rng = np.random.default_rng(5)
    p = np.round(rng.beta(1, 6, 300), 2)  # rounded: many ties
    i, j = np.meshgrid(np.arange(p.size), np.arange(p.size), indexing="ij")
    w = (p[i] * (1 - p[j]))[i != j]
    order = np.sign(p[i] - p[j])[i != j]
    assert model_based_concordance(p) == pytest.approx(np.sum(w * (order + 1) / 2) / np.sum(w), abs=1e-12)
    # outcomes drawn from the risks give, on average, the model-based AUROC
    big = rng.beta(1, 6, 200_000)
    y = rng.random(big.size) < big
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, big) == pytest.approx(model_based_concordance(big), abs=0.005)


def test_paired_differences_of_two_metrics_are_each_ones_own_bootstrap():
    """One bootstrap for AUROC and AUPRC together gives what one each gives (the same draws)."""
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    p_old, p_new = rng.random(300), np.clip(0.4 * y + 0.6 * rng.random(300), 0, 1)
    subjects = np.repeat(np.arange(150), 2)
    both = metrics.paired_differences(y, p_new, p_old, subjects, n_boot=40, seed=2, level=0.9)
    for m in ("auroc", "auprc"):
        assert both[m] == metrics.paired_difference(y, p_new, p_old, subjects, n_boot=40, seed=2, level=0.9, metric=m)
    with pytest.raises(ValueError, match="metric must be 'auroc' or 'auprc'; got 'brier'"):
        metrics.paired_differences(y, p_new, p_old, subjects, metrics=("auroc", "brier"))


def test_recalibrated_risks_are_averaged_over_the_shipped_groups_not_cut_anew():
    """``metrics.calibration_on_groups``: a second set of risks over the groups of the
    first (same rows, counts and observed rates), so it publishes no cut-off of its own;
    here the second ties rows 1-2 and 3-4 that the first keeps apart."""
    import pandas as pd

    from forewarn.evaluation.metrics import calibration_on_groups as on_groups

    y = np.array([0, 1, 0, 0, 1, 1])
    reference = np.array([0.9, 0.1, 0.5, 0.2, 0.6, 0.8])  # lowest first: rows 1, 3, 2, 4, 5, 0
    curve = pd.DataFrame({"bin": [1, 2], "n": [3, 3], "events": [1, 2], "mean_predicted": [0.8 / 3, 2.3 / 3],
                          "observed": [1 / 3, 2 / 3]}, dtype=object)
    recalibrated = np.array([0.7, 0.2, 0.2, 0.3, 0.7, 0.7])
    out = on_groups(y, recalibrated, reference, curve)
    assert out["n"].tolist() == [3, 3] and out["events"].tolist() == [1, 2] and out["observed"].tolist() == [1 / 3, 2 / 3]
    assert out["mean_predicted"].tolist() == pytest.approx([(0.2 + 0.3 + 0.2) / 3, (0.7 + 0.7 + 0.7) / 3])
    with pytest.raises(ValueError, match="the groups do not match the reference ranking's rows"):
        on_groups(y, recalibrated, np.array([0.1, 0.9, 0.2, 0.3, 0.8, 0.7]), curve)  # events 0 and 3 by these groups
