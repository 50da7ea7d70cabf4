"""Ingest adapters: each reads one source format and writes a cohort Parquet file (fmgnn.cohort)."""
