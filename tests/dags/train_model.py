"""`train_model`: the retrain pipeline the bot triggers in the Airflow integration tests.

Manual trigger only. `conf` carries `model`, `requested_by`, `registry` (or MLOPS_REGISTRY in the
environment) and any other keys as training arguments (e.g. `epochs`). The training step runs the same
examples/pipelines/train.sh the command backend uses, so the new version's metadata.json names this
Airflow run in `pipeline_run_id`.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "train.sh"
RESERVED = {"model", "requested_by", "registry"}


@dag(dag_id="train_model", schedule=None, catchup=False, tags=["mlops-chatops"])
def train_model():
    @task
    def check_inputs() -> dict[str, str]:
        conf = get_current_context()["dag_run"].conf or {}
        registry = conf.get("registry") or os.environ.get("MLOPS_REGISTRY")
        if not conf.get("model") or not registry:
            raise ValueError("conf needs `model` and `registry` (or MLOPS_REGISTRY in the environment)")
        if not (Path(registry) / conf["model"]).is_dir():
            raise FileNotFoundError(f"no model {conf['model']!r} in registry {registry}")
        requested_by = str(conf.get("requested_by", ""))
        return {"model": conf["model"], "registry": registry, "requested_by": requested_by}

    # A bash task, not a Python one: when the run is cancelled, Airflow's BashOperator stops the
    # script's whole process group, where a Python task would leave the script running.
    @task.bash
    def train(inputs: dict[str, str]) -> str:
        context = get_current_context()
        conf = context["dag_run"].conf or {}
        env = {
            "MLOPS_MODEL": inputs["model"],
            "MLOPS_REGISTRY": inputs["registry"],
            "MLOPS_REQUESTED_BY": inputs["requested_by"],
            "MLOPS_RUN_ID": context["run_id"],
        }
        args = [f"{k}={v}" for k, v in conf.items() if k not in RESERVED]
        return shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), str(TRAIN_SCRIPT), *args])

    train(check_inputs())


train_model()
