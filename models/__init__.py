"""Estimators, training and (later) search, calibration and promotion rules."""
