"""Multi-process training (``trainer.strategy: ddp``): Lightning launches the processes and owns the
process group; clplat splits the batches and keeps every rank's continual-learning state identical.

A DDP run must train like the one-process run at the same global batch. So every rank holds the whole
strategy state (model, replay memory, exposure order, every RNG) and makes every random draw a
one-process run makes, in the same order; only the rows of the forward/backward pass are split:

- each global batch is cut into ``W`` contiguous equal shares in rank order (rank ``r`` the ``r``-th);
  a batch that does not split evenly (a task's or an epoch's short last batch) is trained whole on
  every rank: identical gradients, so their average is that gradient;
- class exposure and ``on_stream_batch`` (replay memory updates) get the all-gathered global batch;
- inside a split update, ``ctx.augment`` (and ``augment.mix``) gathers the rows of all ranks,
  augments the global rows (the one-process draws) and keeps its own; ``ReservoirMemory.sample``
  draws the global replay indices and keeps its share (:func:`current_update`);
- a rank's loss is scaled by ``W * n_r / N`` (1 when shares are equal), so averaging the gradients
  gives the gradient of the mean loss over the global batch;
- gradients are averaged by one flat all-reduce per update (:func:`average_gradients`), not by a
  ``DistributedDataParallel`` wrapper: several backward passes per step (``online_iter``), parameters
  frozen and unfrozen by hooks mid-session, and replay buffers that must not be broadcast at every
  forward are then nothing special.

Evaluation runs on every rank (same numbers; it keeps strategies whose evaluation draws randomness in
lockstep and costs no wall time, the others would wait anyway); only rank 0 writes files and W&B.
See ``docs/distributed.md``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from clplat.errors import UserError

RUN_DIR_ENV = "CLPLAT_RUN_DIR"  # rank 0's run directory, inherited by the processes Lightning starts


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD = World()


def world() -> World:
    """This process's rank and the number of training processes (``World()`` outside DDP)."""
    return _WORLD


def _available(accelerator: str) -> tuple[int, str]:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "GPUs"
    if accelerator in ("cpu", "auto"):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, "CPUs"
    return -1, accelerator  # another accelerator: Lightning checks it


def setup_world(cfg: Any) -> World:
    """Rank and size of this process for ``cfg.trainer`` (a ``UserError`` when the machine lacks the
    devices asked for); non-zero ranks print nothing to stdout and show no progress bar."""
    global _WORLD
    tc = cfg.trainer
    if tc.strategy != "ddp":
        _WORLD = World()
        return _WORLD
    have, what = _available(tc.accelerator)
    if have >= 0 and tc.devices > have:
        raise UserError(f"trainer.devices={tc.devices} with trainer.strategy=ddp needs {tc.devices} {what} "
                        f"per node, this machine has {have}")
    size = tc.devices * tc.num_nodes
    env = os.environ
    if "RANK" in env:  # torchrun / an external launcher
        if int(env.get("WORLD_SIZE", size)) != size:
            raise UserError(f"the launcher started {env['WORLD_SIZE']} processes, the config asks for "
                            f"trainer.devices x trainer.num_nodes = {size}")
        rank = int(env["RANK"])
    elif tc.num_nodes > 1:
        raise UserError("trainer.num_nodes > 1: start the processes of every node with torchrun "
                        "(docs/distributed.md)")
    else:
        rank = int(env.get("LOCAL_RANK", 0))
    if cfg.threads:  # Lightning would otherwise set cpu_count // devices threads per process
        env.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    _WORLD = World(rank, size)
    if rank != 0:
        cfg.logging.progress = False
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return _WORLD


def shared_run_dir(make: Callable[[], Path], given: Path | None = None) -> Path:
    """The run directory every rank uses: rank 0 makes it (or it is ``given``); processes Lightning
    starts inherit its path through the environment, those of an external launcher get it by broadcast."""
    w = world()
    if not w.distributed:
        return given if given is not None else make()
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    path = given
    if "RANK" in os.environ:  # all ranks started together: agree on one directory
        _init_early()
        import torch.distributed as dist

        box = [str(given if given is not None else make()) if w.is_main else None]
        dist.broadcast_object_list(box, src=0)
        path = Path(box[0])
    elif path is None:
        path = make()
    os.environ[RUN_DIR_ENV] = str(path)
    return path


