"""The promotion rule: a new model becomes champion only if it is non-inferior to the
current champion on the same held-out data and its calibration is acceptable."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from forewarn.records.config import Strict


class PromotionConfig(Strict):
    auroc_margin: float = Field(0.02, ge=0, le=0.5, description="non-inferiority margin on AUROC")
    slope_low: float = Field(0.7, gt=0, description="calibration slope bounds (1 is perfect)")
    slope_high: float = Field(1.4, gt=0)
    test: Literal["marginal", "paired"] = Field(
        "marginal",
        description="marginal: the new model's AUROC lower 95% bound >= the champion's AUROC - margin; paired: the lower "
        "95% bound of the new minus the champion's AUROC on the same held-out rows (one patient bootstrap) >= -margin. "
        "Both are shown; this one decides",
    )
    bootstrap: int = Field(1000, ge=100, description="patient-bootstrap draws of the paired difference's 95% interval")

    @model_validator(mode="after")
    def _bounds(self) -> PromotionConfig:
        if self.slope_low >= self.slope_high:
            raise ValueError(f"slope_low must be < slope_high; got {self.slope_low} and {self.slope_high}.")
        return self


CONSTANT_RISK = ("the model gives every held-out row the same risk: it ranks no one and cannot serve as champion "
                 "(too few events to learn from, or columns that are empty in the held-out rows)")


def no_better_than_chance(low: float) -> str:
    return (f"its AUROC's lower 95% bound {low:.3f} is not above 0.5: it has not shown that it ranks people with the "
            "outcome above people without it better than chance, and cannot serve as champion")


def decide(new: dict, champion: dict | None, config: PromotionConfig) -> dict:
    """Promote or not, with reasons (:func:`_decide`), under two floors that hold whatever
    else the candidate passes:

    * a candidate whose held-out risks are all the same (``new["constant_risk"]`` true,
      ``evaluation.evaluate.risk_spread``) is never promoted: with its held-out metrics
      withheld a first model would otherwise become champion unjudged;
    * nor is one whose AUROC interval, where estimated, reaches 0.5: the non-inferiority
      test alone would let a first model, or one beside a weak champion, in on a
      calibration slope.
    """
    decision = _decide(new, champion, config)
    floors = []
    if new.get("constant_risk"):
        floors.append(CONSTANT_RISK)
    low = new.get("auroc_ci_low")
    if low is not None and low == low and low <= 0.5:
        floors.append(no_better_than_chance(low))
    if floors:
        decision = decision | {"promoted": False, "reasons": [*floors, *decision["reasons"]]}
    return decision


def _decide(new: dict, champion: dict | None, config: PromotionConfig) -> dict:
    """Promote or not, with reasons.

    ``new`` holds the candidate's held-out ``auroc_ci_low`` and ``calibration_slope``;
    ``champion`` the current champion's ``auroc`` on the same held-out rows and its
    ``version`` (None when there is no champion yet), and ``paired`` when the difference
    was estimated: the candidate's AUROC minus the champion's on those rows with its
    paired interval (``evaluation.validation.paired_auroc``: ``difference``, ``ci_low``,
    ``ci_high``; None when withheld). ``config.test`` chooses which comparison decides;
    the reasons give the other as well. Without a champion the model is
    promoted unless its slope was estimated and lies outside the bounds.
    """
    reasons = []
    slope = new.get("calibration_slope")
    slope_ok = slope is not None and config.slope_low <= slope <= config.slope_high
    reasons.append(
        f"calibration slope {slope:.3f} is {'within' if slope_ok else 'outside'} [{config.slope_low}, {config.slope_high}]"
        if slope is not None else "calibration slope could not be estimated"
    )
    if champion is None:
        # Non-inferiority is vacuous without a champion, but the calibration bound is not:
        # a first model whose slope lies outside the bounds stays challenger until a model
        # passes. One whose held-out metrics were withheld (1-10 events or non-events: no
        # slope to judge) becomes champion, as the registry needs one to serve, re-score and
        # check drift against, and the reasons say it was not judged.
        reasons.insert(0, "there is no champion yet")
        if slope is None:
            reasons.append("promoted only because there is no champion: its calibration was not judged, "
                           "review it before use")
        elif not slope_ok:
            reasons.append("a first champion needs its calibration slope within the bounds too")
        return {"promoted": slope is None or slope_ok, "reasons": reasons, "champion_version": None, "test": config.test}
    low, bar = new.get("auroc_ci_low"), champion["auroc"] - config.auroc_margin
    marginal_ok = low is not None and low >= bar
    marginal = (
        f"AUROC lower 95% bound {low:.3f} {'>=' if marginal_ok else '<'} champion v{champion['version']} AUROC "
        f"{champion['auroc']:.3f} - margin {config.auroc_margin} = {bar:.3f} on the same held-out rows"
        if low is not None else "AUROC interval could not be estimated"
    )
    paired = champion.get("paired")
    if paired is not None and not all(math.isfinite(paired[k]) for k in ("difference", "ci_low", "ci_high")):
        paired = None
    paired_ok = paired is not None and paired["ci_low"] >= -config.auroc_margin
    difference = (
        f"AUROC minus champion v{champion['version']}'s on the same held-out rows {paired['difference']:+.3f} (paired "
        f"95% CI {paired['ci_low']:+.3f} to {paired['ci_high']:+.3f}); lower bound {paired['ci_low']:+.3f} "
        f"{'>=' if paired_ok else '<'} -margin {-config.auroc_margin:+.3f}"
        + ("; the whole interval lies below 0: worse than the champion on these rows" if paired["ci_high"] < 0 else "")
        if paired is not None else "the paired AUROC difference could not be estimated (withheld with 1 to 10 held-out "
        "events or non-events, or not computed)"
    )
    if config.test == "paired":
        auroc_ok, first, other = paired_ok, difference, marginal
    else:
        auroc_ok, first, other = marginal_ok, marginal, difference if "paired" in champion else None
    reasons.insert(0, first)
    if other is not None:
        reasons.append(f"for information, not the rule in force ({'marginal' if config.test == 'paired' else 'paired'} "
                       f"test): {other}")
    if new.get("withheld"):
        # Withheld, not failed: the same split withholds every candidate's interval.
        reasons.append(f"no candidate can pass while this held-out split has 1 to 10 events or non-events: champion "
                       f"v{champion['version']} stays until it holds 11 or more of each (more people, a longer "
                       "horizon or a broader outcome)")
    return {"promoted": bool(auroc_ok and slope_ok), "reasons": reasons, "champion_version": champion["version"],
            "test": config.test}


def decide_network(new: dict[str, dict], champion: dict | None, config: PromotionConfig) -> dict:
    """The promotion rule for the network's model (one model trained across the sites):
    :func:`decide` at every site that evaluated it, each on its own held-out rows, and
    promoted only when it holds at every one. A model the network relies on must not be
    worse than the champion at any site, not merely on average.

    ``new`` maps each site to the candidate's held-out ``auroc_ci_low``,
    ``calibration_slope`` and ``constant_risk`` there (each site's floors hold); ``champion`` holds the network champion's ``version`` and
    its ``auroc`` per site (a dict, re-scored on the same held-out rows), or is None when
    there is no network champion yet; its ``paired`` (a dict per site, as :func:`decide`'s
    champion's ``paired``), when given, is the candidate minus the champion at each site.
    A site where the champion has no AUROC refuses
    (nothing to be non-inferior to). Returns :func:`decide`'s keys, the reasons prefixed
    with their site, and ``sites``: each site's own decision.
    """
    if not new:
        raise ValueError("decide_network needs the candidate's held-out metrics at one site at least; got none.")
    sites = {}
    for site, record in new.items():
        compared = None
        if champion is not None:
            auroc = (champion.get("auroc") or {}).get(site)
            if auroc is None or auroc != auroc:  # None or NaN
                sites[site] = {"promoted": False, "champion_version": champion["version"], "reasons": [
                    f"champion v{champion['version']} has no AUROC on this site's held-out rows (not scored there, or "
                    "no events or no non-events among them), so non-inferiority cannot be shown"]}
                continue
            compared = {"version": champion["version"], "auroc": float(auroc)}
            if "paired" in champion:
                compared["paired"] = champion["paired"].get(site)
        sites[site] = decide(record, compared, config)
    promoted = all(d["promoted"] for d in sites.values())
    reasons = [f"{site}: {r}" for site, d in sites.items() for r in d["reasons"]]
    refused = [site for site, d in sites.items() if not d["promoted"]]
    if refused:
        reasons.insert(0, f"refused at {', '.join(refused)}: the network's model must pass the rule at every site")
    return {"promoted": promoted, "reasons": reasons, "champion_version": None if champion is None else champion["version"],
            "sites": sites, "test": config.test}
