"""Drift between the data a champion was trained on and a new pull: retrain, skip or alert.

Three checks, each on aggregates only:

- **Feature drift**: the population stability index (PSI) of the champion's most
  important features, binned at the champion's train-split quantiles.
- **Outcome prevalence**: the relative change of the labelled event rate.
- **Code-vocabulary churn**: the share of the champion's codes that the new data no
  longer has, and the share of the new data's codes that the champion never saw.

At training time :func:`reference_profile` summarises the champion's train split; the
profile is stored with the model and leaves the site, so it holds shares of at least
11 rows only (see :func:`reference_profile` for how small bins are merged). Before
retraining, :func:`compare` puts the new pull, featurized with the champion's columns,
against that profile, and :func:`decide` turns the comparison into an action under a
:class:`DriftPolicy`. :func:`assess` does both. The records are plain JSON-serialisable
dicts: the flow logs them (:func:`drift_metrics`, :func:`markdown`), the report shows them.

Today's bins are not merged, so a PSI could give away a new-side bin count of 1 to 10
(with the published row count, a present/absent feature's PSI fixes how many rows have
the code). The decision uses every exact PSI, but a published feature whose new-side
bins (after the reference's folding of the missing rows) include one of 1..10 rows has
``psi`` None and ``psi_withheld`` true; its ``drifted`` flag stays, ``max_psi`` covers
the published values only, and no reason quotes a withheld PSI.

PSI of expected shares ``e`` and actual shares ``a`` over the same bins is
``sum((a_i - e_i) * ln(a_i / e_i))``. It is 0 for identical distributions; by
convention below 0.1 is stable, 0.1 to 0.25 a moderate shift, above 0.25 a major one.
An empty bin would make the logarithm infinite, so a share below ``EPS`` (1e-4) counts
as ``EPS`` on either side (the shares are not renormalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field

from forewarn.features.featurize import AGE
from forewarn.records import privacy, schema
from forewarn.records.config import Strict

EPS = 1e-4
MODERATE_PSI = 0.1
PROFILE_VERSION = 1
MAX_LISTED_CODES = 20
SMALL_BIN = f"a bin of today's data holds fewer than {privacy.MIN_CELL} rows"
WITHHELD = f"PSI withheld: {SMALL_BIN}"
ALL_SPLITS = "all"

ACTIONS = {
    "retrain": "train a challenger and let the promotion gate decide whether it replaces the champion",
    "skip": "keep the champion and do not train this run",
    "alert": "train a challenger but never promote it automatically: the run is flagged for a person, "
    "who reviews the drift reasons before any promotion",
}


class DriftPolicy(Strict):
    """When the new data counts as drifted, and what the nightly run does about it.

    Drift is any of: a top feature with PSI above ``psi_threshold``; an outcome
    prevalence whose relative change exceeds ``prevalence_change``; a vocabulary churn
    (``lost`` or ``new`` share) above ``churn_threshold``. Comparisons are strict: a
    value equal to its threshold is not drift.

    Actions:

    - ``retrain``: train a challenger on the new data and let the promotion gate
      (:mod:`forewarn.models.promotion`) decide whether it replaces the champion.
    - ``skip``: keep the champion and do not train this run; the drift record is still
      logged and reported.
    - ``alert``: train a challenger, but never promote it automatically, whatever the
      promotion gate says: the run is flagged for a person and the drift reasons are
      logged, so that a human decides.

    With no champion (nothing to compare with) the action is always ``retrain``.
    """

    top_features: int = Field(
        20,
        ge=1,
        le=500,
        description="how many of the champion's most important features (mean |SHAP|) are profiled and compared",
    )
    bins: int = Field(
        10,
        ge=2,
        le=100,
        description="quantile bins per feature on the champion's train split, before bins under 11 rows are merged",
    )
    psi_threshold: float = Field(
        0.25,
        gt=0,
        description="a feature drifts when its PSI is above this (0.1 to 0.25 is conventionally a moderate shift)",
    )
    prevalence_change: float = Field(
        0.5,
        gt=0,
        description="the outcome drifts when |new prevalence / champion's train prevalence - 1| is above this (0.5: a change of more than 50%)",
    )
    churn_threshold: float = Field(
        0.2,
        gt=0,
        le=1,
        description="the vocabulary drifts when the share of the champion's codes missing from the new vocabulary, or of new codes unknown to the champion, is above this",
    )
    on_stable: Literal["retrain", "skip"] = Field(
        "retrain",
        description="action without drift: 'retrain' (train; the promotion gate decides) or 'skip' (keep the champion, do not train)",
    )
    on_drift: Literal["retrain", "alert", "skip"] = Field(
        "alert",
        description="action on drift: 'retrain' (train; the promotion gate decides), 'alert' (train, never auto-promote; flag the run for a person) or 'skip' (keep the champion, do not train)",
    )


# ---------------------------------------------------------------------------- pieces


def psi(
    expected_shares: Sequence[float], actual_shares: Sequence[float], eps: float = EPS
) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` over matching bins.

    Shares below ``eps`` (empty bins) count as ``eps`` on both sides; the shares are
    not renormalised afterwards.
    """
    e = np.asarray(expected_shares, dtype=np.float64)
    a = np.asarray(actual_shares, dtype=np.float64)
    if e.ndim != 1 or e.shape != a.shape or e.size == 0:
        raise ValueError(
            f"expected_shares and actual_shares must be non-empty vectors of one length; got {e.shape} and {a.shape}."
        )
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(a)) and e.min() >= 0 and a.min() >= 0):
        raise ValueError(
            f"shares must be finite and non-negative; got {e.tolist()!r} and {a.tolist()!r}."
        )
    if eps <= 0:
        raise ValueError(f"eps must be > 0; got {eps!r}.")
    e, a = np.maximum(e, eps), np.maximum(a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def vocabulary(columns: pd.DataFrame) -> list[str]:
    """A model's code vocabulary: the sorted distinct codes of its columns, without AGE."""
    return sorted(set(columns["code"].astype(str)) - {AGE[0]})


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points at the ``bins``-quantiles of ``values`` (data values, deduplicated).

    Bins are right-closed: ``(-inf, e0], (e0, e1], ..., (e_last, inf)``. A cut at the
    maximum would leave the top bin empty, so it is dropped.
    """
    cuts = np.quantile(values, np.arange(1, bins) / bins, method="inverted_cdf")
    edges = np.unique(cuts)
    return edges[edges < values.max()]


def _bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(idx, minlength=len(edges) + 1)


def _merge_small(
    edges: list[float], counts: list[int], min_cell: int
) -> tuple[list[float], list[int]]:
    """Merge every bin of 1..min_cell-1 rows into its smaller neighbour (the left one on a tie).

    The smallest small bin goes first; merging two adjacent bins drops the cut between
    them. Ends with one bin at the least, which may still be small.
    """
    edges, counts = list(edges), list(counts)
    while len(counts) > 1:
        small = [i for i, c in enumerate(counts) if 0 < c < min_cell]
        if not small:
            break
        i = min(small, key=lambda k: (counts[k], k))
        if i == 0:
            j = 1
        elif i == len(counts) - 1:
            j = i - 1
        else:
            j = i - 1 if counts[i - 1] <= counts[i + 1] else i + 1
        lo = min(i, j)
        counts[lo] += counts.pop(lo + 1)
        edges.pop(lo)
    return edges, counts


def _selected(X: sp.spmatrix, columns: list[int]) -> sp.csc_matrix:
    """Just ``columns`` of ``X`` as CSC; explicit zeros stay stored (stored means present)."""
    return sp.csr_matrix(X)[:, columns].tocsc()


def _present(Xc: sp.csc_matrix, k: int, keep: np.ndarray) -> np.ndarray:
    """Stored, finite values of column ``k`` in the rows where ``keep`` is true."""
    lo, hi = Xc.indptr[k], Xc.indptr[k + 1]
    rows, values = Xc.indices[lo:hi], Xc.data[lo:hi].astype(np.float64)
    return values[keep[rows] & np.isfinite(values)]


def _prevalence(labels: np.ndarray, *, rounded: bool = False) -> float | None:
    """Event rate, or None when the events or the non-events number 1..10 (it would give
    them away); ``rounded``: the events rounded as :func:`_rounded_share` does."""
    positives = int(labels.sum())
    negatives = int(labels.size - positives)
    if privacy.suppress(positives) is None or privacy.suppress(negatives) is None:
        return None
    return _rounded_shares([positives, negatives])[0] if rounded else positives / labels.size


def prevalence_drifted(then: float, now: float, rounding: float, policy: DriftPolicy) -> bool:
    """Whether the outcome rate moved by more than ``policy.prevalence_change`` of the
    champion's, counting only the part of the move that the reference's rounding
    (``rounding``, in rate units) cannot explain."""
    return max(0.0, abs(now - then) - rounding) / then > policy.prevalence_change


def _rounded_shares(counts: list[int]) -> list[float]:
    """Shares of ``counts`` (cells of one whole, each 0 or at least 11) after rounding each
    to the nearest multiple of 11 (``privacy.rounded_shares``); they sum to 1.

    The profile describes the train split alone, whose counts no other table publishes:
    at full precision, a share times ``n_rows`` subtracted from a published count of the
    development rows (train and tuning) would give a tuning count of 1..10 back. Rounded,
    such a difference is known only to within about 5.5 either way. A count of 11 or
    more stays at 11 or more, so no cell vanishes; with thousands of train rows the
    shares move by a fraction of a percent, and the PSI with them."""
    return privacy.rounded_shares(counts)


def _rank_importance(importance: pd.DataFrame) -> pd.DataFrame:
    missing = {"name", "mean_abs_shap"} - set(importance.columns)
    if missing:
        raise ValueError(
            f"importance must have columns name and mean_abs_shap; missing {sorted(missing)!r}."
        )
    ranked = importance[["name", "mean_abs_shap"]].copy()
    ranked = ranked[np.isfinite(ranked["mean_abs_shap"]) & (ranked["mean_abs_shap"] > 0)]
    return ranked.sort_values(["mean_abs_shap", "name"], ascending=[False, True], kind="stable")


# --------------------------------------------------------------------------- profile


def reference_profile(
    X: sp.spmatrix,
    rows: pd.DataFrame,
    columns: pd.DataFrame,
    importance: pd.DataFrame,
    policy: DriftPolicy | None = None,
) -> dict:
    """Aggregates of the champion's train split that later pulls are compared with.

    ``X``, ``rows``, ``columns`` are the champion's feature matrix (unstored entries are
    missing values); ``importance`` has ``name`` and ``mean_abs_shap`` per feature
    (``importance.parquet`` of :mod:`forewarn.evaluation.explain`). Only rows of the
    train split are used.

    Features: the ``policy.top_features`` most important ones with mean |SHAP| > 0
    (ties by name) that can be profiled without small cells. Per feature, bin edges
    are the ``policy.bins``-quantiles of its present values (data values,
    deduplicated, right-closed bins); each value bin stores the share of train rows in
    it, and ``missing`` the share of rows without a value.

    Small-cell rule: every stored share stands for 0 or at least 11 rows. A value bin
    of 1..10 rows is merged into its smaller neighbour until none is left; when 1..10
    rows miss the feature, they are counted in the first (lowest) value bin instead
    (``missing`` is None and ``missing_in_first_bin`` true; new rows without a value are
    then counted there too). A feature with fewer than 11 present values, or whose bins
    cannot be merged above 10 rows, is not profiled: it is listed in ``skipped`` and the
    next important feature takes its place. Cut points are data values at interior
    quantiles (never the maximum), and every bin holds at least 11 rows, so at least 11
    rows lie on either side of each cut. ``prevalence`` is None when the train events or
    non-events number 1..10. Every stored share and the prevalence count rows rounded to
    a multiple of 11 (:func:`_rounded_shares`): the profile leaves the site with the
    model. The vocabulary lists code names (no counts).

    Raises ValueError when the train split has fewer than 11 rows.
    """
    policy = policy or DriftPolicy()
    if X.shape[0] != len(rows) or X.shape[1] != len(columns):
        raise ValueError(
            f"X must be rows x columns; got X {X.shape}, {len(rows)} rows and {len(columns)} columns."
        )
    train = (rows[schema.SPLIT] == schema.TRAIN).to_numpy()
    n = int(train.sum())
    if n < privacy.MIN_CELL:
        raise ValueError(
            f"the train split must have at least {privacy.MIN_CELL} rows to be profiled; got {n}."
        )
    position = {str(name): i for i, name in enumerate(columns["name"])}
    described = "description" in columns.columns
    ranked = [name for name in _rank_importance(importance)["name"] if name in position]
    shap = dict(zip(importance["name"], importance["mean_abs_shap"], strict=True))

    features: list[dict] = []
    skipped: list[dict] = []
    # Profile in chunks of candidates until top_features are found.
    start, chunk = 0, max(policy.top_features, 16)
    while len(features) < policy.top_features and start < len(ranked):
        names = ranked[start : start + chunk]
        start += chunk
        Xc = _selected(X, [position[name] for name in names])
        for k, name in enumerate(names):
            if len(features) >= policy.top_features:
                break
            values = _present(Xc, k, train)
            entry, why = _profile_feature(values, n, policy.bins)
            if entry is None:
                skipped.append({"name": name, "reason": why})
                continue
            col = position[name]
            features.append(
                {
                    "name": name,
                    "column": col,
                    "description": str(columns["description"].iat[col]) if described else name,
                    "mean_abs_shap": float(shap[name]),
                }
                | entry
            )

    labels = rows.loc[train, schema.BOOLEAN_VALUE].to_numpy(dtype=bool)
    return {
        "version": PROFILE_VERSION,
        "split": schema.TRAIN,
        "n_rows": privacy.suppress(n),
        "prevalence": _prevalence(labels, rounded=True),
        # How far the rounded prevalence may lie from the train split's own: events and
        # non-events each moved by up to 5.5 move the rate by up to 5.5 / n (to first
        # order); compare() does not call that much of a change drift.
        "prevalence_rounding": privacy.MIN_CELL / 2 / n,
        "n_columns": int(X.shape[1]),
        "features": features,
        "skipped": skipped,
        "vocabulary": vocabulary(columns),
        "policy": policy.model_dump(),
    }


def _profile_feature(values: np.ndarray, n: int, bins: int) -> tuple[dict | None, str]:
    present = int(values.size)
    if present < privacy.MIN_CELL:
        return None, f"fewer than {privacy.MIN_CELL} train rows have a value"
    edges = _edges(values, bins)
    edges_list, counts = _merge_small(
        [float(e) for e in edges], _bin_counts(values, edges).tolist(), privacy.MIN_CELL
    )
    missing = n - present
    folded = 0 < missing < privacy.MIN_CELL
    if folded:
        counts[0] += missing
    if any(0 < c < privacy.MIN_CELL for c in counts):  # cannot happen with >= 11 present values
        return None, f"its bins cannot be merged to {privacy.MIN_CELL} rows or more"
    shares = _rounded_shares(counts if folded else [*counts, missing])
    return {
        "edges": edges_list,
        "shares": shares[: len(counts)],
        "missing": None if folded else shares[-1],
        "missing_in_first_bin": folded,
    }, ""


# --------------------------------------------------------------------------- compare


def _counts_new(feature: dict, values: np.ndarray, n: int) -> tuple[list[float], list[int]]:
    """(expected shares, new row counts) over the feature's bins, with the missing bin when
    separate; new rows without a value are counted in the first bin when the reference's are."""
    counts = _bin_counts(values, feature["edges"]).astype(np.int64)
    missing = n - values.size
    expected = list(feature["shares"])
    if feature["missing_in_first_bin"]:
        counts[0] += missing
    else:
        counts = np.append(counts, missing)
        expected.append(feature["missing"])
    return expected, counts.tolist()


