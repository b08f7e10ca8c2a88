"""The fast training path: K pool models trained together in one process (docs/design.md, "Design rules").

Same recipe as ``src.training.module.Classifier`` (SGD with momentum and weight decay, cosine
schedule per step, random crop + horizontal flip, per-channel normalisation, cross-entropy), but
organised for throughput on a GPU:

- the whole training set lives on the device as uint8; each model draws its batches by index from
  its own member list with its own ``torch.Generator`` (shuffling *and* augmentation), so model k
  only ever sees ``x_train[member_idx_list[k]]``;
- augmentation runs on the device with random numbers drawn on the device (``crop_flip``: the
  arithmetic of ``src.data.augment.random_crop_flip``, whose CPU-side draws would force a
  pageable host→device copy, i.e. a stream synchronisation, at every step);
- each model runs on its own CUDA stream, so the kernels of K models interleave (one ResNet-18 at
  batch 128 leaves most of an H200 idle); nothing inside the step synchronises with the host: the
  loss is accumulated on the device and checked for finiteness once per epoch;
- bf16 autocast and channels_last on CUDA (on a CPU as ``train.precision`` / ``train.channels_last``
  resolve, see ``src.training.precision``); fused SGD on CUDA (foreach on CPU);
- optional ``torch.compile`` of each model (``train.compile: true | <mode>``), or optional
  whole-step CUDA graphs (``train.cuda_graphs: true``: forward, backward and the SGD step of each
  model captured once and replayed; the learning rate is computed inside the graph from a device
  step counter). On CPU streams are no-ops and the graph step body runs eagerly, so the same
  arithmetic is exercised by the CPU tests.

The loop runs through Lightning Fabric (device placement, launch, loggers). Fabric rather than a
``LightningModule`` because the Trainer owns one optimisation loop per module, while here K
independent optimisers are interleaved on K streams, which needs a hand-written loop.

Keys of the ``train`` node, all optional: ``fast`` ('auto' = on CUDA only | true | false),
``models_per_step`` (K, 4), ``compile`` (false | true | mode string), ``channels_last`` (auto = on
CUDA), ``bf16`` (true: autocast on CUDA whatever ``precision`` says), ``precision`` (as the plain
path), ``cuda_graphs`` (false).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn

from src.data.augment import normalizer
from src.models import build_model
from src.training.module import curve_prefix
from src.training.precision import BF16, resolve_precision, to_memory_format
from src.training.recipe import Recipe

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- options
def _flag(value, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def use_fast_path(train_cfg, device) -> bool:
    """``train.fast``: 'auto' → only on CUDA (the plain Lightning path stays the CPU default)."""
    fast = train_cfg.get("fast", "auto")
    if isinstance(fast, str) and fast.strip().lower() == "auto":
        return str(device).startswith("cuda")
    return _flag(fast, False)


def fast_precision(train_cfg, device) -> str:
    """The precision the fast path trains in: ``train.precision`` for ``device``, except on CUDA with
    ``train.bf16`` (its default), which trains in bf16-mixed whatever ``precision`` says. What the
    cache key records, so a key never names a precision that did not run."""
    precision = resolve_precision(train_cfg, device)
    if str(device).startswith("cuda") and _flag(train_cfg.get("bf16"), True):
        return BF16
    return precision


@dataclass
class FastOptions:
    models_per_step: int = 4
    compile: str | None = None     # None = off, else a torch.compile mode ("default", "max-autotune", ...)
    channels_last: bool | None = None   # None = auto (CUDA only)
    bf16: bool = True
    cuda_graphs: bool = False

    @classmethod
    def from_cfg(cls, train_cfg) -> "FastOptions":
        comp = train_cfg.get("compile", False)
        if isinstance(comp, str) and comp.strip().lower() not in ("false", "0", "no", "off", "none", ""):
            mode = "default" if comp.strip().lower() in ("true", "1", "yes", "on") else comp.strip()
        else:
            mode = "default" if (not isinstance(comp, str) and comp) else None
        cl = train_cfg.get("channels_last")
        cl = None if cl is None or str(cl).strip().lower() == "auto" else _flag(cl, True)
        return cls(int(train_cfg.get("models_per_step", 4)), mode, cl,
                   _flag(train_cfg.get("bf16"), True), _flag(train_cfg.get("cuda_graphs"), False))


# ------------------------------------------------------------------------------------ augmentation
def crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding + random horizontal flip, per example, drawn on ``x.device``.

    Same arithmetic and the same order of draws (dx, dy, flip) as
    ``src.data.augment.random_crop_flip``; with a CPU generator the two are bit-identical.
    """
    b, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
        rows = dy.view(b, 1) + torch.arange(h, device=dev).view(1, h)
        cols = dx.view(b, 1) + torch.arange(w, device=dev).view(1, w)
        idx_b = torch.arange(b, device=dev).view(b, 1, 1)
        x = xp.permute(0, 2, 3, 1)[idx_b, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
    if flip:
        m = torch.rand(b, generator=generator, device=dev) < 0.5
        x = torch.where(m.view(b, 1, 1, 1), x.flip(-1), x)
    return x.contiguous()


def _cosine(step, total: int):
    """λ(t) of the plain path's LambdaLR: 0.5(1 + cos(π min(t,T)/T)); float or device tensor."""
    if isinstance(step, torch.Tensor):
        return 0.5 * (1 + torch.cos(math.pi * torch.clamp(step, max=total) / total))
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


# ------------------------------------------------------------------------------------------ trainer
class _Slot:
    """One model of the K trained together, with everything that is private to it."""

    def __init__(self, index, name, model, opt, gen, members, steps, total, stream, device, base_lr, schedule):
        self.index, self.name, self.model, self.opt, self.gen = index, name, model, opt, gen
        self.members, self.steps_per_epoch, self.total_steps = members, steps, total
        self.stream, self.base_lr, self.schedule = stream, base_lr, schedule
        self.t = 0                        # steps taken (host counter; the schedule's t)
        self.pos = 0                      # batch position within the epoch
        self.order: torch.Tensor | None = None
        self.loss_sum = torch.zeros((), device=device)
        self.n_loss = 0
        self.correct = torch.zeros((), device=device, dtype=torch.long)  # train accuracy (curves only)
        self.n_seen = 0
        # whole-step graph state (cuda_graphs): created lazily
        self.graph = None
        self.static_x = self.static_y = None
        self.t_dev = None
        self.lr_t = None


class MultiModelTrainer:
    """K models, one optimiser and one stream each, trained step by step in lock-step.

    ``train_models_fast`` drives it epoch by epoch; the benchmark drives it with ``steps(n)``.
    """

    def __init__(self, recipe: Recipe, x_train: torch.Tensor, y_train: torch.Tensor, mean, std, num_classes: int,
                 member_idx_list: list[torch.Tensor], seeds: list[int], device, names: list[str] | None = None,
                 options: FastOptions | None = None, model_fn=None, logger=None):
        if len(member_idx_list) != len(seeds):
            raise ValueError(f"{len(member_idx_list)} member sets but {len(seeds)} seeds")
        self.opts = options or FastOptions.from_cfg(recipe.train)
        dev = torch.device(device)
        self.fabric = Fabric(accelerator="cuda" if dev.type == "cuda" else "cpu", devices=1,
                             precision="32-true", loggers=logger if logger is not None else None)
        self.fabric.launch()
        self.device = self.fabric.device if dev.type == "cuda" else dev
        self.cuda = self.device.type == "cuda"
        self.precision = fast_precision(recipe.train, self.device)
        if self.precision not in ("32-true", BF16):
            raise ValueError(f"train.precision={self.precision}: the fast path trains in 32-true or bf16-mixed")
        self.bf16 = self.precision == BF16
        self.channels_last = (self.cuda if self.opts.channels_last is None else self.opts.channels_last)
        self.graphs = self.opts.cuda_graphs
        tc = recipe.train
        self.batch = int(tc.batch_size)
        self.epochs = int(tc.epochs)
        self.pad, self.flip = recipe.pad, recipe.flip
        # data: uint8 resident on the device, uploaded once
        self.x = self.fabric.to_device(x_train.contiguous())
        self.y = self.fabric.to_device(y_train.long())
        self.norm = normalizer(mean, std, self.device)
        names = names or [f"model {i}" for i in range(len(seeds))]
        if model_fn is None:
            in_ch = int(x_train.shape[1])

            def model_fn():
                return build_model(recipe.model, num_classes, in_ch)

        self.slots: list[_Slot] = []
        for k, (members, seed) in enumerate(zip(member_idx_list, seeds)):
            L.seed_everything(int(seed), workers=True, verbose=False)  # same init as the plain path
            model = model_fn().to(self.device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model.train()
            n = len(members)
            if n == 0:
                raise ValueError(f"fast training: {names[k]} has no members")
            steps = n // self.batch if n > self.batch else 1   # DataLoader drop_last as in the plain path
            total = max(1, self.epochs * steps)
            lr = float(tc.lr)
            lr_arg = torch.tensor(lr, device=self.device) if self.graphs else lr
            opt = torch.optim.SGD(model.parameters(), lr=lr_arg, momentum=float(tc.momentum),
                                  weight_decay=float(tc.weight_decay), nesterov=False,
                                  **({"fused": True} if self.cuda else {}))
            if self.opts.compile and not self.graphs:
                model.compile(mode=None if self.opts.compile == "default" else self.opts.compile)
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
            stream = torch.cuda.Stream(device=self.device) if self.cuda else None
            slot = _Slot(k, names[k], model, opt, gen, self.fabric.to_device(members.long()), steps, total, stream,
                         self.device, lr, tc.get("schedule", "cosine"))
            if self.graphs:
                slot.lr_t = opt.param_groups[0]["lr"]
                slot.t_dev = torch.zeros((), device=self.device)
            self.slots.append(slot)
        self._join_default()  # side streams start after the uploads of the default stream

    # -- streams ------------------------------------------------------------------------------
    def _stream(self, slot: _Slot):
        return torch.cuda.stream(slot.stream) if slot.stream is not None else contextlib.nullcontext()

    def _join_default(self):
        """Every side stream waits for the default stream (uploads, resets)."""
        if self.cuda:
            cur = torch.cuda.current_stream(self.device)
            for s in self.slots:
                s.stream.wait_stream(cur)

    def synchronize(self):
        """The default stream waits for every model's stream (then the host, on CUDA)."""
        if self.cuda:
            cur = torch.cuda.current_stream(self.device)
            for s in self.slots:
                cur.wait_stream(s.stream)
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if self.bf16:
            # cache_enabled=False: the autocast weight-cast cache must not outlive a graph capture
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.graphs)
        return contextlib.nullcontext()

    # -- one step of one model ------------------------------------------------------------------
    def _batch(self, slot: _Slot) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of ``slot``'s own members: indices, gather, crop+flip, normalise (on device)."""
        if slot.pos == 0:
            perm = torch.randperm(len(slot.members), generator=slot.gen, device=self.device)
            slot.order = slot.members[perm]
        b = min(self.batch, len(slot.members))
        idx = slot.order[slot.pos * b:(slot.pos + 1) * b]
        slot.pos = (slot.pos + 1) % slot.steps_per_epoch
        slot.n_seen += len(idx)
        xb = crop_flip(self.x.index_select(0, idx), self.pad, self.flip, slot.gen)
        xb = self.norm(xb)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, self.y.index_select(0, idx)

    def _lr_factor(self, slot: _Slot, t):
        return _cosine(t, slot.total_steps) if slot.schedule == "cosine" else 1.0

    def _fwd_bwd_opt(self, slot: _Slot, xb, yb, tensor_lr: bool):
        """Forward, backward, SGD step; with ``tensor_lr`` the lr comes from the device step counter
        (the body of the captured graph); otherwise from the host counter."""
        if tensor_lr:
            slot.lr_t.copy_(slot.base_lr * self._lr_factor(slot, slot.t_dev) if slot.schedule == "cosine"
                            else torch.full_like(slot.lr_t, slot.base_lr))
        else:
            slot.opt.param_groups[0]["lr"] = slot.base_lr * self._lr_factor(slot, slot.t)
        slot.opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits = slot.model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        loss.backward()
        slot.opt.step()
        slot.loss_sum.add_(loss.detach())
        slot.correct.add_((logits.detach().argmax(1) == yb).sum())  # reads the logits only
        if tensor_lr:
            slot.t_dev.add_(1)

    def _step(self, slot: _Slot):
        with self._stream(slot):
            xb, yb = self._batch(slot)
            if not self.graphs:
                self._fwd_bwd_opt(slot, xb, yb, False)
            elif not self.cuda:                       # CPU: the graph body, run eagerly (tests)
                self._fwd_bwd_opt(slot, xb, yb, True)
            else:
                self._graph_step(slot, xb, yb)
        slot.t += 1
        slot.n_loss += 1

    # -- whole-step CUDA graph ----------------------------------------------------------------------
    GRAPH_WARMUP = 3  # eager steps (real training steps) on the side stream before capture

    def _graph_step(self, slot: _Slot, xb, yb):
        if slot.graph is None and slot.t < self.GRAPH_WARMUP:
            self._fwd_bwd_opt(slot, xb, yb, True)     # also creates the momentum buffers
            return
        if slot.graph is None:
            slot.static_x = xb.clone()
            slot.static_y = yb.clone()
            slot.graph = torch.cuda.CUDAGraph()
            slot.stream.synchronize()
            with torch.cuda.graph(slot.graph, stream=slot.stream):  # records, does not run
                self._fwd_bwd_opt(slot, slot.static_x, slot.static_y, True)
        slot.static_x.copy_(xb)
        slot.static_y.copy_(yb)
        slot.graph.replay()                           # on the current (= slot's) stream

    # -- loops ------------------------------------------------------------------------------------
    def steps(self, n: int):
        """``n`` steps of every model (epochs wrap around); no host synchronisation."""
        for _ in range(n):
            for slot in self.slots:
                self._step(slot)

    def epoch(self):
        """One epoch of every model (models with fewer batches sit out the last steps)."""
        for s in range(max(sl.steps_per_epoch for sl in self.slots)):
            for slot in self.slots:
                if s < slot.steps_per_epoch:
                    self._step(slot)

    def check_losses(self, epoch: int) -> list[float]:
        """The one host synchronisation per epoch: mean loss per model; raises on a non-finite one."""
        self.synchronize()
        sums = torch.stack([s.loss_sum for s in self.slots]).float().cpu()
        means = [float(v) / max(1, s.n_loss) for v, s in zip(sums, self.slots)]
        for s, m in zip(self.slots, means):
            if not math.isfinite(m):
                raise FloatingPointError(f"fast training: model index {s.index} ({s.name}): non-finite loss "
                                         f"in epoch {epoch}")
        correct = torch.stack([s.correct for s in self.slots]).cpu()
        self.last_acc = [int(c) / max(1, s.n_seen) for c, s in zip(correct, self.slots)]
        for s in self.slots:
            s.loss_sum.zero_()
            s.n_loss = 0
            s.correct.zero_()
            s.n_seen = 0
        self._join_default()
        return means

    def models(self) -> list[nn.Module]:
        self.synchronize()
        out = []
        for s in self.slots:
            m = getattr(s.model, "_orig_mod", s.model)
            # ``nn.Module.compile`` (train.compile) compiles in place: drop the compiled wrapper so the
            # returned model is a plain eager module. Otherwise every later call (evaluate_accuracy
            # in eval/no_grad mode with new batch sizes, CPU use) re-traces and recompiles it, on CPU
            # with Inductor's C++ backend (needs a compiler), and with 65 models hits the recompile limit.
            if getattr(m, "_compiled_call_impl", None) is not None:
                m._compiled_call_impl = None
            out.append(to_memory_format(m, False).cpu().eval())
        return out


@contextlib.contextmanager
def _nondeterministic_ok(cuda: bool):
    """The plain path's ``Trainer(deterministic=True)`` switches on deterministic algorithms for the
    whole process; some CUDA backward kernels (e.g. adaptive average pooling) then raise. The fast
    path does not promise bitwise determinism on CUDA, so lift the switch while it runs (restored)."""
    if not cuda:
        yield
        return
    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)
        torch.backends.cudnn.benchmark = bench


