"""Metrics, validation, SHAP explanations and the HTML report: plain records, no MLflow."""
