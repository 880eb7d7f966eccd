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
2. Bottom-up, a node whose child is a leaf that breaks the rule is collapsed into one
   leaf holding both children's rows, until no leaf breaks it. A tree whose root breaks
   it cannot be released (the whole train split is too small).
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

import json
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import xgboost as xgb

from forewarn.records import privacy

ROOT_PARENT = 2147483647  # XGBoost's parent id of a root
HESSIAN_EPS = 1e-16  # XGBoost's floor on the logistic loss's hessian


@dataclass(frozen=True)
class ReleaseSettings:
    """The fit's settings that set a leaf's value (``XGBClassifier`` names)."""

    learning_rate: float
    reg_lambda: float
    max_delta_step: float = 0.0
    scale_pos_weight: float = 1.0
    num_parallel_tree: int = 1

    @classmethod
    def from_params(cls, params: dict) -> ReleaseSettings:
        """From ``XGBClassifier`` keyword arguments or native ``xgb.train`` parameters."""
        return cls(
            learning_rate=float(params.get("learning_rate", params.get("eta", 0.3))),
            reg_lambda=float(params.get("reg_lambda", params.get("lambda", 1.0))),
            max_delta_step=float(params.get("max_delta_step") or 0.0),
            scale_pos_weight=float(params.get("scale_pos_weight") or 1.0),
            num_parallel_tree=int(params.get("num_parallel_tree") or 1),
        )


def _ok(events: int, non_events: int, min_cell: int) -> bool:
    return privacy.suppress(events, min_cell=min_cell) is not None and privacy.suppress(non_events, min_cell=min_cell) is not None


def _leaf_counts(leaf: np.ndarray, y: np.ndarray, subjects: np.ndarray) -> dict[int, tuple[int, int]]:
    """(subjects with the outcome, subjects without) among the rows of each leaf id."""
    out = {}
    order = np.lexsort((subjects, y, leaf))
    lf, yy, ss = leaf[order], y[order], subjects[order]
    first = np.r_[True, (lf[1:] != lf[:-1]) | (yy[1:] != yy[:-1]) | (ss[1:] != ss[:-1])]
    for node, label in zip(lf[first], yy[first], strict=True):
        e, n = out.get(int(node), (0, 0))
        out[int(node)] = (e + int(label), n + int(not label))
    return out


def _prune(tree: dict, leaf: np.ndarray, y: np.ndarray, subjects: np.ndarray, min_cell: int) -> np.ndarray:
    """Collapse ``tree``'s nodes (in place, as child arrays; orphans dropped later) until
    every leaf reached by the rows obeys the rule; returns each row's new leaf."""
    left, right, parents = tree["left_children"], tree["right_children"], tree["parents"]
    leaf = leaf.copy()
    counts = _leaf_counts(leaf, y, subjects)
    while True:
        bad = [node for node, (e, n) in counts.items() if not _ok(e, n, min_cell)]
        if not bad:
            return leaf
        node = bad[0]
        parent = parents[node]
        if parent == ROOT_PARENT:
            e, n = counts[node]
            raise ValueError(
                f"the train split holds {privacy.shown(e, min_cell=min_cell)} subjects with the outcome and "
                f"{privacy.shown(n, min_cell=min_cell)} without: a model trained on it would carry a count below "
                f"{min_cell}, so it cannot leave the site. Add people or train across sites."
            )
        # Every row below ``parent`` now ends in it.
        below = _descendants(left, right, parent)
        moved = np.isin(leaf, list(below))
        leaf[moved] = parent
        left[parent] = right[parent] = -1
        counts = {k: v for k, v in counts.items() if k not in below}
        counts |= _leaf_counts(leaf[moved], y[moved], subjects[moved])


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
    changed = 0
    per_round = settings.num_parallel_tree
    for start in range(first_tree, len(trees), per_round):
        p = 1.0 / (1.0 + np.exp(-margin))
        g = (p - y) * weight
        h = np.maximum(p * (1.0 - p), HESSIAN_EPS) * weight
        step = np.zeros_like(margin)
        for t in range(start, min(start + per_round, len(trees))):
            tree = trees[t]
            nodes = len(tree["left_children"])
            leaf = _prune(tree, leaves[:, t], y, subjects, min_cell)
            new = _compact(tree)
            changed += int(len(tree["left_children"]) != nodes)
            renumber = np.full(nodes, -1, dtype=np.int64)
            renumber[list(new)] = list(new.values())
            step += _refit(tree, renumber[leaf], g, h, settings)
        margin += step
    leaves_after = sum(sum(1 for c in trees[t]["left_children"] if c == -1) for t in range(first_tree, len(trees)))
    released = xgb.Booster(model_file=bytearray(json.dumps(model).encode()))
    return released, {"trees": len(trees) - first_tree, "leaves_before": leaves_before, "leaves_after": leaves_after,
                      "trees_changed": changed, "min_cell": min_cell}
