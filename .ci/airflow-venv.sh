#!/usr/bin/env bash
# Create (once) the virtualenv that holds a real Airflow 3 for the integration tests, then print its path.
# Airflow lives in its own venv so its many pins never touch the bot's dependencies.
# Airflow's constraint files are published only outside PyPI, so the one pin below is the whole contract;
# a venv whose marker names another version is rebuilt.
set -euo pipefail

AIRFLOW_VERSION="3.1.8"
VENV="${MLOPS_AIRFLOW_VENV:-$HOME/.cache/mlops-chatops/airflow-venv}"
PYTHON="${MLOPS_AIRFLOW_PYTHON:-python3}"
MARKER="$VENV/.mlops-airflow-version"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$AIRFLOW_VERSION" && -x "$VENV/bin/airflow" ]]; then
  echo "$VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
# Two test sessions starting at once must not build the same venv twice.
exec 9>"$VENV.lock"
flock 9
if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$AIRFLOW_VERSION" && -x "$VENV/bin/airflow" ]]; then
  echo "$VENV"
  exit 0
fi

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "apache-airflow==$AIRFLOW_VERSION" >&2
"$VENV/bin/airflow" version >&2
echo "$AIRFLOW_VERSION" >"$MARKER"
echo "$VENV"
