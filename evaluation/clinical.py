"""Clinical validation as plain records: calibration, operating points, net benefit,
lead time and subgroups (the set OHDSI PatientLevelPrediction reports for a validation).

Everything returns dicts or small object-dtype DataFrames of JSON-friendly values
(``None``, never NaN), because these records leave the site. The privacy rules:

- Every count goes through :func:`forewarn.records.privacy.suppress` (1..10 -> ``None``).
- A 2x2 table at one operating point (``tp``, ``fp``, ``fn``, ``tn``) is all or
  nothing: its margins (events, non-events, alerts) are published elsewhere, so one
  hidden cell could be recovered by subtraction. When any cell is 1..10, all four
  counts and every rate or net benefit computed from them are withheld.
- A set (the whole evaluation set, or one subgroup level) with 1..10 events or
  1..10 non-events yields no metrics at all; a subgroup level is also withheld when it
  has fewer than 11 subjects, fewer than 11 subjects with an event or fewer than 11
  subjects with a non-event (zero included: its metrics would be undefined anyway).
- Lead-time quantiles need at least 11 detected subjects; per-subject values are
  never returned. Minimum and maximum are reported above that count, as OHDSI's
  FeatureExtraction does for continuous covariates.

Thresholds flag ``p >= threshold`` everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from forewarn.evaluation import metrics
from forewarn.records import privacy

EPS = 1e-6
AGE_BANDS = ("<18", "18-39", "40-49", "50-59", "60-69", "70-79", "80+")
_AGE_EDGES = (18, 40, 50, 60, 70, 80)
DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# i / 100 is the float nearest the decimal, so 0.2 here == 0.2 in a test. The three
# below 1% are where a rare outcome's decisions sit (its prevalence is a fraction of 1%).
DEFAULT_NET_BENEFIT_THRESHOLDS = (0.001, 0.002, 0.005) + tuple(float(t) for t in np.arange(1, 51) / 100)


# --------------------------------------------------------------------------- checks


def _as_1d(values, name: str) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index):
        try:
            out = values.to_numpy(dtype=float, na_value=np.nan)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numeric; got dtype {str(values.dtype)!r}.") from None
    else:
        try:
            out = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            kind = np.asarray(values).dtype
            raise ValueError(f"{name} must be numeric; got dtype {str(kind)!r}.") from None
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {out.shape!r}.")
    return out


def _outside(values: np.ndarray) -> str:
    shown = [
        repr(int(v)) if float(v).is_integer() else repr(float(v)) for v in pd.unique(values)[:3]
    ]
    more = ", ..." if pd.unique(values).size > 3 else ""
    return ", ".join(shown) + more


def _check_y(y, name: str = "y") -> np.ndarray:
    y = _as_1d(y, name)
    bad = y[~np.isin(y, (0.0, 1.0))]
    if bad.size:
        raise ValueError(f"{name} must be 0/1 or boolean; got values outside: {_outside(bad)}.")
    return y.astype(bool)


def _check_p(p, name: str = "p") -> np.ndarray:
    p = _as_1d(p, name)
    bad = p[~((p >= 0) & (p <= 1))]  # NaN fails both comparisons
    if bad.size:
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got values outside: {_outside(bad)}."
        )
    return p


def _check_yp(y, p) -> tuple[np.ndarray, np.ndarray]:
    y, p = _check_y(y), _check_p(p)
    if y.size != p.size:
        raise ValueError(f"y and p must have the same length; got {y.size} and {p.size}.")
    if y.size == 0:
        raise ValueError("y and p must not be empty; got 0 rows.")
    return y, p


def _check_levels(
    values: Iterable[float], name: str, *, low: float, high: float, closed: str
) -> list[float]:
    """Floats within ``low``..``high``; ``closed`` is "both", "right" or "neither"."""
    out = [float(v) for v in np.atleast_1d(np.asarray(values, dtype=float))]
    ok = {
        "both": lambda v: low <= v <= high,
        "right": lambda v: low < v <= high,
        "neither": lambda v: low < v < high,
    }[closed]
    bad = [v for v in out if not ok(v)]
    if bad:
        interval = {
            "both": f"[{low:g}, {high:g}]",
            "right": f"({low:g}, {high:g}]",
            "neither": f"({low:g}, {high:g})",
        }
        raise ValueError(f"{name} must lie in {interval[closed]}; got {bad[0]!r}.")
    return out


def _check_columns(frame: pd.DataFrame, required: Sequence[str], name: str = "frame") -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}.")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} must have columns {list(required)!r}; got {list(map(str, frame.columns))!r} (missing {missing!r})."
        )


def _num(value) -> float | None:
    """A float for a record, ``None`` for a missing or undefined one."""
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def _shown(*counts: int) -> bool:
    """True when no count is suppressed (each is 0 or at least 11)."""
    return all(privacy.suppress(int(c)) is not None for c in counts)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


# ---------------------------------------------------------------------- calibration


def _logistic_fit(x: np.ndarray | None, y: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """Unpenalised logistic regression of ``y`` on ``[1, x]`` (intercept only when ``x`` is
    None) with ``offset``, by Newton-Raphson with step halving.

    ``None`` when the maximum likelihood estimate does not exist (one class, or
    separation) or the design is singular (``x`` constant).
    """
    X = np.ones((y.size, 1)) if x is None else np.column_stack([np.ones(y.size), x])
    yf = y.astype(float)

    def loglik(beta: np.ndarray) -> float:
        eta = X @ beta + offset
        return float(np.sum(yf * eta - np.logaddexp(0.0, eta)))

    beta = np.zeros(X.shape[1])
    ll = loglik(beta)
    for _ in range(100):
        mu = expit(X @ beta + offset)
        hessian = (X * (mu * (1 - mu))[:, None]).T @ X
        try:
            step = np.linalg.solve(hessian, X.T @ (yf - mu))
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(step)):
            return None
        scale = 1.0
        while True:
            ll_new = loglik(beta + scale * step)
            if ll_new >= ll - 1e-9 * max(1.0, abs(ll)):
                break
            if scale < 1e-8:  # no ascent left: at the optimum to rounding
                return beta if np.all(np.abs(beta) < 1e3) else None
            scale /= 2
        beta, ll = beta + scale * step, ll_new
        if np.max(np.abs(scale * step)) < 1e-9:
            return beta if np.all(np.abs(beta) < 1e3) else None
    return None


def _quantile_bins(p: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    """Bin index of each row in ``bins`` equal-frequency bins (the edges of
    :func:`forewarn.evaluation.metrics.calibration_curve`; tied risks share a bin)."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    nbins = max(edges.size - 1, 1)
    return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, nbins - 1), nbins


