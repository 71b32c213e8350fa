"""Reading and writing model checkpoints."""
