#!/usr/bin/env bash
# Example pipeline that fails the way real ones do: some progress, an error on stderr, a non-zero exit.
set -euo pipefail

echo "training ${MLOPS_MODEL:-?}: loading features"
sleep 0.2
echo "error: feature table 'clicks_daily' has no partition for today; rerun datagen first" >&2
exit 3
