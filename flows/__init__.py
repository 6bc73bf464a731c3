"""Prefect flows: the daily pipeline, its subflows, alerting and backfill."""
