"""Shared test helpers: a tiny config on the synthetic dataset."""

import ml_collections

from configs import quickstart


def tiny_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """The quickstart config shrunk to seconds: tiny model, few steps, constant lr."""
    config = quickstart.get_config()
    config.dataset.data_dir = data_dir
    config.width = 1 / 32
    config.batch_size = 4
    config.eval_batch_size = 8
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 2
    config.num_predictions_to_save = 2
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config
