"""The training engine: stream driver, Lightning adapter, evaluation, checkpoints and run dirs."""
