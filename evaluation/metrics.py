"""Discrimination and calibration as plain records.

Confidence intervals come from a patient-level bootstrap: subjects are resampled with
replacement and every prediction time of a drawn subject comes along with it (as a
row weight equal to how often the subject was drawn), so subjects with several
prediction times do not shrink the intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from forewarn.models.train import ranked_scores
from forewarn.records import privacy

METRIC_NAMES = ("auroc", "auprc", "brier", "prevalence", "mean_predicted")


def point_metrics(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> dict[str, float]:
    y = np.asarray(y, bool)
    p = np.asarray(p, float)
    both = y.any() and (~y).any()
    return {
        "auroc": float(roc_auc_score(y, p, sample_weight=weight)) if both else float("nan"),
        "auprc": float(average_precision_score(y, p, sample_weight=weight)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p, sample_weight=weight)),
        "prevalence": float(np.average(y, weights=weight)),
        "mean_predicted": float(np.average(p, weights=weight)),
    }


def rank_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted AUROC and AUPRC (average precision) for each row of ``weights`` at once.

    ``weights`` is (replicates, rows). The rows are sorted by risk once and tied risks
    form one group (``models.train.ranked_scores``), so each replicate costs a few passes
    over the groups instead of a sort; the values equal scikit-learn's
    ``roc_auc_score`` and ``average_precision_score`` with ``sample_weight`` (tested).
    NaN where a replicate drew one class.
    """
    y = np.asarray(y, bool)
    p = np.asarray(p, float)
    w = np.atleast_2d(np.asarray(weights, float))
    order = np.argsort(-p, kind="stable")
    sorted_p = p[order]
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    w, ys = w[:, order], y[order]
    return ranked_scores(w * ys, w * ~ys, starts)


