"""Airflow pipeline health: failed and late DAG runs as alerts, retried from Slack."""
