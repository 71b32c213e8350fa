"""Cluster job submission (Slurm, Ray, local)."""