def compare(
    reference: dict,
    X_new: sp.spmatrix,
    rows_new: pd.DataFrame,
    new_vocabulary: Sequence[str],
    *,
    split: str | None = None,
    columns: pd.DataFrame | None = None,
    policy: DriftPolicy | None = None,
) -> dict:
    """Compare a new pull with the champion's :func:`reference_profile`.

    ``X_new`` must be the new data featurized with the champion's columns (same order;
    pass ``columns`` to have the names checked); ``rows_new`` its rows;
    ``new_vocabulary`` the codes the new data would choose for a new model (for
    example :func:`vocabulary` of the challenger's columns).

    Rows: every row of the new pull by default (``split=None``): the whole new pull is
    the population the champion now meets, and more rows make the PSI less noisy. The
    reference is the champion's train split, a seeded-hash sample of its pull, so with
    subject splits both sides estimate the same population. Pass ``split="train"`` to
    compare train with train (for temporal splits, where later rows are held out).

    PSI uses the reference's edges and ``EPS`` for empty bins. ``policy`` (default: the
    policy stored in the reference) only sets the ``drifted`` flags; :func:`decide`
    applies the policy of the run. Counts in the output (rows) are suppressed below 11;
    the new prevalence is None when its events or non-events number 1..10, and then so
    is the relative change. Vocabulary sizes count codes, not people.

    Small cells of the new data: a feature with a new-side bin (the missing bin
    included when separate; the missing rows counted in the first bin when the
    reference folds them) of 1..10 rows has ``psi`` None and ``psi_withheld`` true, as
    its PSI and the row count would give that bin's count away. Its ``drifted`` flag is
    still set on the exact PSI (under ``policy``), and ``max_psi`` is the largest
    published PSI (None when there is none). :func:`assess` decides on the exact values.

    Raises ValueError when ``X_new`` does not have the champion's columns or fewer than
    11 rows are compared.
    """
    return _published(
        _compare(
            reference, X_new, rows_new, new_vocabulary, split=split, columns=columns, policy=policy
        )
    )


