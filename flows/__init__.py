"""Prefect flows: each composes tasks from `radcap.tasks` and nothing else."""
