"""`train_broken`: a pipeline whose second task fails on purpose, for the bot's failure path."""
from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="train_broken", schedule=None, catchup=False, tags=["mlops-chatops"])
def train_broken():
    @task
    def load_features() -> int:
        print("loaded 1000 rows")
        return 1000

    @task
    def train(rows: int) -> None:
        raise RuntimeError(f"training diverged after {rows} rows: loss is NaN")

    train(load_features())


train_broken()
