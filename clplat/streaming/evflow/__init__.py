"""Event-camera optical flow: training and scoring the flow nets of ``clplat.streaming.models``
(``evflow_lstm``, ``evflow_snn``) on synthetic scenes with exact flow (``clplat.events.scenes``).

``python -m clplat.streaming.evflow train CONFIG [key=value ...]``. One idea per module:

- ``config``: the typed YAML schema (``EventFlowTrainConfig``);
- ``data``: scenes -> 10 ms bins and 100 ms displacement targets (cached under ``runs/``);
- ``metrics``: EPE and nPE (n = 1..5) over valid pixels (and over pixels with events);
- ``module``: the Lightning adapter (sequential learning);
- ``weights``: the on-disk format (safetensors + header) and its checked loader;
- ``run``: the train command (train, score the stream on held-out scenes, save).
"""