def _published(record: dict) -> dict:
    """:func:`_compare`'s record as it may leave the site: withheld PSIs are None and
    ``max_psi`` is the largest of the others."""
    features = [f | {"psi": None} if f["psi_withheld"] else dict(f) for f in record["features"]]
    shown = [f["psi"] for f in features if not f["psi_withheld"]]
    return record | {"features": features, "max_psi": max(shown) if shown else None}


def _compare(
    reference: dict,
    X_new: sp.spmatrix,
    rows_new: pd.DataFrame,
    new_vocabulary: Sequence[str],
    *,
    split: str | None,
    columns: pd.DataFrame | None,
    policy: DriftPolicy | None,
) -> dict:
    """:func:`compare` with every exact PSI, those to withhold flagged but kept: for
    :func:`decide` in this process only, never to be published."""
    policy = policy or DriftPolicy(**reference.get("policy", {}))
    n_columns = int(reference["n_columns"])
    if X_new.shape[1] != n_columns:
        raise ValueError(
            f"X_new must have the champion's {n_columns} columns (featurize with the champion's columns.parquet); got {X_new.shape[1]}."
        )
    if X_new.shape[0] != len(rows_new):
        raise ValueError(
            f"X_new must have one row per rows_new row; got {X_new.shape[0]} and {len(rows_new)}."
        )
    if columns is not None:
        wrong = [
            f["name"]
            for f in reference["features"]
            if str(columns["name"].iat[f["column"]]) != f["name"]
        ]
        if len(columns) != n_columns or wrong:
            raise ValueError(
                f"columns must be the champion's columns in the champion's order; these differ: {wrong[:5]!r}."
            )
    keep = (
        np.ones(len(rows_new), dtype=bool)
        if split is None
        else (rows_new[schema.SPLIT] == split).to_numpy()
    )
    n = int(keep.sum())
    if n < privacy.MIN_CELL:
        raise ValueError(
            f"compare needs at least {privacy.MIN_CELL} new rows{'' if split is None else f' in split {split!r}'}; got {n}."
        )

    features = []
    if reference["features"]:
        Xc = _selected(X_new, [f["column"] for f in reference["features"]])
        for k, f in enumerate(reference["features"]):
            expected, counts = _counts_new(f, _present(Xc, k, keep), n)
            value = psi(expected, [c / n for c in counts])
            features.append(
                {
                    "name": f["name"],
                    "description": f["description"],
                    "column": f["column"],
                    "psi": value,
                    "psi_withheld": any(privacy.suppress(c) is None for c in counts),
                    "drifted": value > policy.psi_threshold,
                }
            )

    labels = rows_new.loc[keep, schema.BOOLEAN_VALUE].to_numpy(dtype=bool)
    then, now = reference.get("prevalence"), _prevalence(labels)
    change = None if then is None or now is None or then == 0 else now / then - 1
    # The part of the change the reference's rounding cannot explain decides (profiles
    # from before the rounding have none).
    slack = float(reference.get("prevalence_rounding") or 0.0)
    beyond = None if change is None else prevalence_drifted(then, now, slack, policy)

    champion = set(reference["vocabulary"])
    current = set(map(str, new_vocabulary)) - {AGE[0]}
    lost, unknown = sorted(champion - current), sorted(current - champion)
    union = champion | current
    return {
        "version": PROFILE_VERSION,
        "split": ALL_SPLITS if split is None else split,
        "n_rows": {"reference": reference.get("n_rows"), "new": privacy.suppress(n)},
        "features": features,
        "max_psi": max((f["psi"] for f in features), default=None),
        "drifted_features": [f["name"] for f in features if f["drifted"]],
        "skipped": list(reference.get("skipped", [])),
        "prevalence": {
            "reference": then,
            "new": now,
            "relative_change": change,
            "rounding": slack,
            "drifted": beyond,
        },
        "vocabulary": {
            "champion": len(champion),
            "current": len(current),
            "lost": len(lost) / len(champion) if champion else 0.0,
            "new": len(unknown) / len(current) if current else 0.0,
            "jaccard": len(champion & current) / len(union) if union else 1.0,
            "lost_codes": lost[:MAX_LISTED_CODES],
            "new_codes": unknown[:MAX_LISTED_CODES],
        },
        "eps": EPS,
        "policy": policy.model_dump(),
    }