def expected_calibration_error(y, p, *, bins: int = 10) -> float:
    """Mean of ``|observed rate - mean predicted|`` over ``bins`` equal-frequency bins of
    ``p``, weighted by bin size, with no disclosure rule: a development measurement. A
    record's ECE (:func:`calibration_stats`) is over the published groups."""
    y, p = _check_yp(y, p)
    if bins < 1:
        raise ValueError(f"bins must be at least 1; got {bins!r}.")
    which, nbins = _quantile_bins(p, bins)
    n = np.bincount(which, minlength=nbins)
    observed = np.bincount(which, weights=y.astype(float), minlength=nbins)
    predicted = np.bincount(which, weights=p, minlength=nbins)
    keep = n > 0
    return float(np.sum(np.abs(observed[keep] - predicted[keep])) / y.size)


def curve_ece(curve) -> float | None:
    """Expected calibration error over the groups of a calibration curve
    (:func:`forewarn.evaluation.metrics.calibration_curve`'s records or frame): the mean of
    ``|observed rate - mean predicted|`` weighted by group size; None when the curve is
    withheld. Computed from the published groups, it gives nothing the curve does not: over
    the raw deciles a reader who knows the curve's other groups could solve the
    absolute difference for a decile whose boundary the disclosure ledger moved."""
    groups = pd.DataFrame(curve)
    if groups.empty or groups["n"].isna().any():
        return None
    n = groups["n"].to_numpy(float)
    gap = np.abs(groups["observed"].to_numpy(float) - groups["mean_predicted"].to_numpy(float))
    return float(np.sum(n * gap) / n.sum())