def _init_early() -> None:
    """Join the process group before the Trainer (which then keeps it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available() and os.environ.get("LOCAL_RANK") is not None:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo")


def trainer_args(tc: Any) -> dict[str, Any]:
    """``lightning.Trainer`` arguments for ``cfg.trainer``."""
    devices = 1 if tc.strategy != "ddp" and tc.devices == "auto" else tc.devices  # never Lightning's own DDP
    args: dict[str, Any] = {"accelerator": tc.accelerator, "devices": devices, "precision": tc.precision}
    if tc.strategy == "ddp":
        args.update(strategy=_split_ddp(), num_nodes=tc.num_nodes, use_distributed_sampler=False)
    return args


def _split_ddp() -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    class SplitDDP(DDPStrategy):
        """Lightning's DDP launch, devices and process group, without the ``DistributedDataParallel``
        wrapper: the engine averages gradients itself (module docstring)."""

        def configure_ddp(self) -> None:
            pass

    return SplitDDP()


# --- batches -----------------------------------------------------------------------------------------
def share_rows(n: int, w: World) -> slice:
    """Rank ``w.rank``'s contiguous share of ``n`` rows (sizes differ by at most one)."""
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (1 if w.rank < extra else 0))


def splits(n: int, w: World) -> bool:
    """A batch of ``n`` is split across the ranks only when every rank gets an equal, non-empty share."""
    return w.distributed and n > 0 and n % w.size == 0


class ShareSampler(Sampler[list[int]]):
    """This rank's share of each global batch, in order; a batch that does not split: whole."""

    def __init__(self, batches: Iterable[list[int]], w: World) -> None:
        self.batches = [list(b) for b in batches]
        self.world = w

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield b[share_rows(len(b), self.world)] if splits(len(b), self.world) else b

    def __len__(self) -> int:
        return len(self.batches)

    def global_size(self, batch_idx: int) -> int:
        return len(self.batches[batch_idx])


class SplitUpdate:
    """One optimizer update whose rows are split across the ranks: counts this rank's rows and the
    global ones while the strategy builds its batch (stream share + replay share)."""

    def __init__(self, w: World, local: int, total: int) -> None:
        self.world, self.local, self.total = w, local, total

    def take(self, n: int) -> slice:
        """This rank's share of ``n`` rows drawn for the whole update (e.g. replay samples)."""
        rows = share_rows(n, self.world)
        self.local += rows.stop - rows.start
        self.total += n
        return rows

    def scale(self, loss: Tensor) -> Tensor:
        """``W n_r / N``: averaging the ranks' gradients then gives the global mean-loss gradient."""
        if self.total == 0 or self.local * self.world.size == self.total:
            return loss
        return loss * (self.world.size * self.local / self.total)


_UPDATE: SplitUpdate | None = None


def current_update() -> SplitUpdate | None:
    """The split update in progress (None in one process and for batches trained whole)."""
    return _UPDATE


class _Whole:
    def scale(self, loss: Tensor) -> Tensor:
        return loss


@contextmanager
def split_update(sampler: ShareSampler | None, batch_idx: int, rows: int) -> Iterator[SplitUpdate | _Whole]:
    """The update of batch ``batch_idx`` of the fit: split when its global batch splits."""
    global _UPDATE
    if sampler is None or not splits(sampler.global_size(batch_idx), sampler.world):
        yield _Whole()
        return
    _UPDATE = SplitUpdate(sampler.world, rows, sampler.global_size(batch_idx))
    try:
        yield _UPDATE
    finally:
        _UPDATE = None


# --- collectives -------------------------------------------------------------------------------------
def gather_rows(t: Tensor, equal: bool = False) -> tuple[Tensor, list[int]]:
    """All ranks' rows of ``t`` concatenated in rank order, and the sizes. Shares may differ in size
    (one more collective to learn them) unless ``equal`` says they do not."""
    import torch.distributed as dist

    w = world()
    if equal:
        sizes = [t.shape[0]] * w.size
    else:
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes_t = [torch.zeros_like(n) for _ in range(w.size)]
        dist.all_gather(sizes_t, n)
        sizes = [int(s) for s in sizes_t]
    most = max(sizes)
    if most == 0:
        return t, sizes
    buf = torch.cat([t, t.new_zeros((most - t.shape[0], *t.shape[1:]))]).contiguous()
    parts = [torch.empty_like(buf) for _ in range(w.size)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]), sizes