# ---------------------------------------------------------------------------- decide


def _psi_text(psi: float, threshold: float) -> str:
    """A PSI to 3 decimals, or to as many more (up to 6) as tell it from the threshold it
    is compared with: 0.2503 > 0.25, not 0.250 > 0.25."""
    for digits in range(3, 7):
        if psi == threshold or round(psi, digits) != round(threshold, digits):
            return f"{psi:.{digits}f}"
    return f"{psi:.6f}"


def decide(record: dict | None, policy: DriftPolicy) -> dict:
    """The action for this run under ``policy``, whether the data drifted, and why.

    ``record`` is :func:`compare`'s output, or None when there is no champion (the
    action is then ``retrain`` with the reason ``"no champion"``). The thresholds of
    ``policy`` apply here, whatever policy ``compare`` flagged with, except to a feature
    whose PSI ``compare`` withheld: its ``drifted`` flag (set on the exact PSI under
    ``compare``'s policy) is used. :func:`assess` decides on the exact PSIs. A
    prevalence that could not be compared (suppressed) is a reason but not drift.

    The reasons never quote a withheld PSI: published PSIs of drifted features come
    first, largest first, then drifted features with a withheld PSI in the record's
    (importance) order, so that the order bounds no withheld value either.
    """
    if record is None:
        return _decision("retrain", False, ["no champion"], policy)
    reasons: list[str] = []
    drifted = False

    threshold = policy.psi_threshold
    flagged_at = (record.get("policy") or {}).get("psi_threshold", threshold)
    features = [
        f for f in record.get("features", []) if f.get("psi") is not None or f.get("psi_withheld")
    ]

    def moved(f: dict) -> bool:
        return f["psi"] > threshold if f.get("psi") is not None else bool(f.get("drifted"))

    shown = [f for f in features if not f.get("psi_withheld")]
    hidden = [f for f in features if f.get("psi_withheld")]
    for f in sorted(filter(moved, shown), key=lambda f: -f["psi"]):
        reasons.append(
            f"feature {f['name']} ({f['description']}) drifted: PSI {_psi_text(f['psi'], threshold)} > {threshold:g}"
        )
    for f in filter(moved, hidden):
        above = threshold if f.get("psi") is not None else flagged_at
        reasons.append(
            f"feature {f['name']} ({f['description']}) drifted: PSI > {above:g} ({WITHHELD})"
        )
    if any(map(moved, features)):
        drifted = True
    elif shown:
        top = max(shown, key=lambda f: f["psi"])
        largest = "largest published PSI" if hidden else "largest PSI"
        withheld = f"; PSI withheld for {len(hidden)} of them ({SMALL_BIN})" if hidden else ""
        reasons.append(
            f"no top feature drifted: {largest} {_psi_text(top['psi'], threshold)} ({top['name']}, {top['description']}) <= {threshold:g} over {len(features)} features{withheld}"
        )
    elif features:
        reasons.append(
            f"no top feature drifted: PSI <= {threshold:g} over {len(features)} features; PSI withheld for each ({SMALL_BIN})"
        )
    else:
        reasons.append("no feature could be compared (none profiled without small cells)")

    prev = record.get("prevalence") or {}
    change, then, now = prev.get("relative_change"), prev.get("reference"), prev.get("new")
    if change is None:
        reasons.append(
            "outcome prevalence not compared: withheld (1 to 10 events or non-events) or zero in the champion's train split"
        )
    else:
        beyond = prevalence_drifted(then, now, float(prev.get("rounding") or 0.0), policy)
        drifted |= beyond
        reasons.append(
            f"outcome prevalence {'changed' if beyond else 'stable'}: {then:.2%} -> {now:.2%} ({change:+.1%}), "
            f"{'beyond' if beyond else 'within'} ±{policy.prevalence_change:.0%}"
        )

    vocab = record.get("vocabulary") or {}
    lost, new = vocab.get("lost", 0.0), vocab.get("new", 0.0)
    if lost > policy.churn_threshold:
        drifted = True
        reasons.append(
            f"vocabulary churn: {lost:.1%} of the champion's codes are missing from the new vocabulary (> {policy.churn_threshold:.0%})"
        )
    if new > policy.churn_threshold:
        drifted = True
        reasons.append(
            f"vocabulary churn: {new:.1%} of the new vocabulary's codes are unknown to the champion (> {policy.churn_threshold:.0%})"
        )
    if lost <= policy.churn_threshold and new <= policy.churn_threshold:
        reasons.append(
            f"vocabulary stable: {lost:.1%} of the champion's codes lost, {new:.1%} of the new codes unknown to it (<= {policy.churn_threshold:.0%})"
        )
    action = policy.on_drift if drifted else policy.on_stable
    return _decision(action, drifted, reasons, policy)


