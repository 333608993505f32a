"""`mlops-bot check-config --online`: what a valid config names that only the world outside it can confirm.

Each watched DAG must exist in Airflow, and each monitor's command must be a program the bot can run (its
notebook a file, with papermill installed). One line per problem, as the offline check writes them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bot.airflow import AirflowError, client_for
from bot.config import Config, Secrets
from bot.monitors.sources import notebooks_missing
from bot.programs import resolve_executable


async def online_problems(config: Config, path: str, secrets: Secrets, env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    problems = []
    for name, monitor in config.monitors.items():
        if monitor.command and resolve_executable(monitor.command[0], Path.cwd(), env.get("PATH")) is None:
            problems.append(f"{path}: monitors.{name}.command: {monitor.command[0]} is not found or not executable "
                            "(a relative program path is relative to the config file; chmod +x a script)")
        if monitor.notebook and not Path(monitor.notebook).is_file():
            problems.append(f"{path}: monitors.{name}.notebook: no such file {monitor.notebook}")
        if monitor.notebook and notebooks_missing():
            problems.append(f"{path}: monitors.{name}.notebook: papermill is not installed, so the bot does not run "
                            "it: pip install 'mlops-chatops[notebooks]'")
    dags = config.pipelines.airflow.dags
    if not dags:
        return problems
    async with client_for(config.airflow, secrets) as client:
        for i, dag in enumerate(dags):
            try:
                await client.dag(dag.dag_id)
            except AirflowError as exc:
                problems.append(f"{path}: pipelines.airflow.dags.{i}.dag_id: {exc}")
                if exc.status != 404:  # unreachable, or the credentials: the same answer for every other DAG
                    break
    return problems
