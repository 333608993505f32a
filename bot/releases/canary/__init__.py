"""Canary releases: a version on part of the prod fleet, judged against the rest by Triton's own metrics.

judge.py holds the pure rules (how many endpoints, each step's verdict, what follows it); runs.py what the store
keeps of a canary and its steps; messages.py how it reads in Slack; flow.py starts, analyses, promotes, aborts
and resumes one. Triton's metrics are read by bot/serving/triton_metrics.py.
"""