def bootstrap_weights(subjects: np.ndarray, *, n_boot: int, seed: int = 0):
    """Patient-level bootstrap replicates as row weights, in batches of (replicates, rows):
    each replicate draws the subjects with replacement, and a drawn subject's rows come
    along with a weight equal to how often it was drawn. A batch holds at most 1,000,000
    weights (rank_metrics keeps about ten such float arrays: near 80 MB whatever the rows)."""
    uniq, row_subject = np.unique(np.asarray(subjects), return_inverse=True)
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_boot, 1_000_000 // max(1, row_subject.size)))
    done = 0
    while done < n_boot:
        size = min(batch, n_boot - done)
        yield np.stack([
            np.bincount(rng.integers(0, uniq.size, uniq.size), minlength=uniq.size)[row_subject].astype(float)
            for _ in range(size)
        ])
        done += size


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    subjects: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    metrics: tuple[str, ...] = ("auroc", "auprc"),
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``metrics`` over ``n_boot`` patient-level resamples.

    Each replicate draws subjects with replacement; a drawn subject's rows come along
    with a weight equal to how often it was drawn. Replicates in which only one class
    was drawn are skipped for rank metrics. AUROC and AUPRC are computed for a batch of
    replicates at once (:func:`rank_metrics`); other metrics of :func:`point_metrics`
    one replicate at a time.
    """
    y = np.asarray(y, bool)
    p = np.asarray(p, float)
    draws: dict[str, list[float]] = {m: [] for m in metrics}
    ranked = [m for m in metrics if m in ("auroc", "auprc")]
    others = [m for m in metrics if m not in ranked]
    if y.size == 0:
        raise ValueError("y, p and subjects must not be empty; got 0 rows.")
    for w in bootstrap_weights(subjects, n_boot=n_boot, seed=seed):
        if ranked:
            values = rank_metrics(y, p, w)
            for m in ranked:
                draws[m].extend(float(v) for v in values[m] if not np.isnan(v))
        for row in w if others else ():
            keep = row > 0
            point = point_metrics(y[keep], p[keep], row[keep])
            for m in others:
                if not np.isnan(point[m]):
                    draws[m].append(point[m])
    alpha = (1 - level) / 2
    return {
        m: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if v else (float("nan"), float("nan"))
        for m, v in draws.items()
    }


def paired_difference(
    y: np.ndarray,
    p_new: np.ndarray,
    p_old: np.ndarray,
    subjects: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    metric: str = "auroc",
) -> dict[str, float]:
    """``metric`` (AUROC or AUPRC) of ``p_new`` minus that of ``p_old`` on the same rows,
    with a percentile interval over patient-level resamples that score both on the same
    draw (:func:`bootstrap_weights`), so what the two rankings share cancels: two equal
    rankings give 0 (0 to 0), while one model's own interval is as wide as ever (the
    marginal rule compares its lower bound with the other's point estimate). Replicates
    that drew one class are skipped."""
    return paired_differences(y, p_new, p_old, subjects, n_boot=n_boot, seed=seed, level=level, metrics=(metric,))[metric]


def paired_differences(
    y: np.ndarray,
    p_new: np.ndarray,
    p_old: np.ndarray,
    subjects: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    metrics: tuple[str, ...] = ("auroc", "auprc"),
) -> dict[str, dict[str, float]]:
    """:func:`paired_difference` for several metrics from one bootstrap (the same draws,
    so each is what :func:`paired_difference` gives for it alone)."""
    bad = [m for m in metrics if m not in ("auroc", "auprc")]
    if bad or not metrics:
        raise ValueError(f"metric must be 'auroc' or 'auprc'; got {bad[0] if bad else 'none'!r}.")
    y = np.asarray(y, bool)
    p_new, p_old = np.asarray(p_new, float), np.asarray(p_old, float)
    if not (y.size == p_new.size == p_old.size == np.asarray(subjects).size) or y.size == 0:
        raise ValueError(f"y, p_new, p_old and subjects must be one non-empty row each; got {y.size}, {p_new.size}, "
                         f"{p_old.size} and {np.asarray(subjects).size} rows.")
    draws: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for w in bootstrap_weights(subjects, n_boot=n_boot, seed=seed):
        new, old = rank_metrics(y, p_new, w), rank_metrics(y, p_old, w)
        for m in metrics:
            d = new[m] - old[m]
            draws[m].append(d[~np.isnan(d)])
    alpha = (1 - level) / 2
    point_new, point_old = point_metrics(y, p_new), point_metrics(y, p_old)
    out = {}
    for m in metrics:
        values = np.concatenate(draws[m])
        point = point_new[m] - point_old[m]
        out[m] = ({"difference": point, "ci_low": float("nan"), "ci_high": float("nan")} if values.size == 0 else
                  {"difference": point, "ci_low": float(np.quantile(values, alpha)),
                   "ci_high": float(np.quantile(values, 1 - alpha))})
    return out


def model_based_concordance(p: np.ndarray) -> float:
    """The AUROC that rows with these predicted risks would give if the risks were right
    (the model-based concordance of van Klaveren et al. 2016; OHDSI PatientLevelPrediction's
    ``modelBasedConcordance``): over every ordered pair of rows, row i the event and row j
    the non-event with probability ``p_i (1 - p_j)``, the share of that weight on pairs the
    risks order correctly (ties count half). It reads no outcome: it measures how far apart
    the case mix lets the model's risks be. At an external site, a lower AUROC beside an
    equally lower model-based one is the narrower case mix there; a lower AUROC alone is
    the model doing worse. O(n log n) by cumulative sums over the sorted risks. NaN for
    fewer than two rows."""
    p = np.asarray(p, float).ravel()
    if p.size < 2:
        return float("nan")
    values, counts = np.unique(p, return_counts=True)
    non_event = counts * (1.0 - values)  # each value's total weight as the non-event
    below = np.concatenate([[0.0], np.cumsum(non_event)[:-1]])  # sum of (1 - p_j) over p_j strictly below
    # i as the event: its weight p_i times (the non-events below it + half the other tied rows')
    concordant = np.sum(counts * values * (below + 0.5 * (counts - 1) * (1.0 - values)))
    total = p.sum() * (1.0 - p).sum() - np.sum(p * (1.0 - p))
    return float(concordant / total) if total > 0 else float("nan")


def calibration_curve(y: np.ndarray, p: np.ndarray, *, bins: int = 10, cutoffs: privacy.Cutoffs | None = None) -> pd.DataFrame:
    """Observed rate against mean predicted risk in ``bins`` groups of rows by predicted
    risk (deciles by default), from the lowest risk up.

    The groups are quantile bins of ``p`` (tied risks share one), but this table leaves
    the site beside other numbers of the same ranking: its rows and events add up to the
    published held-out totals, and the threshold table, decision curve and ROC curve
    publish the events and non-events above other cut-offs of the same risks. So each
    bin boundary is a cut-off of the ledger ``cutoffs`` (:class:`privacy.Cutoffs`, a new
    one by default; ``p`` or any monotone transformation of the risks it was built on):
    from the highest risk down, a boundary the ledger admits joins it; one it does not
    admit (it would leave a band of 1..10 events or non-events beside a published
    cut-off) moves to the nearer of the published cut-offs around it, or is dropped
    (its two bins merge) when that one is already a boundary. Every group's rows,
    events and non-events are then 0 or at least 11, and so is every band between a
    boundary and another published cut-off. ``bin`` numbers the groups from 1; ``n``
    gives each group's size, which may be other than a tenth. With 1..10 events or
    non-events in all (the totals withheld) there is one group, withheld (``n``,
    ``events`` and both rates null).
    """
    y = np.asarray(y, bool)
    p = np.asarray(p, float)
    ledger = privacy.Cutoffs(y, p) if cutoffs is None else cutoffs
    order = np.argsort(-p, kind="stable")
    descending, ys = p[order], y[order]
    n = int(y.size)
    if not ledger.open or n == 0:
        return pd.DataFrame([{"bin": 1, "n": None, "events": None, "mean_predicted": None, "observed": None}], dtype=object)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))[1:-1]
    # the rows at or above each inner edge, from the highest edge down (k rising)
    wanted = [int(np.searchsorted(-descending, -e, side="right")) for e in edges[::-1]]
    bounds = [0]
    for k in wanted:
        if k <= bounds[-1] or k >= n:
            continue
        if ledger.add(k):
            bounds.append(k)
            continue
        low, high = ledger.neighbours(k)
        near = low if k - low <= high - k else high
        if bounds[-1] < near < n:
            bounds.append(near)
    bounds.append(n)
    records = []
    for b, (lo, hi) in enumerate(zip(bounds[-2::-1], bounds[:0:-1], strict=True)):
        rows = slice(lo, hi)
        records.append({"bin": b + 1, "n": hi - lo, "events": int(ys[rows].sum()),
                        "mean_predicted": float(descending[rows].mean()), "observed": float(ys[rows].mean())})
    # object dtype keeps suppressed cells as None (JSON null), not NaN.
    return pd.DataFrame(records, dtype=object)



def calibration_on_groups(y, p, reference: np.ndarray, curve: pd.DataFrame) -> pd.DataFrame:
    """``curve`` (``metrics.calibration_curve`` of ``reference``'s risks, from the lowest
    risk up) with each group's mean predicted risk taken from ``p`` instead: the same
    rows, counts and observed rates, so no cut-off of ``p``'s own ranking is published
    (where ``p`` ties rows that ``reference`` keeps apart, or the other way round, its
    own groups could leave a band of 1..10 events beside the published ones)."""
    out = curve.copy()
    if out["n"].isna().any():  # withheld: nothing to take
        return out
    order = np.argsort(np.asarray(reference, float), kind="stable")  # lowest risk first, as the groups run
    p = np.asarray(p, float)[order]
    ends = np.cumsum(out["n"].astype(int).to_numpy())
    if ends[-1] != p.size or not np.array_equal(out["events"].astype(int).to_numpy(),
                                                np.add.reduceat(np.asarray(y, bool)[order].astype(int),
                                                                np.r_[0, ends[:-1]])):
        raise ValueError("the groups do not match the reference ranking's rows; pass the risks the curve was drawn "
                         "from as reference.")
    out["mean_predicted"] = [float(v.mean()) for v in np.split(p, ends[:-1])]
    return out

def evaluate(
    y: np.ndarray, p: np.ndarray, subjects: np.ndarray, *, n_boot: int = 200, seed: int = 0,
    min_cell: int = privacy.MIN_CELL,
) -> dict[str, float | int | bool | None]:
    """The metric record for one model on one evaluation set, as it may leave the site.

    Counts are suppressed below ``min_cell`` (11). With 1..10 events or non-events every
    metric is withheld too (None) and ``withheld`` is True: an AUROC times the number of
    event/non-event pairs is a multiple of one half, so the AUROC and the set's size give
    a small count back, and the ROC curve's steps show it; with so few events the
    metrics could not be judged anyway. With 1..10 non-events the events are withheld
    (``few_non_events`` True), since the rows less the events would give them back.
    ``min_cell=1`` keeps every number (only for
    development measurements on synthetic data, as in ``benchmarks/``).
    """
    y = np.asarray(y, bool)
    n, events = int(y.size), int(y.sum())
    withheld = 0 < events < min_cell or 0 < n - events < min_cell
    if withheld:
        record: dict[str, float | int | bool | None] = {metric: None for metric in METRIC_NAMES}
        for metric in ("auroc", "auprc"):  # bootstrap_ci's default metrics
            record[f"{metric}_ci_low"] = record[f"{metric}_ci_high"] = None
    else:
        record = dict(point_metrics(y, p))
        for metric, (low, high) in bootstrap_ci(y, p, subjects, n_boot=n_boot, seed=seed).items():
            record[f"{metric}_ci_low"] = low
            record[f"{metric}_ci_high"] = high
    few_non_events = privacy.suppress(n - events, min_cell=min_cell) is None
    record["n"] = privacy.suppress(n, min_cell=min_cell)
    # With 1..10 non-events the rows less the events would give them back: the events go.
    record["events"] = None if few_non_events else privacy.suppress(events, min_cell=min_cell)
    record["few_non_events"] = few_non_events
    record["subjects"] = privacy.suppress(int(np.unique(subjects).size), min_cell=min_cell)
    if record["events"] is None or record["n"] is None:
        record["prevalence"] = None  # prevalence x n would give the suppressed count back
    record["withheld"] = withheld
    return record


# between_sites' numbers logged as MLflow metrics (``between_sites/<name>``) on the
# network model's registration run.
BETWEEN_SITES_METRICS = ("pooled_auroc", "pooled_ci_low", "pooled_ci_high", "auroc_min", "auroc_max", "q", "q_p", "i2",
                         "tau2", "prediction_low", "prediction_high")


def between_sites(sites: list[dict], *, level: float = 0.95) -> dict | None:
    """A model's AUROC across the sites it was validated at: the range, a pooled AUROC and
    how much the sites differ (a meta-analysis of the c-statistic on the logit scale, as
    Debray et al. 2017 and Riley et al. 2016 recommend for multi-site validation).

    ``sites``: one record per site with ``site``, ``auroc``, ``auroc_ci_low`` and
    ``auroc_ci_high`` (its bootstrap CI); sites whose AUROC or CI is missing, or whose
    metrics are withheld, are left out. A site's standard error on the logit scale is
    its CI's width there over 2 z. Fixed-effect weights 1/se² give Cochran's Q and I²;
    DerSimonian-Laird's between-site variance tau² gives the random-effects pooled
    AUROC and its CI (z), and, from 3 sites on, the prediction interval for a new site
    (t with k - 2 degrees of freedom: Higgins et al. 2009). Every input is an aggregate
    already published, so nothing here needs the rule of 11 again. None below 2 sites.
    """
    from scipy import stats

    def logit(a: float) -> float:
        return float(np.log(a / (1 - a)))

    def expit(x: float) -> float:
        return float(1 / (1 + np.exp(-x)))

    usable = [s for s in sites if not s.get("withheld")
              and all(s.get(k) is not None and np.isfinite(s[k]) and 0 < s[k] < 1
                      for k in ("auroc", "auroc_ci_low", "auroc_ci_high"))
              and s["auroc_ci_high"] > s["auroc_ci_low"]]
    k = len(usable)
    if k < 2:
        return None
    z = float(stats.norm.ppf(0.5 + level / 2))
    theta = np.array([logit(s["auroc"]) for s in usable])
    se = np.array([(logit(s["auroc_ci_high"]) - logit(s["auroc_ci_low"])) / (2 * z) for s in usable])
    w = 1 / se**2
    fixed = float(np.sum(w * theta) / np.sum(w))
    q = float(np.sum(w * (theta - fixed) ** 2))
    df = k - 1
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    tau2 = max(0.0, (q - df) / (np.sum(w) - np.sum(w**2) / np.sum(w)))
    w_re = 1 / (se**2 + tau2)
    pooled = float(np.sum(w_re * theta) / np.sum(w_re))
    se_pooled = float(1 / np.sqrt(np.sum(w_re)))
    prediction = None
    if k >= 3:
        half = float(stats.t.ppf(0.5 + level / 2, k - 2)) * float(np.sqrt(tau2 + se_pooled**2))
        prediction = (expit(pooled - half), expit(pooled + half))
    return {
        "sites": [s["site"] for s in usable],
        "auroc_min": float(min(s["auroc"] for s in usable)),
        "auroc_max": float(max(s["auroc"] for s in usable)),
        "pooled_auroc": expit(pooled),
        "pooled_ci_low": expit(pooled - z * se_pooled),
        "pooled_ci_high": expit(pooled + z * se_pooled),
        "q": q,
        "q_p": float(stats.chi2.sf(q, df)),
        "i2": float(i2),
        "tau2": float(tau2),
        "prediction_low": None if prediction is None else prediction[0],
        "prediction_high": None if prediction is None else prediction[1],
    }