def train_models_fast(recipe: Recipe, data, member_idx_list: list[torch.Tensor], seeds: list[int], device,
                      names: list[str] | None = None, logger=None, on_epoch=None) -> list[nn.Module]:
    """Train ``len(seeds)`` fresh ``recipe.model``s, model k on ``data.x_train[member_idx_list[k]]`` with
    seed ``seeds[k]`` (init, shuffling, augmentation). Returns them on CPU, eval mode.

    All K models are trained in one loop (call it with ``models_per_step`` models at a time; see
    ``pipeline.train_pool``). Raises ``FloatingPointError`` naming the model whose loss became non-finite
    (checked once per epoch).
    """
    dev = torch.device(device)
    with _nondeterministic_ok(dev.type == "cuda"):
        tr = MultiModelTrainer(recipe, data.x_train, data.y_train, data.mean, data.std, data.num_classes,
                               member_idx_list, seeds, dev, names, logger=logger)
        for e in range(tr.epochs):
            tr.epoch()
            losses = tr.check_losses(e)
            if on_epoch is not None:
                on_epoch(len(seeds))
            if logger is not None:  # the plain path's keys: pool/mNN/train_loss|train_acc, per epoch
                curves = {"epoch": e}
                for s, loss, acc in zip(tr.slots, losses, tr.last_acc):
                    p = curve_prefix(s.name, recipe.pool_size)
                    curves.update({f"{p}/train_loss": loss, f"{p}/train_acc": acc})
                tr.fabric.log_dict(curves, step=e)
        return tr.models()