def combine(decisions: dict[str, dict], policy: DriftPolicy) -> dict:
    """One decision for a model that every site relies on (the network's model), from
    each site's :func:`decide` against its own part of the champion's profile: ``alert``
    when any site alerts, ``skip`` only when every site skips, else ``retrain``; drifted
    when any site drifted. The reasons are each site's, prefixed with its name.

    Raises ValueError when ``decisions`` is empty."""
    if not decisions:
        raise ValueError("combine needs the drift decision of one site at least; got none.")
    actions = {d["action"] for d in decisions.values()}
    action = "alert" if "alert" in actions else "skip" if actions == {"skip"} else "retrain"
    drifted = any(d["drifted"] for d in decisions.values())
    reasons = [f"{site}: {r}" for site, d in decisions.items() for r in d["reasons"]]
    return _decision(action, drifted, reasons, policy)


def _decision(action: str, drifted: bool, reasons: list[str], policy: DriftPolicy) -> dict:
    return {
        "action": action,
        "drifted": drifted,
        "reasons": reasons,
        "meaning": ACTIONS[action],
        "policy": policy.model_dump(),
    }


def assess(
    reference: dict | None,
    X_new: sp.spmatrix | None,
    rows_new: pd.DataFrame | None,
    new_vocabulary: Sequence[str],
    policy: DriftPolicy,
    *,
    split: str | None = None,
    columns: pd.DataFrame | None = None,
) -> dict:
    """The drift record of a run: ``{"compare": compare(...) or None, "decision": decide(...)}``.

    The decision is made on the exact PSIs, before :func:`compare`'s small-cell rule
    withholds some of them from the published ``compare`` record (the reasons quote no
    withheld PSI). With no reference (no champion yet) ``compare`` is None and the
    decision is ``decide(None, policy)``. This is the shape the report,
    :func:`drift_metrics` and :func:`markdown` read (extra keys, such as the champion's
    version, are ignored).
    """
    if reference is None:
        return {"compare": None, "decision": decide(None, policy)}
    if X_new is None or rows_new is None:
        raise ValueError("X_new and rows_new are needed when there is a reference profile.")
    exact = _compare(
        reference, X_new, rows_new, new_vocabulary, split=split, columns=columns, policy=policy
    )
    return {"compare": _published(exact), "decision": decide(exact, policy)}


