"""Next-frame prediction on bouncing digits with ConvS5 or ConvLSTM (issue: ConvS5).

``python -m clplat.stream train CONFIG`` (``task: next_frame``), ``python -m clplat.streaming.prediction
demo --model PATH``. One idea per module:

- ``config``: the typed YAML schema (``PredictConfig``) and ``load_predict_config``;
- ``metrics``: MSE / PSNR / SSIM per predicted frame, and the long-horizon evaluation;
- ``module``: the Lightning adapter (teacher-forced next-frame loss through the parallel scan);
- ``run``: the train command, the weights file and its checked loader;
- ``demo``: a trained model stepped over a held-out video (context, then imagination) into an mp4.
"""
