"""Training-free video-token pruners: VisionZip, FastVID, HoliTom, their SToP variants, random
and STTS's heuristic baselines. Build them with ``stts_train.pruning.base.get_pruner(name)``."""