# --------------------------------------------------------------------------- logging


def drift_metrics(drift: dict | None) -> dict[str, float]:
    """Flat MLflow metrics of an :func:`assess` record, the same names every run.

    ``drift/detected`` (0 or 1) whenever there is a decision; ``drift/max_psi`` (the
    largest published PSI), ``drift/features_drifted``,
    ``drift/prevalence_relative_change`` and ``drift/vocabulary_{lost,new,jaccard}`` when
    there was a comparison. Values that are None (withheld or not computed) are left out.
    """
    drift = drift or {}
    out: dict[str, float] = {}
    decision = drift.get("decision")
    if decision is not None:
        out["drift/detected"] = float(bool(decision.get("drifted")))
    record = drift.get("compare")
    if not record:
        return out
    prevalence, vocab = record.get("prevalence") or {}, record.get("vocabulary") or {}
    values = {
        "drift/max_psi": record.get("max_psi"),
        "drift/features_drifted": len(record.get("drifted_features") or []),
        "drift/prevalence_relative_change": prevalence.get("relative_change"),
        "drift/vocabulary_lost": vocab.get("lost"),
        "drift/vocabulary_new": vocab.get("new"),
        "drift/vocabulary_jaccard": vocab.get("jaccard"),
    }
    return out | {k: float(v) for k, v in values.items() if v is not None}


