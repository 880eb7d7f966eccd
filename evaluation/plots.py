"""Figures as PNG bytes (headless Agg backend; every figure is closed after use)."""

from __future__ import annotations

import io
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def roc_pr(curves: dict[str, pd.DataFrame], prevalence: float) -> bytes:
    """ROC and precision-recall curves, one line per model: ``{model: points}``, the
    operating points that may leave the site (:func:`clinical.disclosed_curve`'s frames),
    with ``prevalence`` as the precision-recall chance line."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, points in curves.items():
        ax1.plot(points["fpr"].astype(float), points["tpr"].astype(float), marker=".", label=name)
        pr = points.dropna(subset=["precision"])
        ax2.plot(pr["recall"].astype(float), pr["precision"].astype(float), marker=".", label=name)
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax2.axhline(prevalence, ls=":", c="grey", label=f"prevalence {prevalence:.3f}")
    ax1.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (held-out)")
    ax2.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall (held-out)")
    ax1.legend(loc="lower right")
    ax2.legend(loc="upper right")
    return _png(fig)


def calibration(curves: dict[str, pd.DataFrame], smoothed: tuple[str, pd.DataFrame] | None = None) -> bytes:
    """Observed against predicted risk by tenth of risk; withheld groups are not drawn.
    ``smoothed``: (model name, :func:`forewarn.evaluation.clinical.smoothed_calibration`'s
    curve), drawn as a line when not withheld."""
    fig, ax = plt.subplots(figsize=(5, 4.2))
    top = 0.0
    for name, frame in curves.items():
        shown = frame.dropna(subset=["mean_predicted", "observed"]).astype({"mean_predicted": float, "observed": float})
        ax.plot(shown["mean_predicted"], shown["observed"], marker="o", label=name)
        if len(shown):
            top = max(top, float(shown[["mean_predicted", "observed"]].to_numpy().max()))
    if smoothed is not None:
        name, frame = smoothed
        line = frame.dropna(subset=["predicted", "observed"]).astype({"predicted": float, "observed": float})
        if len(line):
            ax.plot(line["predicted"], line["observed"], c="black", lw=1.2, label=f"{name}, smoothed")
            top = max(top, float(line[["predicted", "observed"]].to_numpy().max()))
    top = top * 1.05 or 1.0
    ax.plot([0, top], [0, top], ls=":", c="grey", label="perfect")
    title = "Calibration (tenths of risk and smoothed, held-out)" if smoothed is not None else "Calibration (tenths of risk, held-out)"
    ax.set(xlabel="mean predicted risk", ylabel="observed rate", title=title)
    ax.legend(loc="upper left")
    return _png(fig)


def short_label(description: str, limit: int = 70) -> str:
    """A feature's description ("<concept> (<code>), <aggregation>, <window>") cut to
    ``limit`` characters for a figure's axis, keeping the code, aggregation and window
    whole, so that a concept's features stay told apart: "Glomerular filtration rate/1.73
    sq M.predicted [...] (LOINC 62238-1), mean value, 30 days" becomes "Glomerular
    filtration rate/1.73… (LOINC 62238-1), mean value, 30 days". Without a "(code)" part,
    or when the tail alone is too long, the text is cut at its end."""
    if len(description) <= limit:
        return description
    cut = description.rfind(" (")
    tail = description[cut:] if cut > 0 else ""
    if cut > 0 and tail.count(")") and len(tail) > limit - 12:
        tail = tail[tail.index(")") + 1 :]  # the code goes first: ", mean value, 30 days"
    head = limit - len(tail) - 1
    if not tail or head < 8:
        return description[: limit - 1] + "…"
    return description[:head].rstrip() + "…" + tail


def shap_method(blend: float) -> str:
    """What the SHAP values are for a model whose log-odds blend the trees' with the
    L1-logistic's at weight ``blend``: at 1 there are no trees left to explain."""
    if blend >= 1:
        return "linear SHAP of the L1-logistic"
    return "TreeSHAP and linear SHAP" if blend > 0 else "TreeSHAP"


def shap_bar(importance: pd.DataFrame, top: int = 20, method: str = "TreeSHAP") -> bytes:
    """Mean |SHAP| of the top features, with readable names; ``method`` (:func:`shap_method`)
    goes in the title."""
    head = importance.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(head) + 1))
    ax.barh([short_label(d) for d in head["description"]], head["mean_abs_shap"], color="#1f77b4")
    ax.set(xlabel="mean |SHAP value| (log-odds)", title=f"Global feature importance ({method})")
    return _png(fig)


def shap_beeswarm(values: np.ndarray, data: np.ndarray, names: list[str], base: float, top: int = 15) -> bytes:
    """shap's beeswarm of the sampled rows (no row identifiers are shown)."""
    import shap

    explanation = shap.Explanation(values=values, base_values=np.full(values.shape[0], base), data=data, feature_names=names)
    with _seeded():
        shap.plots.beeswarm(explanation, max_display=top, show=False)
    fig = plt.gcf()
    fig.set_size_inches(10, 0.35 * top + 1.5)
    return _png(fig)


