"""Trees that may leave the site: the rule of 11 for a model's leaves.

A boosted tree model carries aggregates of its training rows. The first tree grows from
one constant risk (the train split's prevalence), so each of its leaves' value and cover
(``sum_hessian``) give that leaf's rows and events exactly; a leaf on 3 events is a
cell of 3, with its defining splits as the cell's description. Every model Forewarn
trains leaves the site: registered in the shared MLflow store, shipped to the other
sites for external validation, or handed on in the network's cyclic boosting.

:func:`release_trees` makes a model's trees obey the rule every other aggregate obeys:
every leaf holds no subject with the outcome or at least 11, and no subject without it
or at least 11 (counted as subjects of the train rows that reach it, not rows).

1. Each row of the train split is routed through the trees (``pred_leaf``).
2. A leaf that breaks the rule is mended where its split was made, deepest first:
   - first the split's threshold on the same feature is moved to the one where both sides
     hold 0 or 11 subjects of each class with the largest Newton gain on all train rows
     (``G^2 / (H + lambda)`` summed over the sides, as XGBoost scores a split; missing
     values keep their default side; the thresholds are XGBoost's own histogram cuts of
     the train rows), and the rows are routed anew below it: the small
     high-risk group the fit isolated is kept, widened to 11 subjects, rather than merged
     away. A split is moved once; leaves below it that then break the rule are mended in
     turn;
   - when no threshold obeys the rule and gains, or the split was moved before, the
     split is collapsed into one leaf holding all the rows below it.
   A split that no row reaches on one side any more is spliced out.
   Repeated until no leaf breaks the rule. A tree whose root breaks it cannot be released
   (the whole train split is too small).
2b. No split's threshold may show a value either. XGBoost's last histogram cut of a
   feature is its largest value doubled (plus 1e-5), and a split that parts present
   values from missing ones sits there; a cut among the 10 largest or smallest subjects'
   values shows theirs. So every threshold must have at least 11 train subjects with a
   value below it and 11 at or above it, or be +-FLT_MAX (present against missing: every
   finite value is below FLT_MAX). A threshold that breaks this is replaced, where one
   routes every train row below the split as before, by +-FLT_MAX (the split's rows'
   present values all go one way) or by the nearest cut that obeys it; else the split
   is moved (as above, among thresholds that obey it) or collapsed, and the leaves are
   checked again. Moved splits only ever choose thresholds that obey it.
3. Every leaf value, and every node's cover and weight, is recomputed from all train rows
   by XGBoost's own Newton step (``-G / (H + lambda)``, capped at ``max_delta_step``,
   times the learning rate, divided among a round's parallel trees), tree after tree on
   the margins of the released trees before it. The values the fit left came from its
   row subsample, whose counts the rule did not see; the recomputed ones are sums over
   the checked leaves. The recomputation reproduces XGBoost's own leaf values on the
   rows it was fitted on (tested).

The gain of each split (``loss_changes``) is zeroed: nothing in Forewarn reads it (the
explanations are TreeSHAP, which reads covers), and the fit's gains came from the
subsample. The base score (the train split's prevalence) is a count over the whole train
split, which the root's check keeps at 0 or at least 11 events and non-events.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import xgboost as xgb

from forewarn.records import privacy

ROOT_PARENT = 2147483647  # XGBoost's parent id of a root
HESSIAN_EPS = 1e-16  # XGBoost's floor on the logistic loss's hessian
# The threshold of a split that parts present values from missing ones: every finite value
# is below FLT_MAX (goes left) and none is below -FLT_MAX (goes right). It shows no value.
FLT_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ReleaseSettings:
    """The fit's settings that set a leaf's value (``XGBClassifier`` names)."""

    learning_rate: float
    reg_lambda: float
    max_delta_step: float = 0.0
    scale_pos_weight: float = 1.0
    num_parallel_tree: int = 1
    min_child_weight: float = 0.0
    max_bin: int = 256
    move_splits: bool = True

    @classmethod
    def from_params(cls, params: dict) -> ReleaseSettings:
        """From ``XGBClassifier`` keyword arguments (``get_xgb_params()``, where None means
        XGBoost's default) or native ``xgb.train`` parameters."""

        def get(default, *names):
            return next((params[n] for n in names if params.get(n) is not None), default)

        return cls(
            learning_rate=float(get(0.3, "learning_rate", "eta")),
            reg_lambda=float(get(1.0, "reg_lambda", "lambda")),
            max_delta_step=float(get(0.0, "max_delta_step")),
            scale_pos_weight=float(get(1.0, "scale_pos_weight")),
            num_parallel_tree=int(get(1, "num_parallel_tree")),
            min_child_weight=float(get(1.0, "min_child_weight")),
            max_bin=int(get(256, "max_bin")),
        )


def _ok(events: int, non_events: int, min_cell: int) -> bool:
    return privacy.suppress(events, min_cell=min_cell) is not None and privacy.suppress(non_events, min_cell=min_cell) is not None


def _leaf_counts(leaf: np.ndarray, y: np.ndarray, subjects: np.ndarray) -> dict[int, tuple[int, int]]:
    """(subjects with the outcome, subjects without) among the rows of each leaf id."""
    if leaf.size == 0:
        return {}
    order = np.lexsort((subjects, y, leaf))
    lf, yy, ss = leaf[order], y[order], subjects[order]
    first = np.r_[True, (lf[1:] != lf[:-1]) | (yy[1:] != yy[:-1]) | (ss[1:] != ss[:-1])]
    # One entry per (leaf, label, subject): counted per leaf in numpy (a Python loop over
    # them was a third of a model's training time).
    nodes, index = np.unique(lf[first], return_inverse=True)
    events = np.bincount(index, weights=(yy[first] != 0), minlength=nodes.size).astype(np.int64)
    non_events = np.bincount(index, minlength=nodes.size) - events
    return {int(k): (int(e), int(n)) for k, e, n in zip(nodes, events, non_events, strict=True)}


@dataclass
class _Rows:
    """What mending a split needs: the train rows' features (CSC when sparse, absent
    entries missing as XGBoost reads them), labels, subjects, and this round's weighted
    gradients and hessians."""

    X: sp.csc_matrix | np.ndarray
    y: np.ndarray
    subjects: np.ndarray
    g: np.ndarray
    h: np.ndarray
    cut_ptr: np.ndarray  # XGBoost's histogram cuts of the train rows (QuantileDMatrix.get_quantile_cut)
    cut_values: np.ndarray
    min_cell: int = privacy.MIN_CELL
    _spread: dict = dataclasses.field(default_factory=dict)  # feature -> each subject's smallest and largest value, sorted

    def cuts(self, feature: int) -> np.ndarray:
        return self.cut_values[self.cut_ptr[feature]:self.cut_ptr[feature + 1]].astype(np.float32)

    def threshold_ok(self, feature: int, thresholds: np.ndarray) -> np.ndarray:
        """Whether each threshold on ``feature`` may leave the site: +-FLT_MAX (it parts
        present values from missing ones and shows none), or at least ``min_cell``
        subjects of the train split have a value below it and as many a value at or above
        it. A threshold past the last values (XGBoost's last cut is the feature's largest
        value doubled) or among the 10 most extreme subjects' values would show them."""
        if feature not in self._spread:
            if sp.issparse(self.X):
                start, end = self.X.indptr[feature], self.X.indptr[feature + 1]
                values, who = self.X.data[start:end], self.subjects[self.X.indices[start:end]]
            else:
                values, who = np.asarray(self.X[:, feature]), self.subjects
            keep = ~np.isnan(values)
            values, who = values[keep].astype(np.float32), who[keep]
            order = np.lexsort((values, who))
            values, who = values[order], who[order]
            first = np.r_[True, who[1:] != who[:-1]] if who.size else np.zeros(0, bool)
            last = np.r_[who[1:] != who[:-1], True] if who.size else np.zeros(0, bool)
            self._spread[feature] = (np.sort(values[first]), np.sort(values[last]))
        lowest, highest = self._spread[feature]
        t = np.asarray(thresholds, dtype=np.float32)
        below = np.searchsorted(lowest, t, side="left")  # subjects with a value < t
        at_or_above = highest.size - np.searchsorted(highest, t, side="left")  # subjects with a value >= t
        return (np.abs(t) == np.float32(FLT_MAX)) | ((below >= self.min_cell) & (at_or_above >= self.min_cell))

    def column(self, feature: int, rows: np.ndarray) -> np.ndarray:
        """``feature``'s values on ``rows`` (sorted), NaN where missing."""
        if not sp.issparse(self.X):
            return np.asarray(self.X[rows, feature], dtype=np.float32)
        start, end = self.X.indptr[feature], self.X.indptr[feature + 1]
        idx, vals = self.X.indices[start:end], self.X.data[start:end]
        pos = np.searchsorted(idx, rows)
        hit = pos < idx.size
        hit[hit] = idx[pos[hit]] == rows[hit]
        out = np.full(rows.size, np.nan, dtype=np.float32)
        out[hit] = vals[pos[hit]]
        return out


def _subjects_ok(rows: np.ndarray, data: _Rows, min_cell: int) -> bool:
    y, s = data.y[rows], data.subjects[rows]
    return _ok(np.unique(s[y]).size, np.unique(s[~y]).size, min_cell)


def _route(tree: dict, node: int, rows: np.ndarray, data: _Rows) -> np.ndarray:
    """The leaf below ``node`` that each of ``rows`` (sorted) reaches, as XGBoost routes
    them: left when the value is below the split's threshold or missing and the split's
    default is left."""
    left, right = tree["left_children"], tree["right_children"]
    out = np.empty(rows.size, dtype=np.int64)
    stack = [(node, np.arange(rows.size))]
    while stack:
        k, idx = stack.pop()
        if left[k] == -1:
            out[idx] = k
            continue
        values = data.column(tree["split_indices"][k], rows[idx])
        goes_left = np.where(np.isnan(values), bool(tree["default_left"][k]),
                             values < np.float32(tree["split_conditions"][k]))
        stack += [(left[k], idx[goes_left]), (right[k], idx[~goes_left])]
    return out


def _move_split(tree: dict, node: int, leaf: np.ndarray, data: _Rows, settings: ReleaseSettings, min_cell: int,
                tries: int = 16) -> np.ndarray | None:
    """Move ``node``'s threshold to the one, on the same feature, where each side holds 0
    or ``min_cell`` subjects of each class and the Newton gain on all train rows is
    largest; the rows are routed anew below it. The thresholds tried are XGBoost's own
    histogram cuts of the feature (those the fit chose from), so a moved split reveals no
    value the fit could not have. Returns the rows' new leaves, or None when no threshold
    obeys the rule and gains."""
    left_id, right_id = tree["left_children"][node], tree["right_children"][node]
    rows = np.flatnonzero(np.isin(leaf, [node, *_descendants(tree["left_children"], tree["right_children"], node)]))
    feature = tree["split_indices"][node]
    values = data.column(feature, rows)
    missing = np.isnan(values)
    default_left = bool(tree["default_left"][node])
    order = np.argsort(values[~missing], kind="stable")
    v, r = values[~missing][order], rows[~missing][order]
    # The cuts (those that may leave the site), then the two that part present values from missing ones.
    thresholds = np.r_[data.cuts(feature), np.float32([-FLT_MAX, FLT_MAX])]
    below = np.searchsorted(v, thresholds, side="left")  # the present rows that go left (x < threshold)
    y = data.y.astype(np.int64)
    miss = rows[missing]

    def sums(a: np.ndarray) -> tuple[np.ndarray, float]:
        return np.r_[0.0, np.cumsum(a[r])][below], float(a[miss].sum())

    (ev, ev_m), (rw, rw_m) = sums(y), sums(np.ones_like(y))
    (G, G_m), (H, H_m) = sums(data.g), sums(data.h)
    add = 1.0 if default_left else 0.0
    left = {"e": ev + add * ev_m, "n": (rw - ev) + add * (rw_m - ev_m), "G": G + add * G_m, "H": H + add * H_m}
    total = {"e": float(y[rows].sum()), "n": float((1 - y[rows]).sum()), "G": float(data.g[rows].sum()),
             "H": float(data.h[rows].sum())}
    right = {k: total[k] - left[k] for k in left}

    def fits(count: np.ndarray) -> np.ndarray:  # rows: a necessary condition on subjects
        return (count == 0) | (count >= min_cell)

    lam = settings.reg_lambda
    gain = left["G"] ** 2 / (left["H"] + lam) + right["G"] ** 2 / (right["H"] + lam) - total["G"] ** 2 / (total["H"] + lam)
    ok = (fits(left["e"]) & fits(left["n"]) & fits(right["e"]) & fits(right["n"])
          & (left["e"] + left["n"] > 0) & (right["e"] + right["n"] > 0)
          & (left["H"] >= settings.min_child_weight) & (right["H"] >= settings.min_child_weight) & (gain > 0)
          & data.threshold_ok(feature, thresholds))
    for k in np.flatnonzero(ok)[np.argsort(-gain[ok], kind="stable")][:tries]:
        goes_left = np.zeros(rows.size, bool)
        goes_left[~missing] = values[~missing] < thresholds[k]
        goes_left[missing] = default_left
        if _subjects_ok(rows[goes_left], data, min_cell) and _subjects_ok(rows[~goes_left], data, min_cell):
            tree["split_conditions"][node] = float(thresholds[k])
            leaf = leaf.copy()
            leaf[rows[goes_left]] = _route(tree, left_id, rows[goes_left], data)
            leaf[rows[~goes_left]] = _route(tree, right_id, rows[~goes_left], data)
            return leaf
    return None


def _unshown_threshold(tree: dict, node: int, leaf: np.ndarray, data: _Rows) -> bool:
    """Give ``node``'s split a threshold that may leave the site (``_Rows.threshold_ok``)
    and routes every train row below it as before: +-FLT_MAX when its rows' present values
    all go one way, else the cut nearest the old threshold among those between the present
    values that go left and those that go right. Returns False when there is none."""
    feature, threshold = tree["split_indices"][node], np.float32(tree["split_conditions"][node])
    rows = np.flatnonzero(np.isin(leaf, list(_descendants(tree["left_children"], tree["right_children"], node))))
    values = data.column(feature, rows)
    values = values[~np.isnan(values)]
    goes_left = values < threshold
    if goes_left.all() or not goes_left.any():
        tree["split_conditions"][node] = FLT_MAX if goes_left.all() else -FLT_MAX
        return True
    cuts = data.cuts(feature)
    fit = (cuts > values[goes_left].max()) & (cuts <= values[~goes_left].min()) & data.threshold_ok(feature, cuts)
    if not fit.any():
        return False
    candidates = cuts[fit]
    tree["split_conditions"][node] = float(candidates[np.argmin(np.abs(candidates - threshold))])
    return True


def _shown_threshold(tree: dict, leaf: np.ndarray, data: _Rows, replaced: list[int]) -> int | None:
    """Mend the thresholds of ``tree``'s splits that would show a value (``_unshown_threshold``),
    counting them in ``replaced``; returns the deepest split that cannot be mended so, if any."""
    left, right, parents = tree["left_children"], tree["right_children"], tree["parents"]
    splits, queue = [], [0]
    while queue:
        k = queue.pop()
        if left[k] != -1:
            splits.append(k)
            queue += [left[k], right[k]]
    bad = [k for k in splits if not data.threshold_ok(tree["split_indices"][k], np.float32([tree["split_conditions"][k]]))[0]]
    for k in sorted(bad, key=lambda k: (-_depth(parents, k), k)):
        if not _unshown_threshold(tree, k, leaf, data):
            return k
        replaced[0] += 1
    return None


def _depth(parents: list[int], node: int) -> int:
    depth = 0
    while parents[node] != ROOT_PARENT:
        node, depth = parents[node], depth + 1
    return depth


def _prune(tree: dict, leaf: np.ndarray, y: np.ndarray, subjects: np.ndarray, min_cell: int, data: _Rows,
           settings: ReleaseSettings) -> tuple[np.ndarray, int, int]:
    """Mend ``tree``'s nodes (in place, as child arrays; orphans dropped later) until
    every leaf reached by the rows obeys the rule and no split's threshold shows a value;
    returns each row's new leaf, how many splits were moved (``settings.move_splits``)
    rather than collapsed, and how many thresholds were replaced keeping the rows' routes."""
    left, right, parents = tree["left_children"], tree["right_children"], tree["parents"]
    leaf = leaf.copy()
    counts = _leaf_counts(leaf, y, subjects)
    tried: set[int] = set()
    moved, replaced = 0, [0]
    while True:
        bad = [node for node, (e, n) in counts.items() if not _ok(e, n, min_cell)]
        if bad:
            node = max(bad, key=lambda k: (_depth(parents, k), -k))
            parent = parents[node]
            if parent == ROOT_PARENT:
                e, n = counts[node]
                raise ValueError(
                    f"the train split holds {privacy.shown(e, min_cell=min_cell)} subjects with the outcome and "
                    f"{privacy.shown(n, min_cell=min_cell)} without: a model trained on it would carry a count below "
                    f"{min_cell}, so it cannot leave the site. Add people or train across sites."
                )
        else:  # the leaves obey the rule; a split whose threshold shows a value is mended itself
            parent = _shown_threshold(tree, leaf, data, replaced)
            if parent is None:
                return (_drop_empty(tree, leaf) if moved else leaf), moved, replaced[0]
        if settings.move_splits and parent not in tried:
            tried.add(parent)
            mended = _move_split(tree, parent, leaf, data, settings, min_cell)
            if mended is not None:
                # The leaves below ``parent`` hold other rows now; those that break the rule
                # are mended in turn (deeper ones first; ``parent`` is not moved again).
                leaf, moved = mended, moved + 1
                below = _descendants(left, right, parent)
                counts = {k: v for k, v in counts.items() if k not in below}
                rows = np.isin(leaf, list(below))
                counts |= _leaf_counts(leaf[rows], y[rows], subjects[rows])
                continue
        # Every row below ``parent`` now ends in it.
        below = _descendants(left, right, parent)
        moved_rows = np.isin(leaf, list(below))
        leaf[moved_rows] = parent
        left[parent] = right[parent] = -1
        counts = {k: v for k, v in counts.items() if k not in below}
        counts |= _leaf_counts(leaf[moved_rows], y[moved_rows], subjects[moved_rows])


def _drop_empty(tree: dict, leaf: np.ndarray) -> np.ndarray:
    """Splice out every split one of whose sides no train row reaches any more (a moved
    split above it took its rows): its other side takes its place. Returns the rows' leaves."""
    left, right, parents = tree["left_children"], tree["right_children"], tree["parents"]
    rows = np.bincount(leaf, minlength=len(left))
    leaf = leaf.copy()

    def reached(k: int) -> int:
        return int(rows[k] + sum(rows[d] for d in _descendants(left, right, k)))

    queue = [0]
    while queue:
        k = queue.pop()
        if left[k] == -1:
            continue
        if reached(left[k]) and reached(right[k]):
            queue += [left[k], right[k]]
            continue
        keep = right[k] if not reached(left[k]) else left[k]
        for key in ("split_indices", "split_conditions", "default_left", "split_type"):
            tree[key][k] = tree[key][keep]
        left[k], right[k] = left[keep], right[keep]
        if left[k] != -1:
            parents[left[k]] = parents[right[k]] = k
        leaf[leaf == keep] = k
        rows[k] += rows[keep]
        queue.append(k)
    return leaf


def _descendants(left: list[int], right: list[int], node: int) -> set[int]:
    out, stack = set(), [left[node], right[node]]
    while stack:
        k = stack.pop()
        if k == -1:
            continue
        out.add(k)
        stack += [left[k], right[k]]
    return out


def _compact(tree: dict) -> dict[int, int]:
    """Renumber the nodes still reached from the root, in breadth-first order as XGBoost
    writes them, dropping the collapsed ones; returns old id -> new id."""
    left, right = tree["left_children"], tree["right_children"]
    order, queue = [], [0]
    while queue:
        node = queue.pop(0)
        order.append(node)
        if left[node] != -1:
            queue += [left[node], right[node]]
    new = {old: i for i, old in enumerate(order)}
    per_node = ("base_weights", "default_left", "loss_changes", "split_conditions", "split_indices", "split_type",
                "sum_hessian")
    for key in per_node:
        tree[key] = [tree[key][old] for old in order]
    tree["left_children"] = [new[left[old]] if left[old] != -1 else -1 for old in order]
    tree["right_children"] = [new[right[old]] if right[old] != -1 else -1 for old in order]
    parents = [ROOT_PARENT] * len(order)
    for i, old in enumerate(order):
        if left[old] != -1:
            parents[new[left[old]]] = parents[new[right[old]]] = i
    tree["parents"] = parents
    tree["tree_param"] = tree["tree_param"] | {"num_nodes": str(len(order)), "num_deleted": "0"}
    if tree.get("categories_nodes"):
        raise ValueError("release_trees does not handle categorical splits; Forewarn's features are numeric.")
    return new


def _refit(tree: dict, leaf: np.ndarray, g: np.ndarray, h: np.ndarray, s: ReleaseSettings) -> np.ndarray:
    """Newton values of ``tree``'s nodes from the rows' gradients ``g`` and hessians ``h``
    (``leaf``: each row's node); sets leaf values, covers and weights; returns each row's
    leaf value."""
    n_nodes = len(tree["left_children"])
    G = np.bincount(leaf, weights=g, minlength=n_nodes)
    H = np.bincount(leaf, weights=h, minlength=n_nodes)
    left, right = tree["left_children"], tree["right_children"]
    for node in range(n_nodes - 1, -1, -1):  # children come after their parent
        if left[node] != -1:
            G[node] = G[left[node]] + G[right[node]]
            H[node] = H[left[node]] + H[right[node]]
    weight = -G / (H + s.reg_lambda)
    if s.max_delta_step > 0:
        weight = np.clip(weight, -s.max_delta_step, s.max_delta_step)
    value = weight * s.learning_rate / s.num_parallel_tree
    is_leaf = np.array([c == -1 for c in left])
    tree["split_conditions"] = [float(value[i]) if is_leaf[i] else c for i, c in enumerate(tree["split_conditions"])]
    tree["split_indices"] = [0 if is_leaf[i] else c for i, c in enumerate(tree["split_indices"])]
    tree["default_left"] = [0 if is_leaf[i] else c for i, c in enumerate(tree["default_left"])]
    tree["base_weights"] = [float(value[i]) if is_leaf[i] else float(weight[i]) for i in range(n_nodes)]
    tree["sum_hessian"] = [float(v) for v in H]
    tree["loss_changes"] = [0.0] * n_nodes
    return value[leaf]


def release_trees(
    booster: xgb.Booster, X: sp.spmatrix, y: np.ndarray, subjects: np.ndarray, settings: ReleaseSettings, *,
    base_margin: np.ndarray | None = None, first_tree: int = 0, min_cell: int = privacy.MIN_CELL,
) -> tuple[xgb.Booster, dict]:
    """``booster`` with its trees from ``first_tree`` on made fit to leave the site (see the
    module's docstring), from the train rows ``X``, ``y`` (their ``subjects``) it was fitted
    on and their ``base_margin`` when it had one. The trees before ``first_tree`` (another
    site's, in the network's cyclic boosting) are kept as they are.

    Returns the new booster (its attributes, such as ``best_iteration``, kept) and a
    summary: trees, leaves before and after, trees changed.
    """
    y = np.asarray(y, bool)
    subjects = np.asarray(subjects)
    model = json.loads(bytes(booster.save_raw("json")))
    trees = model["learner"]["gradient_booster"]["model"]["trees"]
    dm = xgb.DMatrix(X, base_margin=base_margin)
    leaves = booster.predict(dm, pred_leaf=True, strict_shape=True).reshape(X.shape[0], -1).astype(np.int64)
    if leaves.shape[1] != len(trees):
        raise ValueError(f"expected one leaf per tree ({len(trees)}); got {leaves.shape[1]}.")
    # The margin before any tree: the prediction less the trees' leaf values (a base_margin or the base score).
    total = booster.predict(dm, output_margin=True)
    by_tree = np.stack([np.asarray(trees[t]["split_conditions"], dtype=np.float64)[leaves[:, t]] for t in range(len(trees))],
                       axis=1)
    margin = total.astype(np.float64) - by_tree.sum(axis=1)
    margin += by_tree[:, :first_tree].sum(axis=1)  # the kept trees' contributions
    weight = np.where(y, settings.scale_pos_weight, 1.0)
    leaves_before = sum(sum(1 for c in trees[t]["left_children"] if c == -1) for t in range(first_tree, len(trees)))
    changed = moved = replaced = 0
    per_round = settings.num_parallel_tree
    cut_ptr, cut_values = xgb.QuantileDMatrix(X, max_bin=settings.max_bin).get_quantile_cut()
    features = _Rows(X.tocsc() if sp.issparse(X) else np.asarray(X), y, subjects, np.empty(0), np.empty(0),
                     np.asarray(cut_ptr), np.asarray(cut_values), min_cell)
    for start in range(first_tree, len(trees), per_round):
        p = 1.0 / (1.0 + np.exp(-margin))
        g = (p - y) * weight
        h = np.maximum(p * (1.0 - p), HESSIAN_EPS) * weight
        step = np.zeros_like(margin)
        for t in range(start, min(start + per_round, len(trees))):
            tree = trees[t]
            nodes = len(tree["left_children"])
            leaf, moves, thresholds = _prune(tree, leaves[:, t], y, subjects, min_cell,
                                             dataclasses.replace(features, g=g, h=h), settings)
            new = _compact(tree)
            changed += int(len(tree["left_children"]) != nodes or moves > 0)
            moved += moves
            replaced += thresholds
            renumber = np.full(nodes, -1, dtype=np.int64)
            renumber[list(new)] = list(new.values())
            step += _refit(tree, renumber[leaf], g, h, settings)
        margin += step
    leaves_after = sum(sum(1 for c in trees[t]["left_children"] if c == -1) for t in range(first_tree, len(trees)))
    released = xgb.Booster(model_file=bytearray(json.dumps(model).encode()))
    return released, {"trees": len(trees) - first_tree, "leaves_before": leaves_before, "leaves_after": leaves_after,
                      "trees_changed": changed, "splits_moved": moved, "thresholds_replaced": replaced,
                      "min_cell": min_cell}
