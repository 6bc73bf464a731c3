"""Thin Prefect tasks over the plain functions of ``retail_etl``."""