def markdown(drift: dict | None) -> str:
    """A short Markdown summary of an :func:`assess` record (for a Prefect artifact):
    action, reasons, the PSI table (a withheld PSI shows as "withheld"), prevalence then
    and now, vocabulary churn."""
    drift = drift or {}
    lines = ["## Data drift since the champion", ""]
    decision = drift.get("decision")
    if decision:
        meaning = decision.get("meaning") or ACTIONS.get(decision.get("action", ""), "")
        lines += [f"**Action: {decision['action']}**" + (f" ({meaning})." if meaning else "."), ""]
        lines += [f"- {r}" for r in decision.get("reasons") or []] + [""]
    record = drift.get("compare")
    if not record:
        lines.append(
            "No champion before this run: nothing to compare."
            if not decision or decision.get("reasons") == ["no champion"]
            else "Nothing to compare with the champion."
        )
        return "\n".join(lines) + "\n"

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.2%}"

    max_psi = record.get("max_psi")
    withheld = sum(1 for f in record["features"] if f.get("psi") is None)
    lines += [
        f"Max PSI: {'–' if max_psi is None else f'{max_psi:.3f}'} (rows: {record['split']})"
        + (
            f"; PSI withheld for {withheld} feature{'s' if withheld > 1 else ''} ({SMALL_BIN})"
            if withheld
            else ""
        ),
        "",
    ]
    lines += ["| feature | PSI | drifted |", "|---|---:|:---:|"]
    for f in record["features"]:
        name = str(f["description"]).replace("|", "\\|")
        value = "withheld" if f.get("psi") is None else f"{f['psi']:.3f}"
        lines.append(f"| {name} | {value} | {'yes' if f['drifted'] else ''} |")
    prev, vocab = record["prevalence"], record["vocabulary"]
    change = prev["relative_change"]
    lines += [
        "",
        f"Prevalence: {pct(prev['reference'])} (champion's train split) -> {pct(prev['new'])} (new), "
        f"change {'–' if change is None else f'{change:+.1%}'}.",
        f"Vocabulary: {vocab['lost']:.1%} of the champion's {vocab['champion']} codes lost, "
        f"{vocab['new']:.1%} of {vocab['current']} new codes unknown, Jaccard {vocab['jaccard']:.3f}.",
    ]
    return "\n".join(lines) + "\n"
