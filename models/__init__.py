"""Estimators, training and (later) search, calibration and promotion rules."""

import os

# XGBoost's OpenMP threads spin while they wait; on a small shared machine (the Prefect
# server, a second job) that made a 3 s fit take 40 s. Passive waiting costs nothing
# measurable when the machine is idle. Set before any OpenMP runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
