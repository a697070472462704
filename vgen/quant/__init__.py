"""Low-precision formats and backends (NVFP4 reference so far)."""