def own_rows(sizes: list[int]) -> slice:
    start = sum(sizes[: world().rank])
    return slice(start, start + sizes[world().rank])


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (e.g. a stop signal): all stop at the same batch."""
    w = world()
    if not w.distributed or not _initialized():
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients over the ranks, one flat all-reduce per (device, dtype). Parameters
    without a gradient are skipped (as the optimizer skips them); every rank has the same ones."""
    w = world()
    if not w.distributed:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in groups.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= w.size
        for g, avg in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            g.copy_(avg)


class SplitAugment:
    """``ctx.augment`` of a DDP run. Inside a split update it augments the global rows (gathered from
    every rank) and returns this rank's own: the draws of one process on its batch, in its order.
    Elsewhere (whole batches, hooks, evaluation) it is the wrapped augmentation itself."""

    def __init__(self, inner: Callable[[Tensor], Tensor]) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # cfg, generator, ... of the wrapped augmentation
        return getattr(self.__dict__["inner"], name)

    def __call__(self, x: Tensor) -> Tensor:
        if current_update() is None:
            return self.inner(x)
        rows, sizes = gather_rows(x)
        return self.inner(rows)[own_rows(sizes)]

    def share_of(self, x: Tensor, x_all: Tensor) -> Tensor:
        """``self(x)`` where ``x`` is this process's equal share of ``x_all``, the batch already
        gathered: the same rows, without another collective."""
        if current_update() is None:
            return self.inner(x)
        n = x.shape[0]
        return self.inner(x_all)[world().rank * n : (world().rank + 1) * n]

    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Any]:
        """CutMix on the gathered batch (rank-major order: its pairs differ from one process's)."""
        mix = getattr(self.inner, "mix", None)
        if mix is None:
            return x, y
        if current_update() is None:
            return mix(x, y)
        gx, sizes = gather_rows(x)
        gy, _ = gather_rows(y)
        mx, my = mix(gx, gy)
        mine = own_rows(sizes)
        if isinstance(my, Tensor):
            return mx[mine], my[mine]
        return mx[mine], type(my)(my.y_a[mine], my.y_b[mine], my.lam)


# --- replica check -----------------------------------------------------------------------------------
def state_digest(state: dict[str, Any]) -> str:
    """sha256 over the tensors and plain values of a (nested) state dict, in key order."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, Tensor):
            h.update(str((obj.dtype, tuple(obj.shape))).encode())
            h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if obj.numel() else b"")
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                feed(obj[k])
        elif isinstance(obj, list | tuple):
            for v in obj:
                feed(v)
        else:
            h.update(repr(obj).encode())

    feed(state)
    return h.hexdigest()


class ReplicaCheck:
    """At every checkpoint, all ranks compare a digest of their strategy state, exposure, cursor
    and RNGs: a rank that drifted is an engine bug, stopped at once rather than averaged away."""

    def __init__(self) -> None:
        self.checks = 0

    def __call__(self, state: dict[str, Any]) -> None:
        if not world().distributed or not _initialized():
            return
        import torch.distributed as dist

        mine = state_digest({k: state[k] for k in ("strategy", "rng", "cursor", "exposure") if k in state})
        digests: list[Any] = [None] * world().size
        dist.all_gather_object(digests, mine)
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks diverged at checkpoint {self.checks}: state digests {digests}")
        self.checks += 1

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": world().size, "replica_checks": self.checks}


REPLICAS = ReplicaCheck()  # this process's checks (results.json["distributed"])


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across the ranks — what one
    process computes on the whole batch — so a split batch trains and tracks running statistics as
    one process does (torch's ``SyncBatchNorm`` runs only on GPUs). The per-channel sums go through
    a differentiable all-reduce, so the gradient through the statistics is the global one too. Same
    parameters and buffers as the layer it replaces: checkpoints are interchangeable."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c, dims = x.shape[1], [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = sums[2 * c]
        mean = sums[:c] / n
        var = (sums[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            self._track(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y

    @torch.no_grad()
    def _track(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased_var, alpha=m)


def global_batchnorm_(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm of ``module`` (in place) for a ``GlobalBatchNorm`` holding the same
    parameters and buffers; a no-op outside a DDP run."""
    if not world().distributed:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            bn._parameters, bn._buffers = child._parameters, child._buffers  # the same tensors (requires_grad kept)
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            global_batchnorm_(child)
    return module
