#!/usr/bin/env bash
# Example retrain pipeline for the `command` backend: `train.sh [DAYS] [epochs=N] [key=value ...]`.
# It stands in for a team's training job: prints progress, then publishes a new version of
# $MLOPS_MODEL in the local registry $MLOPS_REGISTRY whose metadata.json names $MLOPS_RUN_ID.
# The bot sets the MLOPS_* variables and appends the user's key=value arguments.
set -euo pipefail

: "${MLOPS_MODEL:?the model to train (set by the bot)}"
: "${MLOPS_REGISTRY:?the registry directory (set by the bot)}"
: "${MLOPS_RUN_ID:?the run id to record (set by the bot)}"

days=15
epochs=3
for arg in "$@"; do
  case "$arg" in
    epochs=*) epochs="${arg#epochs=}" ;;
    *=*) ;;  # other keys are for other pipelines; this one ignores them
    *) days="$arg" ;;
  esac
done
[[ "$epochs" =~ ^[0-9]+$ ]] || { echo "epochs must be a whole number, got '$epochs'" >&2; exit 2; }

echo "training $MLOPS_MODEL on the last $days days of data for $epochs epochs (run $MLOPS_RUN_ID)"
for ((epoch = 1; epoch <= epochs; epoch++)); do
  sleep 0.2
  echo "epoch $epoch/$epochs loss=$(awk -v e="$epoch" 'BEGIN { printf "%.3f", 0.7 / (e + 1) }')"
done

MLOPS_DATASET="last-${days}d" python3 "$(dirname "$0")/publish_version.py"