def decision_curve(frame: pd.DataFrame) -> bytes:
    """Net benefit of the model against treating all and treating none."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    # A withheld point breaks the line (NaN) rather than being bridged by it.
    model = frame.astype({"threshold": float}).assign(net_benefit_model=pd.to_numeric(frame["net_benefit_model"], errors="coerce"))
    ax.plot(model["threshold"], model["net_benefit_model"], marker=".", label="model")
    shown = model.dropna(subset=["net_benefit_model"])
    every = frame.dropna(subset=["net_benefit_all"]).astype({"threshold": float, "net_benefit_all": float})
    ax.plot(every["threshold"], every["net_benefit_all"], ls="--", label="treat all")
    ax.axhline(0, c="grey", ls=":", label="treat none")
    top = max([float(shown["net_benefit_model"].max()) if len(shown) else 0.0, float(every["net_benefit_all"].max()) if len(every) else 0.0, 0.01])
    ax.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve (held-out)", ylim=(-top * 0.3, top * 1.15))
    ax.legend(loc="upper right")
    return _png(fig)


def learning_curve(record: dict) -> bytes:
    """Held-out AUROC and AUPRC (with their 95% CIs) of each learner against the share of
    the train subjects it was fitted on (``evaluation.learning_curve``'s record), and the
    apparent ones on the sample itself (dashed). A withheld or unfitted point is not drawn."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    fitted = [p for p in record["points"] if p.get("fitted")]
    for ax, metric, title in zip(axes, ("auroc", "auprc"), ("AUROC", "AUPRC"), strict=True):
        for k, (learner, name) in enumerate(record["learners"].items()):
            colour = f"C{k}"
            held = [(p["percent"], p["held_out"][learner]) for p in fitted
                    if p["held_out"][learner].get(metric) is not None]
            if held:
                x = [h[0] for h in held]
                ax.plot(x, [h[1][metric] for h in held], marker="o", c=colour, label=f"{name}, held-out")
                ax.fill_between(x, [h[1][f"{metric}_ci_low"] for h in held], [h[1][f"{metric}_ci_high"] for h in held],
                                color=colour, alpha=0.15, lw=0)
            apparent = [(p["percent"], p["apparent"][learner][metric]) for p in fitted]
            if apparent:
                ax.plot([a[0] for a in apparent], [a[1] for a in apparent], ls="--", marker=".", c=colour, alpha=0.7, label=f"{name}, on its training sample")
        ax.set(xlabel="% of the train subjects fitted on", ylabel=title, title=f"Learning curve: {title}", xlim=(0, 102))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    return _png(fig)


@contextmanager
def _seeded(seed: int = 0):
    """shap's plots jitter and shuffle points with numpy's global generator: seed it so the
    same values draw the same figure (a rerun's outputs are byte-identical), then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _explanation(values, data, names, base):
    import shap

    values = np.atleast_2d(values)
    return shap.Explanation(
        values=values, base_values=np.full(values.shape[0], base), data=np.atleast_2d(data), feature_names=names
    )


def shap_dependence(values: np.ndarray, data: np.ndarray, names: list[str], base: float, k: int) -> bytes:
    """SHAP value of feature ``k`` against its value (absent values are not drawn)."""
    import shap

    explanation = _explanation(values, data, names, base)
    with _seeded():
        shap.plots.scatter(explanation[:, k], show=False)
    fig = plt.gcf()
    fig.set_size_inches(6, 4.2)
    return _png(fig)


WATERFALL_BARS = 12


def waterfall_parts(row: np.ndarray, plotted: np.ndarray, names: list[str], bars: int = WATERFALL_BARS
                    ) -> tuple[np.ndarray, list[str]]:
    """One row's waterfall bars: the ``bars - 1`` plotted features (column indices
    ``plotted``, named ``names``) that move this row's log-odds most, and one bar for every
    other feature together, so that the bars and the base value sum to the row's log-odds,
    as a waterfall claims (``row`` holds the row's SHAP values over every column). The
    other features include those the report may not draw one by one (recorded in 1-10
    explained rows): only their sum is shown, and it sums two features at least (one
    alone would be that feature's value for this row)."""
    plotted = np.asarray(plotted, dtype=np.int64)
    keep = np.argsort(-np.abs(row[plotted]), kind="stable")[: bars - 1]
    if row.size - keep.size == 1:
        keep = keep[:-1]
    values = row[plotted[keep]]
    rest = int(row.size - keep.size)
    if rest == 0:
        return values, [names[k] for k in keep]
    return (np.append(values, row.sum() - values.sum()),
            [*(names[k] for k in keep), f"{rest} other feature{'s' if rest != 1 else ''}"])


def shap_waterfall(row: np.ndarray, plotted: np.ndarray, names: list[str], base: float) -> bytes:
    """One row's explanation (:func:`waterfall_parts`): the contributions only, ending at
    the row's log-odds. The row's own feature values are left out (the report must not
    carry a patient's row), and the row is identified only by its number."""
    import shap

    values, labels = waterfall_parts(np.asarray(row, dtype=np.float64), plotted, names)
    explanation = shap.Explanation(values=values[None, :], base_values=np.array([base]), feature_names=labels)
    shap.plots.waterfall(explanation[0], max_display=len(labels), show=False)
    fig = plt.gcf()
    fig.set_size_inches(9, 5.5)
    return _png(fig)
