"""Prefect blocks the pipeline uses: registration from the environment, loading by name."""

from blocks.sources import load_source_url, register_source_blocks

__all__ = ["load_source_url", "register_source_blocks"]