def _recalibration_fits(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The fits of ``logit P(y) = a + logit(p)`` (``a``: the calibration-in-the-large) and
    of ``logit P(y) = a + b logit(p)`` (``b``: the slope), each None without an estimate."""
    lp = logit(np.clip(p, EPS, 1 - EPS))
    citl = _logistic_fit(None, y, lp)
    return citl, (_logistic_fit(lp, y, np.zeros(y.size)) if np.ptp(lp) > 0 else None)


def _calibration(y: np.ndarray, p: np.ndarray, bins: int = 10, curve=None, *,
                 errors: bool = True) -> dict[str, float | None]:
    """Calibration statistics of checked inputs, not suppressed; the ECE over the groups
    of ``curve`` (the published calibration curve of these risks) or, without one, of
    ``metrics.calibration_curve`` with a ledger of its own; with ``errors``, the
    :func:`calibration_errors` too."""
    citl, slope_fit = _recalibration_fits(y, p)
    return ({} if not errors else calibration_errors(y, p)) | {
        "brier": float(np.mean((p - y) ** 2)),
        "calibration_in_the_large": None if citl is None else float(citl[0]),
        "calibration_slope": None if slope_fit is None else float(slope_fit[1]),
        "calibration_intercept": None if slope_fit is None else float(slope_fit[0]),
        "ece": curve_ece(metrics.calibration_curve(y, p, bins=bins) if curve is None else curve),
        "observed_rate": float(y.mean()),
        "mean_predicted": float(p.mean()),
    }


def calibration_in_brief(y, p) -> dict[str, float | None]:
    """The mean risk against the observed rate of ``y`` (``observed_to_expected``: their
    ratio, the O/E), the calibration-in-the-large and the calibration slope of
    :func:`calibration_stats`, with nothing suppressed: for a record that stays at the site,
    such as a worklist's follow-up. ``None`` where a value does not exist (no rows, a zero
    mean risk, a fit without an estimate)."""
    y, p = np.asarray(y, bool), np.asarray(p, float)
    if not y.size:
        return {"mean_predicted": None, "observed_rate": None, "observed_to_expected": None,
                "calibration_in_the_large": None, "calibration_slope": None}
    citl, slope_fit = _recalibration_fits(y, p)
    mean, rate = float(p.mean()), float(y.mean())
    return {"mean_predicted": mean, "observed_rate": rate, "observed_to_expected": rate / mean if mean > 0 else None,
            "calibration_in_the_large": None if citl is None else float(citl[0]),
            "calibration_slope": None if slope_fit is None else float(slope_fit[1])}


def calibration_stats(y, p, *, bins: int = 10, curve=None) -> dict[str, float | int | bool | None]:
    """Calibration of predicted risks ``p`` against outcomes ``y``.

    - ``calibration_in_the_large``: intercept ``a`` of ``logit P(y) = a + logit(p)`` (slope
      fixed at 1; Van Calster's CITL). 0 is perfect; negative when risks are too high.
    - ``calibration_slope`` / ``calibration_intercept``: ``b`` and ``a`` of
      ``logit P(y) = a + b logit(p)``. Slope 1 is perfect; below 1, risks too extreme
      (overfit); above 1, too moderate.
    - ``ece``: expected calibration error over the groups of the calibration curve as it
      is published (:func:`curve_ece`): ``curve``, the one published beside these numbers,
      or ``metrics.calibration_curve(y, p, bins=bins)``, ``bins`` equal-frequency groups
      whose boundaries the rule of 11 may move or merge.
    - ``ici``, ``e50``, ``e90``: the integrated calibration index and the median and 90th
      percentile of the same absolute errors (:func:`calibration_errors`).
    - ``brier``, ``observed_rate``, ``mean_predicted``.

    Fits are unpenalised maximum likelihood on ``logit(clip(p, 1e-6, 1 - 1e-6))``; a fit
    whose estimate does not exist (one class, separation, constant ``p``) gives ``None``.
    ``n`` and ``events`` are suppressed; with 1..10 events or non-events every metric is
    withheld and ``suppressed`` is True, and so are the events when the non-events number
    1..10 (``n`` minus them would give those back), as in ``metrics.evaluate``.
    """
    y, p = _check_yp(y, p)
    n, events = int(y.size), int(y.sum())
    suppressed = not _shown(events, n - events)
    values = _calibration(y, p, bins, curve)
    record: dict[str, float | int | bool | None] = {
        k: (None if suppressed else v) for k, v in values.items()
    }
    few_non_events = privacy.suppress(n - events) is None
    record.update(n=privacy.suppress(n), events=None if few_non_events else privacy.suppress(events), suppressed=suppressed)
    return record


def _silverman(x: np.ndarray) -> float:
    sd = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    q75, q25 = np.quantile(x, [0.75, 0.25])
    spread = min(sd, (q75 - q25) / 1.34) if q75 > q25 else sd
    return 0.9 * spread * x.size ** (-0.2)


def _smoothed_at(y: np.ndarray, p: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The smoothed observed risk at each risk of ``at`` (:func:`smoothed_calibration`'s
    local-linear kernel regression of ``y`` on ``logit(p)``), clipped to [0, 1]."""
    x = logit(np.clip(p, EPS, 1 - EPS))
    h = _silverman(x)
    yf = y.astype(float)
    if h <= 0:
        return np.full(len(at), float(yf.mean()))
    out = np.empty(len(at))
    for i, x0 in enumerate(logit(np.clip(at, EPS, 1 - EPS))):
        d = (x - x0) / h
        w = np.exp(-0.5 * d * d)
        s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
        t0, t1 = (w * yf).sum(), (w * d * yf).sum()
        det = s0 * s2 - s1 * s1
        out[i] = (s2 * t0 - s1 * t1) / det if det > 1e-12 * s0 * s0 else t0 / s0
    return np.clip(out, 0.0, 1.0)


def calibration_errors(y, p, *, points: int = 1000, budget: int = 25_000_000) -> dict[str, float]:
    """The integrated calibration index and its quantiles (Austin & Steyerberg 2019; as
    OHDSI PatientLevelPrediction's Eavg and E90): the absolute difference between each
    row's predicted risk and the smoothed observed risk at it (the report's smoothed
    curve at each distinct risk while distinct risks x rows stay within ``budget``; beyond,
    at the smallest and largest risk and ``points`` quantiles between, fewer at a million
    rows (``budget`` / rows, at least 100), interpolated on the logit scale: within about
    0.3% at 1,000 quantiles, 1% at 100), averaged over the rows (``ici``), and its median (``e50``) and 90th
    percentile (``e90``). Emax is left out: it rests on the one most extreme risk, and
    is unstable. No disclosure rule here; :func:`calibration_stats` withholds them with
    the other calibration statistics."""
    y, p = _check_yp(y, p)
    if y.size == 0:
        return {"ici": None, "e50": None, "e90": None}
    risks, index = np.unique(p, return_inverse=True)
    if risks.size * p.size <= budget:  # the smoother at every distinct risk
        observed = _smoothed_at(y, p, risks)[index]
    else:  # at the smallest and largest risk and ``points`` quantiles between, interpolated
        points = int(np.clip(budget // p.size, 100, points))
        at = np.quantile(p, np.r_[0.0, (np.arange(points) + 0.5) / points, 1.0])
        grid = logit(np.clip(at, EPS, 1 - EPS))
        observed = np.interp(logit(np.clip(p, EPS, 1 - EPS)), grid, _smoothed_at(y, p, at))
    gap = np.abs(observed - p)
    return {"ici": float(gap.mean()), "e50": float(np.median(gap)), "e90": float(np.quantile(gap, 0.9))}


def smoothed_calibration(y, p, *, points: int = 50) -> pd.DataFrame:
    """A smooth calibration curve: observed risk against predicted risk.

    Local-linear kernel regression of ``y`` on ``logit(p)`` with a Gaussian kernel whose
    bandwidth follows Silverman's rule (on the logit scale), evaluated at ``points``
    quantiles of ``p`` (levels ``(i + 0.5) / points``, so no single subject's risk is an
    end point). ``observed`` is clipped to [0, 1]. With 1..10 events or non-events the
    curve is withheld (``observed`` and ``predicted`` are None).
    """
    y, p = _check_yp(y, p)
    if points < 1:
        raise ValueError(f"points must be at least 1; got {points!r}.")
    at = np.quantile(p, (np.arange(points) + 0.5) / points)
    events = int(y.sum())
    if not _shown(events, y.size - events):
        observed: list[float | None] = [None] * points
    else:
        observed = [float(v) for v in _smoothed_at(y, p, at)]
    # Withheld, the risks' quantiles go too: they are knots at i / (n - 1), which for a
    # small evaluation set would tell its size.
    predicted = [None if observed[0] is None else float(a) for a in at]
    return pd.DataFrame({"predicted": predicted, "observed": observed}, dtype=object)


# ------------------------------------------------------------------ operating points


def _confusion(y: np.ndarray, flag: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum(flag & y))
    fp = int(np.sum(flag & ~y))
    fn = int(np.sum(~flag & y))
    return tp, fp, fn, int(y.size) - tp - fp - fn


def _operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    n = y.size
    tp, fp, fn, tn = _confusion(y, p >= threshold)
    cells = _shown(tp, fp, fn, tn)
    alerts = tp + fp
    margins = _shown(alerts, n - alerts)

    def rate(num: int, den: int) -> float | None:
        return _ratio(num, den) if cells else None

    return {
        "threshold": float(threshold),
        "alert_rate": alerts / n if margins else None,
        "sensitivity": rate(tp, tp + fn),
        "specificity": rate(tn, tn + fp),
        "ppv": rate(tp, tp + fp),
        "npv": rate(tn, tn + fn),
        "alerts_per_1000": 1000 * alerts / n if margins else None,
        "tp": tp if cells else None,
        "fp": fp if cells else None,
        "fn": fn if cells else None,
        "tn": tn if cells else None,
    }


def disclosed_thresholds(y, p, priority: Iterable[float], cutoffs: privacy.Cutoffs | None = None) -> list[bool]:
    """For each threshold of ``priority``, taken in that order, whether its 2x2 table (rows
    flagged ``p >= t`` against ``y``) may be shown beside the ones shown before it.

    The tables at several thresholds are nested: two shown tables give the band of risks
    between their thresholds away (its events and non-events by subtraction). So a
    threshold is shown when its own cells are each 0 or at least 11 and its differences in
    true and false alerts from the nearest shown cut-off on either side are each 0 or at
    least 11 (:class:`privacy.Cutoffs`; then every difference between shown thresholds is
    too: it adds up bands that are). The earlier a threshold in ``priority``, the more it
    is kept: put the operating point first. ``cutoffs``: the ledger of the cut-offs of
    ``p`` already published (other tables', figures'); the shown thresholds join it."""
    y, p = _check_yp(y, p)
    ledger = privacy.Cutoffs(y, p) if cutoffs is None else cutoffs
    return [ledger.add(ledger.flagged(t)) for t in priority]


def disclosed_curve(y, p, cutoffs: privacy.Cutoffs | None = None) -> pd.DataFrame:
    """The points of the ROC and precision-recall curves that may leave the site: from the
    highest risk down, a point (the rows flagged at or above a risk) is kept when the
    ledger of published cut-offs admits it (``cutoffs``, :class:`privacy.Cutoffs`; a new
    one by default): its true and false alerts differ from the nearest published
    cut-off's on either side (the last kept point, a threshold of the table, a
    calibration bin's boundary, ...) by 0 or at least 11 each, so no step of the drawn
    curve, nor any band between it and another published number, holds 1..10 events or
    non-events. The kept points join the ledger. Columns ``tp``, ``fp``, ``fpr``,
    ``tpr``, ``precision`` (NaN where nothing is flagged) and ``recall``; the first row is
    the origin (nothing flagged), the last everything flagged. Empty with 1..10 events or
    non-events, or none of either (no curve to draw)."""
    y, p = _check_yp(y, p)
    events, others = int(y.sum()), int((~y).sum())
    columns = ["tp", "fp", "fpr", "tpr", "precision", "recall"]
    if not (events and others and _shown(events, others)):
        return pd.DataFrame(columns=columns)
    ledger = privacy.Cutoffs(y, p) if cutoffs is None else cutoffs
    risks = np.sort(p)[::-1]
    ends = np.flatnonzero(np.r_[risks[1:] != risks[:-1], True]) + 1  # k at the end of each run of tied risks
    kept = [0] + [int(k) for k in ends if ledger.add(int(k))]
    if kept[-1] != y.size:
        kept.append(y.size)
    tp, fp = np.array([ledger.counts(k) for k in kept]).T
    return pd.DataFrame({"tp": tp, "fp": fp, "fpr": fp / others, "tpr": tp / events,
                         "precision": [t / (t + f) if t + f else None for t, f in zip(tp, fp, strict=True)],
                         "recall": tp / events}, columns=columns)


WITHHELD_WITH_CELLS = ("alert_rate", "sensitivity", "specificity", "ppv", "npv", "alerts_per_1000", "tp", "fp", "fn", "tn")


def threshold_table(
    y,
    p,
    *,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    alert_rates: Iterable[float] = (0.01, 0.05, 0.10),
    budget_from=None,
    operating_budget: float | None = None,
    cutoffs: privacy.Cutoffs | None = None,
    subjects=None,
    n_boot: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per operating point: fixed risk thresholds, then alert budgets.

    Columns: ``kind`` ("threshold" or "alert budget"), ``alert_budget`` (the requested
    rate r, None for a threshold row), ``threshold``, ``alert_rate`` (the actual fraction
    flagged), ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``alerts_per_1000``,
    ``tp``, ``fp``, ``fn``, ``tn``.

    A row flags ``p >= threshold``. For an alert budget r the threshold is the (1 - r)
    quantile of ``budget_from`` (default ``p``) taken at an observed risk (numpy's
    "higher" method, which flags the same rows as linear interpolation would), so tied
    risks are all flagged. Set ``budget_from`` to other rows' risks (the tuning split's)
    to score a threshold fixed before these rows were seen, as a deployed model's would
    be: ``alert_rate`` is then what it flags here, which may differ from r either way.

    Privacy: when any of tp, fp, fn, tn is 1..10, all four and the four rates are None;
    ``alert_rate`` and ``alerts_per_1000`` are None when the alerts or non-alerts count is
    1..10. A row whose cells would give a band between two rows' thresholds away (see
    :func:`disclosed_thresholds`; the alert budgets come first, ``operating_budget``
    before them all, then the fixed thresholds) shows only its threshold. ``cutoffs``:
    the ledger of ``p``'s published cut-offs (:class:`privacy.Cutoffs`), which the shown
    rows join. Rates with a zero denominator are None.

    With ``subjects`` (each row's) and ``n_boot`` > 0, each shown row's sensitivity,
    specificity, PPV and NPV get patient-bootstrap 95% intervals (``<rate>_ci_low``,
    ``<rate>_ci_high``; :func:`metrics.bootstrap_weights`, the threshold held fixed, as
    a deployed rule's would be). They add no count: the row's four cells are shown.
    """
    y, p = _check_yp(y, p)
    fixed = _check_levels(thresholds, "thresholds", low=0, high=1, closed="both")
    budgets = _check_levels(alert_rates, "alert_rates", low=0, high=1, closed="right")
    rows = [{"kind": "threshold", "alert_budget": None, **_operating_point(y, p, t)} for t in fixed]
    source = p if budget_from is None else np.asarray(budget_from, float)
    if source.size == 0:
        raise ValueError("budget_from must hold at least one risk to set the alert budgets' thresholds from; got none.")
    for r in budgets:
        t = float(np.quantile(source, 1 - r, method="higher"))
        rows.append({"kind": "alert budget", "alert_budget": r, **_operating_point(y, p, t)})
    order = [i for i, r in enumerate(rows) if r["alert_budget"] is not None and r["alert_budget"] == operating_budget]
    order += [i for i, r in enumerate(rows) if r["kind"] == "alert budget" and i not in order]
    order += [i for i, r in enumerate(rows) if r["kind"] == "threshold"]
    for i, ok in zip(order, disclosed_thresholds(y, p, [rows[i]["threshold"] for i in order], cutoffs), strict=True):
        if not ok:
            rows[i].update(dict.fromkeys(WITHHELD_WITH_CELLS))
    columns = ["kind", "alert_budget", "threshold", "alert_rate", "sensitivity", "specificity"]
    columns += ["ppv", "npv", "alerts_per_1000", "tp", "fp", "fn", "tn"]
    if subjects is not None and n_boot > 0:
        _rate_intervals(y, p, np.asarray(subjects), rows, n_boot=n_boot, seed=seed)
        columns += [f"{rate}_ci_{end}" for rate in RATES for end in ("low", "high")]
    return pd.DataFrame(rows, columns=columns, dtype=object)


RATES = ("sensitivity", "specificity", "ppv", "npv")


def _rate_intervals(y: np.ndarray, p: np.ndarray, subjects: np.ndarray, rows: list[dict], *, n_boot: int, seed: int,
                    level: float = 0.95) -> None:
    """Patient-bootstrap percentile intervals of each shown row's four rates, in place
    (None for a withheld row, or a rate whose denominator a replicate never fills)."""
    shown = [r for r in rows if r["tp"] is not None]
    for r in rows:
        r.update({f"{rate}_ci_{end}": None for rate in RATES for end in ("low", "high")})
    if not shown:
        return
    flags = np.column_stack([p >= r["threshold"] for r in shown])  # rows x operating points
    events, quiet = y[:, None].astype(float), (~y)[:, None].astype(float)
    parts = {"tp": events * flags, "fp": quiet * flags, "fn": events * ~flags, "tn": quiet * ~flags}
    draws: dict[str, list[np.ndarray]] = {k: [] for k in parts}
    for w in metrics.bootstrap_weights(subjects, n_boot=n_boot, seed=seed):
        for k, part in parts.items():
            draws[k].append(w @ part)  # replicates x operating points
    c = {k: np.vstack(v) for k, v in draws.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        values = {"sensitivity": c["tp"] / (c["tp"] + c["fn"]), "specificity": c["tn"] / (c["tn"] + c["fp"]),
                  "ppv": c["tp"] / (c["tp"] + c["fp"]), "npv": c["tn"] / (c["tn"] + c["fn"])}
    alpha = (1 - level) / 2
    for j, r in enumerate(shown):
        for rate, v in values.items():
            column = v[:, j][np.isfinite(v[:, j])]
            if r[rate] is not None and column.size:
                r[f"{rate}_ci_low"] = float(np.quantile(column, alpha))
                r[f"{rate}_ci_high"] = float(np.quantile(column, 1 - alpha))


def decision_curve(
    y, p, *, thresholds: Iterable[float] = DEFAULT_NET_BENEFIT_THRESHOLDS, disclosed: Iterable[float] = (),
    cutoffs: privacy.Cutoffs | None = None,
) -> pd.DataFrame:
    """Net benefit of treating by the model, treating all and treating none.

    At threshold probability pt, with weight w = pt / (1 - pt):
    ``net_benefit_model = TP/n - FP/n * w`` (treat ``p >= pt``),
    ``net_benefit_all = prevalence - (1 - prevalence) * w``, ``net_benefit_none = 0``.

    Privacy: ``net_benefit_model`` is None where the 2x2 table at pt has a cell of 1..10,
    or would give a band of risks away beside the other thresholds' (``disclosed``: the
    thresholds whose tables are shown elsewhere, the threshold table's; see
    :func:`disclosed_thresholds`; or ``cutoffs``, the ledger of every published cut-off
    of ``p``, which the shown points join), since with the alerts at pt it gives the
    cells back; ``net_benefit_all`` is None with 1..10 events or non-events.
    """
    y, p = _check_yp(y, p)
    pts = _check_levels(thresholds, "thresholds", low=0, high=1, closed="neither")
    n, events = y.size, int(y.sum())
    prevalence = events / n
    all_shown = _shown(events, n - events)
    before = [float(t) for t in disclosed]
    shown = disclosed_thresholds(y, p, [*before, *pts], cutoffs)[len(before):]
    rows = []
    for pt, ok in zip(pts, shown, strict=True):
        w = pt / (1 - pt)
        tp, fp, _, _ = _confusion(y, p >= pt)
        rows.append(
            {
                "threshold": pt,
                "net_benefit_model": tp / n - fp / n * w if ok else None,
                "net_benefit_all": prevalence - (1 - prevalence) * w if all_shown else None,
                "net_benefit_none": 0.0,
            }
        )
    columns = ["threshold", "net_benefit_model", "net_benefit_all", "net_benefit_none"]
    return pd.DataFrame(rows, columns=columns, dtype=object)


# ------------------------------------------------------------------------ lead time

LEAD_COLUMNS = ("subject_id", "prediction_time", "label", "probability", "outcome_time")


def lead_times(frame: pd.DataFrame, *, threshold: float) -> dict[str, int | float | None]:
    """How long before the outcome the model's true-positive alerts come.

    ``frame`` has one row per prediction time: ``subject_id``, ``prediction_time``
    (datetime64), ``label`` (the task's label: the outcome falls in this prediction
    time's time-at-risk), ``probability`` and ``outcome_time`` (datetime64, NaT without
    an outcome; one value per subject). A *true-positive alert* is a row with ``label``
    true and ``probability >= threshold``; alerts at rows labelled negative (including
    those whose outcome lies beyond the horizon) do not count. A subject with a positive
    row is a subject *with the outcome*; one with a true-positive alert is *detected*,
    and their lead time is the days (fractional) from their first true-positive alert to
    the outcome.

    Returns ``subjects_with_outcome`` and ``detected`` (suppressed; ``detected`` is also
    None when the undetected count is 1..10, since it is the difference, and when a cell
    of the rows' 2x2 table at ``threshold`` is, as the threshold table withholds them) and the
    ``median`` lead days, withheld below 11 detected, and the ``q25`` and ``q75``, withheld
    below 22 (where their groups of 11 would overlap the median's). A sample
    quantile is one patient's interval (or two patients' average), so each is published
    as :func:`group_quantiles` gives it: the mean of the 11 lead times nearest it, to a
    whole day. No minimum or maximum: each is one patient's value.
    """
    _check_columns(frame, LEAD_COLUMNS)
    problems = [
        f"{c} must be datetime64; got dtype {str(frame[c].dtype)!r}"
        for c in ("prediction_time", "outcome_time")
        if not pd.api.types.is_datetime64_any_dtype(frame[c])
    ]
    if problems:
        raise ValueError("; ".join(problems) + ".")
    if frame["prediction_time"].isna().any():
        raise ValueError("prediction_time must not be missing; got NaT.")
    (threshold,) = _check_levels([threshold], "threshold", low=0, high=1, closed="both")
    probability = _check_p(frame["probability"], "probability")
    label = _check_y(frame["label"], "label")
    per_subject = frame.groupby("subject_id", sort=False)["outcome_time"].nunique(dropna=False)
    if (per_subject > 1).any():
        raise ValueError(
            f"outcome_time must be one value per subject; got differing values for {int((per_subject > 1).sum())} subjects."
        )

    subject = frame["subject_id"].to_numpy()
    when = frame["prediction_time"].to_numpy()
    outcome = frame["outcome_time"].to_numpy()
    unknown = label & (pd.isna(outcome) | (when >= outcome))
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"a positive label needs an outcome_time after its prediction_time; row {row} (subject {subject[row]}) "
            f"has {'none' if pd.isna(outcome[row]) else outcome[row]}. Pass the outcomes the labels were built from."
        )
    alert = label & (probability >= threshold)

    with_outcome = int(pd.unique(subject[label]).size)
    alerts = pd.DataFrame({"subject": subject[alert], "when": when[alert], "outcome": outcome[alert]})
    first = alerts.groupby("subject", sort=False).agg(when=("when", "min"), outcome=("outcome", "first"))
    days = ((first["outcome"] - first["when"]) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    detected = int(days.size)

    # The threshold table's row at this threshold (alerts per 1,000 among them) withholds
    # its 2x2 cells when one is 1..10; the detected count would undo that (alerts less
    # detected gives the false alerts), so it goes with them.
    cells = _shown(*_confusion(label, probability >= threshold))
    record: dict[str, int | float | None] = {
        "subjects_with_outcome": privacy.suppress(with_outcome),
        "detected": detected if cells and _shown(detected, with_outcome - detected) else None,
    }
    show = privacy.suppress(detected) is not None and detected > 0
    q25, median, q75 = group_quantiles(days, [0.25, 0.5, 0.75]) if show else (None, None, None)
    if detected < 2 * privacy.MIN_CELL:
        # Below 22 a quartile's 11 lie mostly among the median's, and their difference is
        # two people's intervals apart over 11 (12 detected: the largest less the smallest).
        q25 = q75 = None
    record.update(median_days=_num(median), q25_days=_num(q25), q75_days=_num(q75))
    return record


def group_quantiles(values, levels, *, group: int = privacy.MIN_CELL) -> list[float]:
    """Quantiles that are no one's value: each is the mean of the ``group`` values nearest
    the quantile in sorted order (the ``group`` consecutive order statistics centred on its
    rank ``level * (n - 1)``, rounded half up, moved inward at the ends), rounded to a whole
    number. With 40 values, 20 of 9 and 20 of 30, the median's rank 19.5 rounds to 20, so
    it is the mean of sorted positions 15-25 (five 9s and six 30s): 225 / 11 = 20.45 -> 20.
    Needs at least ``group`` values."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = ordered.size
    if n < group:
        raise ValueError(f"group quantiles need at least {group} values; got {n}.")
    out = []
    for level in levels:
        centre = int(np.floor(float(level) * (n - 1) + 0.5))
        start = min(max(centre - group // 2, 0), n - group)
        out.append(float(np.round(ordered[start : start + group].mean())))
    return out


# ------------------------------------------------------------------------ subgroups


def age_band(age_years) -> np.ndarray:
    """Age bands "<18", "18-39", "40-49", "50-59", "60-69", "70-79", "80+" (object array;
    None where the age is missing). Works on arrays and Series alike."""
    age = _as_1d(
        np.atleast_1d(age_years) if not isinstance(age_years, pd.Series) else age_years, "age_years"
    )
    bad = age[age < 0]
    if bad.size:
        raise ValueError(f"age_years must be non-negative; got {float(bad[0])!r}.")
    labels = np.array(AGE_BANDS, dtype=object)[
        np.searchsorted(_AGE_EDGES, np.nan_to_num(age), side="right")
    ]
    labels[np.isnan(age)] = None
    return labels


def _levels(column: pd.Series) -> list:
    """Distinct non-missing values in a readable order (categories, age bands, sorted)."""
    present = column.dropna()
    if isinstance(column.dtype, pd.CategoricalDtype):
        seen = set(present.unique())
        return [c for c in column.cat.categories if c in seen]
    values = list(pd.unique(present))
    if set(values) <= set(AGE_BANDS):
        return sorted(values, key=AGE_BANDS.index)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _protect_levels(records: list[dict], raw: list[tuple[int, int, int, bool]]) -> None:
    """Complementary suppression across the levels of one group, whose rows, subjects and
    events add up to the published held-out totals: a level's count that would give a
    suppressed one back by subtraction is withheld too, and a level's rows and subjects
    go together. A level suppressed for too few people has its events withheld whatever
    their number, which still counts towards the sum that decides whether the hidden
    levels are exposed. Where a level's size or events are withheld, so is every column
    that would rebuild them from the other: the observed rate; the utility columns (PPV
    x alerts / sensitivity gives the events); the calibration columns (calibration-in-the-
    large and the intercept hold the observed rate beside the mean predicted risk); and
    the AUROC and AUPRC with their intervals (AUROC x events x non-events is a multiple
    of 1/2, so a full-precision AUROC and the level's size leave few event counts
    possible, and the mean predicted risk narrows them to one). Only the mean predicted
    risk stays.

    A level's suppressed flag is published, so a reader knows that a level shown as not
    suppressed has 11 or more subjects and events and 22 or more rows (11 or more event
    and non-event rows) even where its counts are withheld; those floors go to
    :func:`privacy.complementary`, which keeps withholding until the hidden levels' sum
    leaves every small one its whole range."""
    withheld = tuple(i for i, (_, _, _, suppressed) in enumerate(raw) if suppressed)
    shown_levels = [i for i in range(len(raw)) if i not in withheld]
    floor = privacy.MIN_CELL
    columns = (([r for r, _, _, _ in raw], (), dict.fromkeys(shown_levels, 2 * floor)),
               ([s for _, _, s, _ in raw], (), dict.fromkeys(shown_levels, floor)),
               ([e for _, e, _, _ in raw], withheld, dict.fromkeys(shown_levels, floor)))
    if len(raw) > 1 and any(privacy.withhold(parts, force=force, floors=floors)[1] for parts, force, floors in columns):
        # Withholding every count is not enough when a level shown as not suppressed
        # pins a suppressed one through the total (11 events beside 0, a total of 11):
        # the whole group is suppressed, which drops the floors its flags would give.
        # (A group of one level is the total itself, published anyway.)
        for record in records:
            record["suppressed"] = True
            for key in ("rows", "subjects", "events", "mean_predicted", *COUNT_BEARING, *UTILITY_COLUMNS,
                        *LEAD_COLUMNS_BY_LEVEL):
                if key in record:
                    record[key] = None
        return
    n_rows, n_subjects, events = (privacy.suppress_parts(parts, force=force, floors=floors)
                                  for parts, force, floors in columns)
    for i, (record, n, subjects, e) in enumerate(zip(records, n_rows, n_subjects, events, strict=True)):
        # A level shown as not suppressed has 11+ event and 11+ non-event rows: with its
        # rows shown, its withheld events would lie in [11, rows - 11], which can pin
        # them (22 rows: 11 events); so its size goes with them.
        size_shown = n is not None and subjects is not None and (e is not None or i in withheld)
        record["rows"], record["subjects"] = (n, subjects) if size_shown else (None, None)
        record["events"] = e
        if not size_shown or e is None:
            for key in (*COUNT_BEARING, *UTILITY_COLUMNS):
                if key in record:
                    record[key] = None


# A subgroup level's columns read off its 2x2 table at the operating point (the net
# benefit too: TP/n - FP/n x w, beside the alerts per 1,000 and the PPV, gives its cells).
UTILITY_COLUMNS = ("sensitivity", "specificity", "ppv", "npv", "alerts_per_1000", "net_benefit")
# A subgroup level's columns that, with its size, give its event count back (treating
# all's net benefit is the observed rate less the non-events' weight).
COUNT_BEARING = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high", "brier",
                 "calibration_in_the_large", "calibration_slope", "calibration_intercept", "ece", "observed_rate",
                 "net_benefit_all")
# A subgroup level's lead times (:func:`lead_times`' quantiles among its own detected
# people): no count, each the mean of 11 people's intervals.
LEAD_COLUMNS_BY_LEVEL = ("lead_median_days", "lead_q25_days", "lead_q75_days")


def _protect_utility(records: list[dict], cells: list[tuple[int, int, int, int]], hidden: set[int]) -> None:
    """Complementary suppression of the utility columns across the levels of one group.
    A level's shown sensitivity, specificity, PPV and alerts per 1,000 give its 2x2 cells
    (true and false alerts, missed events, true quiet rows), which add up over the levels
    to the whole held-out set's (the threshold table's row, or the one "site" level); so
    when a level's utility is withheld (``hidden``: a cell of 1..10, or the level
    suppressed), further levels' are withheld until no hidden level's cells come back by
    subtraction, one cell column at a time (:func:`privacy.complementary`)."""
    hidden = set(hidden)
    while True:
        for column in zip(*cells, strict=True) if cells else ():
            extra = privacy.complementary(list(column), force=tuple(sorted(hidden)))
            if extra - hidden:
                hidden |= extra
                break
        else:
            break
    for i in hidden:
        for key in UTILITY_COLUMNS:
            records[i][key] = None


# The fairness summary's metrics: discrimination, equal opportunity (sensitivity at the
# shared threshold), precision, alert rate (statistical parity) and calibration in the large.
GAP_METRICS = ("auroc", "sensitivity", "ppv", "alerts_per_1000", "calibration_in_the_large")


def subgroup_gaps(subgroups: list[dict], *, names: Sequence[str] = GAP_METRICS) -> list[dict]:
    """The largest difference between the levels of each subgroup column, per metric, for
    the fairness summary (``held_out/gap/<group>/<metric>`` in MLflow, the report's section
    10): ``subgroups`` is :func:`subgroup_metrics`' records. Only values that table
    publishes are compared (a level not suppressed, its metric shown), and neither the
    missing level (``level`` None: no category to speak of) nor the ``site`` column (one
    level per run). One record per (group, metric) with at least two levels to compare:
    ``group``, ``metric``, ``gap`` (highest less lowest), ``low_level``, ``low``,
    ``high_level``, ``high`` and ``levels`` (how many were compared). Nothing in it is not
    in the table already."""
    out = []
    groups = list(dict.fromkeys(r["group"] for r in subgroups if r["group"] != "site"))
    for group in groups:
        rows = [r for r in subgroups if r["group"] == group and r["level"] is not None and not r["suppressed"]]
        for metric in names:
            shown = [(r[metric], r["level"]) for r in rows if r.get(metric) is not None and np.isfinite(r[metric])]
            if len(shown) < 2:
                continue
            (low, low_level), (high, high_level) = min(shown, key=lambda v: v[0]), max(shown, key=lambda v: v[0])
            out.append({"group": group, "metric": metric, "gap": float(high - low), "low_level": low_level,
                        "low": float(low), "high_level": high_level, "high": float(high), "levels": len(shown)})
    return out


def subgroup_metrics(
    frame: pd.DataFrame,
    *,
    groups: Sequence[str] = ("age_band", "sex", "site"),
    n_boot: int = 0,
    seed: int = 0,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Discrimination, calibration and utility per level of each group column.

    ``frame`` has ``y`` (bool), ``p`` (risk), ``subject_id`` and the ``groups`` columns; a
    missing group value forms its own level (``level`` None). One row per (group, level):
    ``group``, ``level``, ``subjects``, ``rows``, ``events`` (positive rows), ``auroc``,
    ``auprc``, ``brier``, ``calibration_in_the_large``, ``calibration_slope``,
    ``calibration_intercept``, ``ece``, ``observed_rate``, ``mean_predicted``,
    ``suppressed``; with ``n_boot > 0`` also ``auroc_ci_low``, ``auroc_ci_high``,
    ``auprc_ci_low`` and ``auprc_ci_high`` (patient-level bootstrap, :func:`metrics.bootstrap_ci`); with a ``threshold`` (the
    whole set's operating point, so the levels are compared at one rule) also
    ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``alerts_per_1000`` and
    ``net_benefit`` (the decision curve's net benefit of alerting at ``threshold``,
    ``TP/n - FP/n x t/(1-t)``), each withheld as :func:`threshold_table` withholds them
    (a 2x2 cell of 1..10), and ``net_benefit_all`` (alerting on everyone at the same
    threshold probability). Where ``frame`` also has ``prediction_time`` and
    ``outcome_time`` (as :func:`lead_times` takes them; ``y`` is the label, ``p`` the
    risk), each level has its lead times at ``threshold`` too: ``lead_median_days``,
    ``lead_q25_days`` and ``lead_q75_days`` among the level's own detected people, as
    :func:`lead_times` withholds them (the median below 11 of them, the quartiles below 22).

    A level is suppressed (metrics and ``events`` None) when it has fewer than 11
    subjects, fewer than 11 subjects with an event or fewer than 11 subjects with a
    non-event row: people, not rows, are what a small cell exposes. Counts always go
    through :func:`privacy.suppress`.
    """
    _check_columns(frame, ("y", "p", "subject_id", *groups))
    if n_boot < 0:
        raise ValueError(f"n_boot must be 0 or more; got {n_boot!r}.")
    if threshold is not None:
        (threshold,) = _check_levels([threshold], "threshold", low=0, high=1, closed="both")
    y, p = _check_yp(frame["y"], frame["p"])
    subjects = frame["subject_id"].to_numpy()
    timed = None
    if threshold is not None and {"prediction_time", "outcome_time"} <= set(frame.columns):
        timed = pd.DataFrame({"subject_id": subjects, "prediction_time": frame["prediction_time"].to_numpy(),
                              "label": y, "probability": p, "outcome_time": frame["outcome_time"].to_numpy()})
        lead_times(timed, threshold=threshold)  # checks the times, naming a row of the whole frame
    weight = None if threshold is None or threshold >= 1 else threshold / (1 - threshold)
    rows = []
    for group in groups:
        column = frame[group]
        missing = column.isna().to_numpy()
        levels = _levels(column) + ([None] if missing.any() else [])
        first, raw, cells = len(rows), [], []
        for level in levels:
            m = missing if level is None else (column == level).to_numpy() & ~missing
            ys, ps, ss = y[m], p[m], subjects[m]
            n_subjects = int(pd.unique(ss).size)
            with_event = int(pd.unique(ss[ys]).size)
            with_non_event = int(pd.unique(ss[~ys]).size)
            suppressed = min(n_subjects, with_event, with_non_event) < privacy.MIN_CELL
            record = {
                "group": group,
                "level": _plain(level),
                "subjects": privacy.suppress(n_subjects),
                "rows": privacy.suppress(int(m.sum())),
                "events": None if suppressed else privacy.suppress(int(ys.sum())),
            }
            point = {} if suppressed else metrics.point_metrics(ys, ps)
            calib = {} if suppressed else _calibration(ys, ps, errors=False)
            record.update(
                auroc=_num(point.get("auroc")),
                auprc=_num(point.get("auprc")),
                brier=_num(point.get("brier")),
                calibration_in_the_large=_num(calib.get("calibration_in_the_large")),
                calibration_slope=_num(calib.get("calibration_slope")),
                calibration_intercept=_num(calib.get("calibration_intercept")),
                ece=_num(calib.get("ece")),
                observed_rate=_num(point.get("prevalence")),
                mean_predicted=_num(point.get("mean_predicted")),
                suppressed=suppressed,
            )
            if threshold is not None:
                op = {} if suppressed else _operating_point(ys, ps, threshold)
                if op.get("tp") is not None and weight is not None:
                    op["net_benefit"] = (op["tp"] - op["fp"] * weight) / ys.size
                record.update({k: _num(op.get(k)) for k in UTILITY_COLUMNS})
                rate = point.get("prevalence")
                record["net_benefit_all"] = None if rate is None or weight is None else _num(rate - (1 - rate) * weight)
            if timed is not None:
                lead = {} if suppressed else lead_times(timed[m], threshold=threshold)
                record.update(lead_median_days=lead.get("median_days"), lead_q25_days=lead.get("q25_days"),
                              lead_q75_days=lead.get("q75_days"))
            if n_boot > 0:
                ci = {} if suppressed else metrics.bootstrap_ci(ys, ps, ss, n_boot=n_boot, seed=seed, metrics=("auroc", "auprc"))
                for name in ("auroc", "auprc"):
                    low, high = (_num(v) for v in ci[name]) if ci else (None, None)
                    record.update({f"{name}_ci_low": low, f"{name}_ci_high": high})
            rows.append(record)
            raw.append((int(m.sum()), int(ys.sum()), n_subjects, suppressed))
            if threshold is not None:
                cells.append(_confusion(ys, ps >= threshold))
        _protect_levels(rows[first:], raw)
        if threshold is not None:
            _protect_utility(rows[first:], cells, {i for i, r in enumerate(rows[first:]) if r["sensitivity"] is None})
    columns = ["group", "level", "subjects", "rows", "events", "auroc", "auprc", "brier"]
    columns += ["calibration_in_the_large", "calibration_slope", "calibration_intercept", "ece"]
    columns += ["observed_rate", "mean_predicted", "suppressed"]
    if threshold is not None:
        columns += [*UTILITY_COLUMNS, "net_benefit_all"]
    if timed is not None:
        columns += list(LEAD_COLUMNS_BY_LEVEL)
    if n_boot > 0:
        columns += ["auroc_ci_low", "auroc_ci_high", "auprc_ci_low", "auprc_ci_high"]
    return pd.DataFrame(rows, columns=columns, dtype=object)
