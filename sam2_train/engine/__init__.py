"""The run engine: trainer, distributed runtime and samplers, checkpoints, run directory, optimiser and
schedule, EMA."""
