"""Hyperparameter search for XGBoost with Optuna (TPE sampler, median pruning).

Each trial fits on the train split with early stopping on the tuning split's log-loss
and is scored on the tuning split (AUPRC for rare outcomes, AUROC otherwise); trials
whose tuning score lags the median at the same boosting round are pruned. The trial
records come back as plain data; the flow logs them as nested MLflow runs.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import xgboost as xgb
from pydantic import Field

from forewarn.records.config import Strict
from forewarn.records.progress import stage


class SearchConfig(Strict):
    trials: int = Field(0, ge=0, description="0 turns the search off")
    timeout_s: int = Field(600, gt=0, description="stop starting new trials after this many seconds")
    objective: Literal["auto", "auroc", "auprc"] = Field("auto", description="auto: AUPRC below 5% prevalence, else AUROC")
    seed: int = 0


def objective_name(config: SearchConfig, y_train: np.ndarray) -> str:
    if config.objective != "auto":
        return config.objective
    return "auprc" if np.mean(y_train) < 0.05 else "auroc"


class _Pruning(xgb.callback.TrainingCallback):
    """Report the tuning score every ``every`` rounds; stop when Optuna says prune."""

    def __init__(self, trial, metric: str, every: int = 10) -> None:
        self.trial, self.metric, self.every = trial, metric, every
        self.pruned = False

    def after_iteration(self, model, epoch, evals_log) -> bool:
        if epoch % self.every:
            return False
        scores = evals_log.get("validation_0", {}).get(self.metric)
        if not scores:
            return False
        self.trial.report(float(scores[-1]), epoch)
        if self.trial.should_prune():
            self.pruned = True
            return True
        return False


def search_xgboost(X_train, y_train, X_tune, y_tune, fit, config: SearchConfig, tune_margin=None) -> tuple[dict, list[dict]]:
    """Best parameters and one record per trial.

    ``fit(params, callbacks, eval_metric)`` fits and returns an XGBClassifier (it is
    ``models.train.fit_xgboost`` with the data bound), so the search and the final fit
    share one code path. ``tune_margin``: the tuning rows' offset when the fits boost
    from one (``models.train.PrimaryModel``), so that trials are scored as the model predicts.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = objective_name(config, y_train)
    metric = {"auroc": "auc", "auprc": "aucpr"}[name]
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20),
    )
    records: list[dict] = []

    def objective(trial) -> float:
        params = {
            "max_depth": trial.suggest_int("max_depth", 2, 8),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 20.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 10.0, log=True),
        }
        pruning = _Pruning(trial, metric)
        start = time.perf_counter()
        clf = fit(params, [pruning], [metric, "logloss"])
        from sklearn.metrics import average_precision_score, roc_auc_score

        p = clf.predict_proba(X_tune, base_margin=tune_margin)[:, 1]
        score = float(roc_auc_score(y_tune, p) if name == "auroc" else average_precision_score(y_tune, p))
        records.append({"trial": trial.number, "params": params, "objective": name, "value": score,
                        "state": "pruned" if pruning.pruned else "complete", "seconds": time.perf_counter() - start,
                        "best_iteration": int(clf.best_iteration)})
        if pruning.pruned:
            raise optuna.TrialPruned()
        return score

    with stage(f"search xgboost ({config.trials} trials, {name})") as counts:
        study.optimize(objective, n_trials=config.trials, timeout=config.timeout_s, catch=())
        complete = [r for r in records if r["state"] == "complete"]
        best = max(complete, key=lambda r: r["value"]) if complete else None
        counts.update(trials=len(records), pruned=len(records) - len(complete), best=round(best["value"], 4) if best else None)
    return (best["params"] if best else {}), records
