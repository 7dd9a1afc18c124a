"""``strategy: avalanche`` — an Avalanche 0.6 strategy (EWC, LwF, GDumb, ER_ACE, DER, Replay, ...,
any ``SupervisedTemplate`` in ``avalanche.training``) chosen by name, on a clplat stream, with
clplat's evaluation, metrics, run directory and plots.

Design: an Avalanche strategy owns its training loop (replay strategies build their own
dataloaders, GDumb retrains from scratch, DER stores logits), so it cannot be cut into clplat's
one-loss-per-update ``training_loss``. It is run through the hooks instead, one Avalanche
experience at a time, exactly as Avalanche's own online protocol does:

- online regime: each incoming stream batch is one experience (``on_stream_batch``), trained for
  ``train_epochs`` passes (default: ``online.online_iter``, counted from the engine's update calls);
- sessions regime: each session is one experience (``on_session_start``), ``train_epochs`` epochs;
  set ``sessions.*.epochs: 0`` so the engine itself does not train.

The engine's own optimizer gets only a zero-loss anchor parameter (its updates are no-ops; the
reported training loss is Avalanche's last one). Labels are clplat's exposure indices; training
batches get clplat's augmentation (a ``before_forward`` plugin on the incoming samples); the
Avalanche strategy trains the full head as Avalanche does, and clplat masks unexposed classes at
evaluation. Avalanche's internal state (buffers, Fisher matrices, teacher copies) is not in
``state_dict`` — Avalanche's own checkpointing is broken on current dependencies — so a run of
this strategy cannot be resumed (one error line).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from clplat.errors import UserError
from clplat.strategies import STRATEGIES
from clplat.strategies.base import Strategy, StrategyConfig, StreamContext

# what each named strategy needs and Avalanche gives no default for (user kwargs override)
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "EWC": {"ewc_lambda": 100.0, "mode": "online", "decay_factor": 0.9},
    "LwF": {"alpha": 1.0, "temperature": 2.0},
    "GDumb": {"mem_size": 200},
    "Replay": {"mem_size": 200},
    "ER_ACE": {"mem_size": 200, "batch_size_mem": 16},
    "DER": {"mem_size": 200, "batch_size_mem": 16, "alpha": 0.1, "beta": 0.5},
    "SynapticIntelligence": {"si_lambda": 1.0},
    "MAS": {"lambda_reg": 1.0},
    "AGEM": {"patterns_per_exp": 20},
}
ENGINE_OWNED = {"model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device",
                "plugins", "evaluator", "eval_every"}


class AvalancheConfig(StrategyConfig):
    name: str = Field("Naive", description="class in avalanche.training (EWC, LwF, GDumb, ER_ACE, DER, ...)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="its own arguments (ewc_lambda, mem_size, ...)")
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = Field(None, gt=0, description="None: clplat's optim.lr")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    train_epochs: int | None = Field(None, ge=1, description="passes per experience; None: online_iter "
                                     "(online) or 1 (sessions)")
    train_mb_size: int | None = Field(None, ge=1, description="None: the whole stream batch (online) or 32")


def avalanche_class(name: str) -> type:
    from clplat.interop.avalanche import require_avalanche

    require_avalanche()
    import avalanche.training as at
    from avalanche.training.templates import SupervisedTemplate

    cls = getattr(at, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SupervisedTemplate)):
        known = sorted(n for n, c in vars(at).items() if isinstance(c, type) and issubclass(c, SupervisedTemplate))
        raise UserError(f"avalanche.name: unknown Avalanche strategy '{name}' (known: {', '.join(known)})")
    return cls


def _augment_plugin(owner: AvalancheStrategy) -> Any:
    from avalanche.core import SupervisedPlugin

    class ClplatBridge(SupervisedPlugin):
        """clplat's training augmentation on the samples of the current experience; the loss of
        the last update for clplat's progress and logs."""

        def before_forward(self, strategy: Any, **kwargs: Any) -> None:
            if strategy.is_training and owner.augment is not None:
                strategy.mbatch[0] = owner.augment(strategy.mbatch[0])

        def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
            owner.last_loss = float(strategy.loss.detach().sum())

    return ClplatBridge()


