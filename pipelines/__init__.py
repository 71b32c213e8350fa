"""Offline data pipelines: WebDataset shard building, decoding and streaming on Ray."""
