#!/usr/bin/env bash
# MEDS-Tab in its own virtualenv, for benchmarks/featurize_vs_medstab.py.
#
#   bash benchmarks/medstab_env.sh [VENV]      # default /tmp/medstab-venv (or $MEDSTAB_VENV)
#
# Never touches Forewarn's environment. meds-tab 0.2.0 pulls polars, hydra, MEDS-transforms,
# xgboost, etc. from PyPI; the versions this was measured with are in benchmarks/medstab_notes.md.
set -euo pipefail
VENV="${1:-${MEDSTAB_VENV:-/tmp/medstab-venv}}"
PYTHON="${PYTHON:-python3.11}"
if [[ -n "${VIRTUAL_ENV:-}" && "$(realpath "$VIRTUAL_ENV")" == "$(realpath -m "$VENV")" ]]; then
  echo "refusing to install into the active virtualenv $VIRTUAL_ENV" >&2; exit 2
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "meds-tab==0.2.0"
for cmd in meds-tab-describe meds-tab-tabularize-static meds-tab-tabularize-time-series meds-tab-cache-task; do
  [[ -x "$VENV/bin/$cmd" ]] || { echo "missing $VENV/bin/$cmd after install" >&2; exit 1; }
done
"$VENV/bin/python" -c "import MEDS_tabular_automl, polars, importlib.metadata as m; print('meds-tab', m.version('meds-tab'), '| polars', polars.__version__, '| MEDS_transforms', m.version('MEDS_transforms'))"
echo "MEDS-Tab ready in $VENV"