@STRATEGIES.register("avalanche")
class AvalancheStrategy(Strategy):
    config_model: ClassVar[type[StrategyConfig]] = AvalancheConfig

    def __init__(self, cfg: AvalancheConfig, backbone: nn.Module, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, backbone, num_classes, input_shape)
        self.av_cls = avalanche_class(cfg.name)  # fail at build time, before any training
        self.kwargs = {**DEFAULT_KWARGS.get(cfg.name, {}), **cfg.kwargs}
        params = inspect.signature(self.av_cls.__init__).parameters
        bad = [k for k in self.kwargs if k in ENGINE_OWNED or (k not in params and "kwargs" not in params)]
        if bad:
            raise UserError(f"avalanche.kwargs: {', '.join(bad)} not an argument of {cfg.name} clplat can pass")
        self.net = nn.Sequential(backbone, nn.Linear(backbone.num_features, num_classes))
        self.anchor = nn.Parameter(torch.zeros(()))  # the engine optimizer's only parameter
        self.engine_lr: float | None = None
        self.augment: Any = None
        self.calls = 0
        self.last_loss = 0.0
        self.experiences = 0
        self.av: Any = None

    # --- the Avalanche strategy -------------------------------------------------------------------
    def _template(self, epochs: int, mb_size: int) -> Any:
        if self.av is None:
            lr = self.cfg.lr or self.engine_lr
            if lr is None:
                raise UserError("avalanche.lr is required when the engine builds no optimizer (epochs: 0)")
            params = list(self.net.parameters())
            opt = (torch.optim.Adam(params, lr=lr) if self.cfg.optimizer == "adam"
                   else torch.optim.SGD(params, lr=lr, momentum=self.cfg.momentum))
            import warnings

            from avalanche.training.plugins import EvaluationPlugin

            with warnings.catch_warnings():  # "no loggers": clplat evaluates and logs itself
                warnings.simplefilter("ignore")
                evaluator = EvaluationPlugin(loggers=[])
            self.av = self.av_cls(model=self.net, optimizer=opt, criterion=nn.CrossEntropyLoss(),
                                  train_mb_size=mb_size, train_epochs=epochs, eval_mb_size=256,
                                  device=self.anchor.device, plugins=[_augment_plugin(self)],
                                  evaluator=evaluator, eval_every=-1, **self.kwargs)
        self.av.train_epochs, self.av.train_mb_size, self.av.device = epochs, mb_size, self.anchor.device
        return self.av

    def train_experience(self, x: Tensor, y: Tensor, epochs: int, mb_size: int) -> None:
        """One Avalanche experience of samples ``x`` with exposure-index labels ``y``."""
        import warnings

        from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

        from clplat.interop.avalanche import av_dataset

        ds = av_dataset(TensorDataset(x.detach().cpu(), y.detach().cpu()), list(range(len(y))),
                        [int(v) for v in y])
        exp = benchmark_from_datasets(train=[ds]).train_stream[0]  # sets origin_stream, as plugins expect
        exp.current_experience = self.experiences  # ER-ACE / ER-AML replay only from experience 1 on
        av = self._template(epochs, mb_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            av.train(exp, num_workers=0)
        self.experiences += 1
        self.net.train()

    # --- clplat hooks -----------------------------------------------------------------------------
    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        self.engine_lr = lr
        return [{"params": [self.anchor], "lr": lr}]

    def training_loss(self, x: Tensor, y: Tensor, ctx: StreamContext) -> Tensor:
        self.calls += 1
        return self.anchor * 0.0 + self.last_loss

    def on_stream_batch(self, x: Tensor, y_orig: Tensor, ctx: StreamContext) -> None:
        epochs = self.cfg.train_epochs or max(1, self.calls)
        self.calls = 0
        self.augment = ctx.augment
        self.train_experience(x, ctx.to_index(y_orig), epochs, self.cfg.train_mb_size or len(y_orig))

    def on_session_start(self, session: int, loader: DataLoader, ctx: StreamContext) -> None:
        xs, ys = zip(*[(x, ctx.to_index(y)) for x, y in loader], strict=True)
        self.augment = ctx.augment
        self.train_experience(torch.cat(xs), torch.cat(ys), self.cfg.train_epochs or 1, self.cfg.train_mb_size or 32)

    def predict(self, x: Tensor, ctx: StreamContext) -> Tensor:
        return self.net(x)

    def head_features(self, x: Tensor, ctx: StreamContext | None = None) -> Tensor:
        """What the linear head reads (benchmarks/run_results.py probes it with class means)."""
        return self.net[0](x)

    def check_resumable(self) -> None:
        raise UserError(f"a run of strategy avalanche ({self.cfg.name}) cannot be resumed: Avalanche's "
                        "buffers and regularizer state are not checkpointed; start it again")
