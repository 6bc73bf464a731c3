"""Prefect blocks the pipeline uses: registration from the environment, loading by name.

The layer between the plain core (``retail_etl``, which never imports Prefect) and the tasks:
block attributes, and Prefect's own API setting (``prefect_api``), are read here only.
"""

from blocks.sources import load_source_url, register_source_blocks

__all__ = ["load_source_url", "register_source_blocks"]
