"""Offline training of streaming clip models (``python -m clplat.stream train CONFIG``).

One idea per module; import from the module you need (the package imports nothing, so the demo
can load weights without importing Lightning):

- ``config``: the typed YAML schema (``TrainConfig``) and ``load_train_config``;
- ``factory``: architecture name + constructor arguments -> the offline network;
- ``weights``: the on-disk format (safetensors + a JSON header) and its checked loader;
- ``module``: the Lightning adapter (per-frame loss, divergence stop);
- ``evaluate``: stepping the converted model over a held-out stream and scoring it;
- ``run``: the ``train`` command that ties them together.
"""
