"""retail-etl: daily regional sales into the warehouse, gated on data quality."""

__version__ = "0.1.0"
