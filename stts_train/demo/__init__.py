"""The end-to-end demo: benchmark generation, orchestration and the report."""
