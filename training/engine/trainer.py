"""The multi-task trainer: one loop for any set of registered tasks and any balancer.

No global state: everything lives on the `Trainer`. Sampling is by `DistributedSampler`
(rank-aware, seeded per epoch), logs and checkpoints are written by rank 0 only, so wrapping
the model in DDP under torchrun needs no rewrite. Resume is exact: data order and flips
depend only on (seed, epoch, index), and the checkpoint holds model, optimizer, scheduler,
balancer and RNG state at an epoch boundary.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler

from mtl_perception.data.synthetic import Camera, generate_dataset
from training.balancers import BALANCERS, BalanceContext
from training.balancers.base import all_reduce_grads, all_reduce_mean
from training.engine import distributed as dist_utils
from training.engine.checkpoint import load_checkpoint, parameter_fingerprint, save_checkpoint
from training.engine.data import EpochSampler, MixedSource, SourceSampler, TaskDataset, open_sources, to_device
from training.engine.distill import Distiller
from training.engine.logs import CsvLog, plot_curves, plot_weights
from training.engine.network import build_tasks, data_info_dict, expanded_layers, network_from_recipe
from training.engine.sam import frozen_bn_stats, frozen_buffers, sam_from_config
from training.engine.swa import SWACollector
from training.models.collapse import collapse
from training.models.multitask import MultiTaskNet
from training.recipe.core import GenerateConfig, Recipe
from training.tasks import Task

LAST = "last.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def _synthetic_jobs(recipe: Recipe) -> List[tuple]:
    """(root, frames, seed) of every synthetic set the recipe names: `data.generate`'s train/val
    folders and the `format: synthetic` entries of source lists."""
    data, gen = recipe.data, recipe.data.generate
    jobs = []
    for spec, frames, seed in ((data.train, gen and gen.train_frames, gen and gen.seed),
                               (data.val, gen and gen.val_frames, gen and gen.seed + 1)):
        if isinstance(spec, str):
            if gen is not None:
                jobs.append((spec, frames, seed))
        else:
            jobs.extend((s.root, s.frames, s.seed) for s in spec if s.format == "synthetic")
    return jobs


def prepare_data(recipe: Recipe, progress: bool = True) -> None:
    """Generates the synthetic sets named by the recipe when they do not exist yet."""
    jobs = _synthetic_jobs(recipe)
    if not jobs or not dist_utils.is_main():
        dist_utils.barrier()
        return
    gen = recipe.data.generate or GenerateConfig()
    width, height = recipe.data.input_size
    camera = Camera.default(width * recipe.data.sr_scale, height * recipe.data.sr_scale)
    for root, frames, seed in jobs:
        if not (Path(root) / "dataset.json").exists():
            generate_dataset(root, frames, seed=seed, night_fraction=gen.night_fraction, camera=camera,
                             progress=progress)
    dist_utils.barrier()


def evaluate(model: MultiTaskNet, tasks: Mapping[str, Task], loader: DataLoader) -> Dict[str, Dict[str, float]]:
    """Validation metrics per task, computed on decoded outputs (what the exported model returns)."""
    metrics = {name: task.new_metric() for name, task in tasks.items()}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in loader:
            image01 = batch["image"].to(device).float() / 255.0
            preds = model(image01)
            numpy_batch = {k: v.numpy() for k, v in batch.items()}
            for name, task in tasks.items():
                decoded = {k: v.cpu().numpy() for k, v in task.decode(preds[name], image01).items()}
                task.update_metric(metrics[name], decoded, numpy_batch)
    model.train(was_training)
    return {name: {k: v for k, v in m.compute().items() if isinstance(v, (int, float))}
            for name, m in metrics.items()}


class Trainer:
    def __init__(self, recipe: Recipe, out_dir: Optional[str] = None, progress: bool = True,
                 device: str = "cpu", plots: bool = True):
        """plots: redraw curves.png and weights.png after every epoch (a second or two each)."""
        self.recipe = recipe
        self.plots = plots
        self.out_dir = Path(out_dir or recipe.out_dir)
        self.progress = progress and dist_utils.is_main()
        self.device = torch.device(device)
        if recipe.threads:
            torch.set_num_threads(recipe.threads)

        prepare_data(recipe, progress=self.progress)
        data = recipe.data
        self.train_source = open_sources(data.train, data.semantic_classes, data.detection_classes)
        self.val_source = open_sources(data.val, self.train_source.semantic_classes,
                                       self.train_source.detection_classes, where="data.val")
        self.tasks = build_tasks(recipe, self.train_source)

        torch.manual_seed(recipe.seed)
        # over-parameterised as `overparam` says; a timm encoder's pretrained weights and frozen stages
        self.model = network_from_recipe(recipe, self.tasks, load_pretrained=True)
        self.expanded_layers = expanded_layers(self.model)
        self.model.to(self.device)
        self.collapsed = False  # True once the over-parameterised layers were collapsed for fine-tuning
        self.init_fingerprint = parameter_fingerprint(self.model.state_dict())
        task_weights = {name: task.options.weight for name, task in self.tasks.items()}
        self.balancer = BALANCERS[recipe.balancer.name](task_weights, recipe.balancer_options()).to(self.device)

        data = recipe.data
        self.train_set = TaskDataset(self.train_source, self.tasks, data.input_size, data.sr_scale,
                                     augment=data.augmentation, seed=recipe.seed, cache=data.cache,
                                     resize=data.resize)
        self.val_set = TaskDataset(self.val_source, self.tasks, data.input_size, data.sr_scale, cache=data.cache,
                                   resize=data.resize)
        if isinstance(self.train_source, MixedSource):  # draws by the sources' sampling weights
            self.sampler = SourceSampler(self.train_source, seed=recipe.seed, num_replicas=dist_utils.world_size(),
                                         rank=dist_utils.rank())
        else:
            self.sampler = DistributedSampler(self.train_set, num_replicas=dist_utils.world_size(),
                                              rank=dist_utils.rank(), shuffle=True, seed=recipe.seed, drop_last=True)
        self.train_loader = DataLoader(self.train_set, batch_size=recipe.optim.batch_size,
                                       sampler=EpochSampler(self.sampler),
                                       num_workers=data.workers, drop_last=True,
                                       persistent_workers=data.workers > 0)
        self.val_loader = DataLoader(self.val_set, batch_size=recipe.optim.batch_size, shuffle=False,
                                     num_workers=data.workers)
        self.steps_per_epoch = max(1, len(self.train_loader) // recipe.optim.accumulate)
        self.distiller = None  # frozen teachers' distillation terms (recipe `distill`)
        if recipe.distill is not None:
            self.distiller = Distiller(recipe.distill, self.tasks, data_info_dict(self.tasks),
                                       self.model.trunk.feature_channels, self.train_set, recipe.data.train,
                                       recipe.data.resize, self.device)
        self.sam = None  # SAM wrapper around self.optimizer (recipe `sam`)
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.swa = None  # weight averaging during the last epochs (recipe `swa`)
        self.swa_done = False  # the averaged weights have replaced the model's
        self.stage_metrics: Dict[str, dict] = {}  # validation metrics at stage boundaries (before SWA)
        if recipe.swa is not None:
            self.swa = SWACollector.from_config(self.model, self.optimizer, recipe.swa, device=self.device)
        # AMP: bf16 autocast on CPU (no loss scaling needed), fp16 + GradScaler on CUDA
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=recipe.optim.amp and self.device.type == "cuda")
        self._bind_model()
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps
        self.history: list = []
        self.skipped_in_a_row = 0  # optimizer steps skipped for a non-finite loss or gradient
        self._saved_buffers: List[torch.Tensor] = []  # BN statistics at the current step's start
        #: called as hook(trainer, batch) with each training micro-batch (on the device) before its
        #: forward pass; e.g. task grouping's lookahead affinities read the model here
        self.batch_hooks: List[Callable[["Trainer", dict], None]] = []

    # -- setup -------------------------------------------------------------------------------
    def _bind_model(self) -> None:
        """(Re)creates what refers to the model's parameters: the DDP wrapper and the parameter
        lists the balancers read. Called again after the collapse swaps layers."""
        self.train_model = self.model
        if dist_utils.is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.shared_params = self.model.shared_parameters()
        self.last_shared_params = self.model.last_shared_parameters()
        self.task_params = self.model.task_parameters()

    def _enter_finetune(self) -> None:
        """Collapses the over-parameterised layers and goes on training the compact network with
        a fresh optimizer at `finetune_lr_scale` x lr, cosine to zero (the design notes'
        fine-tune after collapse: it repairs what the collapse cannot, e.g. BN statistics)."""
        collapse(self.model)
        self.model.to(self.device)
        self.collapsed = True
        self._bind_model()
        self.optimizer = self._build_optimizer()
        for group in self.optimizer.param_groups:
            group["lr"] *= self.recipe.overparam.finetune_lr_scale
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._finetune_lr_factor)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """The recipe's optimizer over the model (and balancer, distillation adaptors), wrapped
        by SAM when the recipe asks for it (`self.sam`; the scheduler and checkpoint use the base)."""
        optimizer = self._make_optimizer()
        if self.distiller is not None and self.distiller.parameters():
            optimizer.add_param_group({"params": self.distiller.parameters(), "weight_decay": 0.0, "name": "distill"})
        if self.recipe.sam is not None:
            if not self.recipe.sam.perturb_balancer:
                for group in optimizer.param_groups:
                    if group.get("name") == "balancer":
                        group["sam"] = False
            self.sam = sam_from_config(optimizer, self.recipe.sam)
        return optimizer

    def _finish_swa(self) -> None:
        """End of the SWA phase: the average (BN statistics refreshed on training batches)
        replaces the model's weights; what follows (evaluation, collapse, export) uses it."""
        if dist_utils.is_main():  # what the average is compared with in the full recipe's report
            self.stage_metrics["before_swa"] = evaluate(self.model, self.tasks, self.val_loader)
        averaged = self.swa.finalize(self.train_loader, self.device, self.recipe.swa.bn_batches)
        self.model.load_state_dict(averaged.state_dict())
        self.swa, self.swa_done = None, True

    def _finetune_due(self) -> bool:
        over = self.recipe.overparam
        return (over.enabled and over.finetune_epochs > 0 and not self.collapsed
                and self.epoch >= self.recipe.optim.epochs)

    def _finetune_lr_factor(self, step: int) -> float:
        total = max(1, self.recipe.overparam.finetune_epochs * self.steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))

    def _make_optimizer(self) -> torch.optim.Optimizer:
        opt = self.recipe.optim
        decay, no_decay = [], []
        mixing = self.model.mixing_parameters()  # cross-stitch / NDDR mixing: own lr, never decayed
        mixing_ids = {id(p) for p in mixing}
        encoder_ids = {id(p) for p in self.model.encoder_parameters()}  # timm encoder: lr x encoder_lr_scale
        enc_decay, enc_no_decay = [], []
        for param in self.model.parameters():
            if id(param) not in mixing_ids:
                own = (enc_decay, enc_no_decay) if id(param) in encoder_ids else (decay, no_decay)
                own[1 if param.ndim <= 1 else 0].append(param)
        groups = [{"params": decay, "weight_decay": opt.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if encoder_ids:
            scaled = opt.lr * self.recipe.model.encoder_lr_scale
            groups += [{"params": enc_decay, "weight_decay": opt.weight_decay, "name": "encoder", "lr": scaled},
                       {"params": enc_no_decay, "weight_decay": 0.0, "name": "encoder", "lr": scaled}]
        if mixing:
            groups.append({"params": mixing, "weight_decay": 0.0, "name": "mixing",
                           "lr": opt.lr * self.recipe.model.mixing_lr_scale})
        balancer_params = list(self.balancer.parameters())
        if balancer_params:  # learnable task weights get their own group, never decayed
            groups.append({"params": balancer_params, "weight_decay": 0.0, "name": "balancer",
                           "lr": self.balancer.param_lr() or opt.lr})
        if opt.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=opt.lr)

    def _lr_factor(self, step: int) -> float:
        opt = self.recipe.optim
        total = max(1, opt.epochs * self.steps_per_epoch)
        if step < opt.warmup_steps:
            return (step + 1) / opt.warmup_steps
        if opt.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - opt.warmup_steps) / max(1, total - opt.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "balancer": self.balancer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(), "recipe": self.recipe.to_dict(), "history": self.history,
            "init_fingerprint": self.init_fingerprint, "data_info": data_info_dict(self.tasks),
            "collapsed": self.collapsed,
            "swa": self.swa.state_dict() if self.swa is not None else None, "swa_done": self.swa_done,
            "stage_metrics": self.stage_metrics,
            "distill_adaptors": self.distiller.adaptors.state_dict()
            if self.distiller is not None and self.distiller.adaptors is not None else None,
        }

    def load_state(self, state: dict) -> None:
        if state.get("collapsed") and not self.collapsed:  # saved during fine-tuning after the collapse
            self._enter_finetune()
        self.model.load_state_dict(state["model"])
        if state.get("distill_adaptors") and self.distiller is not None and self.distiller.adaptors is not None:
            self.distiller.adaptors.load_state_dict(state["distill_adaptors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stage_metrics = dict(state.get("stage_metrics") or {})
        if state.get("swa_done"):
            self.swa, self.swa_done = None, True
        elif state.get("swa") is not None and self.swa is not None:
            self.swa.load_state_dict(state["swa"])
        self.balancer.load_state_dict(state["balancer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.init_fingerprint = state["init_fingerprint"]

    def resume_if_possible(self) -> bool:
        path = self.out_dir / LAST
        if not path.exists():
            return False
        self.load_state(load_checkpoint(path))
        return True

    # -- loop --------------------------------------------------------------------------------
    def fit(self, stop_after_epoch: Optional[int] = None) -> list:
        """Trains to `optim.epochs` (or stops after `stop_after_epoch` completed epochs)."""
        resumed = self.resume_if_possible()
        main = dist_utils.is_main()
        epoch_log = step_log = None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            epoch_log = CsvLog(self.out_dir / "metrics.csv")
            step_log = CsvLog(self.out_dir / "steps.csv")
            # rows written after the checkpoint we resumed from belong to a lost future: drop them
            epoch_log.truncate(lambda r: r.get("epoch", 0) <= self.epoch)
            step_log.truncate(lambda r: r.get("step", 0) <= self.step)
            if resumed:
                print(f"resumed from {self.out_dir / LAST} at epoch {self.epoch}")
        total = self.recipe.total_epochs
        last = total if stop_after_epoch is None else min(stop_after_epoch, total)
        while self.epoch < last:
            if self._finetune_due():
                self._enter_finetune()
                if main:
                    print(f"collapsed {len(self.expanded_layers)} over-parameterised layers; "
                          f"fine-tuning for {self.recipe.overparam.finetune_epochs} epochs", flush=True)
            t0 = time.time()
            if self.swa is not None:
                self.swa.epoch_start(self.epoch)
            mean_losses = self.train_epoch(step_log)
            if self.swa is not None:
                self.swa.epoch_end(self.epoch)
                if self.epoch + 1 == self.recipe.optim.epochs:
                    self._finish_swa()
            metrics = dist_utils.broadcast_object(evaluate(self.model, self.tasks, self.val_loader) if main else None)
            if all(math.isfinite(v) for v in mean_losses.values()):  # else a task was absent all epoch:
                self.balancer.epoch_end(self.epoch, mean_losses, metrics)  # its balancer state is held
            self.epoch += 1
            row = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                   "seconds": round(time.time() - t0, 2)}
            row.update({f"train/{t}": v for t, v in mean_losses.items()})
            row.update({f"val/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()})
            self.history.append(row)
            if main:
                epoch_log.append(row)
                save_checkpoint(self.out_dir / LAST, self.state())
                if self.plots:
                    plot_curves(epoch_log.rows, step_log.rows, self.out_dir / "curves.png", self.recipe.name)
                    plot_weights(step_log.rows, self.out_dir / "weights.png",
                                 f"{self.recipe.name}: {self.recipe.balancer.name} task weights")
                summary = "  ".join(f"{t}.{self.tasks[t].main_metric}={metrics[t][self.tasks[t].main_metric]:.4f}"
                                    for t in self.tasks)
                print(f"epoch {self.epoch}/{total} ({row['seconds']:.0f}s)  {summary}", flush=True)
            dist_utils.barrier()
        return self.history

    def _backward(self, batch: dict, manual_sync: bool):
        """Forward, task losses (+ distillation terms) and the balancer's backward for one
        micro-batch; returns the task losses as floats, the balancer's logged values and None, or
        (None, {}, why) without a backward when a loss is not finite (on any rank)."""
        opt = self.recipe.optim
        image01 = batch["image"].float() / 255.0
        with self.train_model.no_sync() if manual_sync else contextlib.nullcontext():
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=opt.amp):
                if self.balancer.needs_representation:  # heads read features cut from the trunk
                    preds, features, head_inputs = self.train_model(image01, cut_features=True)
                else:
                    preds, features = self.train_model(image01, return_features=True)
            if opt.amp:  # losses in float32, outside autocast
                preds = _to_float(preds)
            losses = {t: task.loss(preds[t], batch) for t, task in self.tasks.items()}
            losses, present = self._label_presence(losses, batch)
            if self.distiller is not None:  # each task's distillation terms join that task's loss
                for t, term in self.distiller.losses(batch, image01, preds, features).items():
                    losses[t] = losses[t] + term
            bad = [t for t, v in losses.items() if not torch.isfinite(v)]
            if self._on_any_rank(bool(bad)):  # no backward: every rank skips the step (DDP stays in step)
                values = ", ".join(f"{t} loss {float(losses[t].detach()):g}" for t in bad)
                return None, {}, f"non-finite {values}" if bad else "non-finite loss on another rank"
            ctx = BalanceContext(
                shared_params=self.shared_params,
                last_shared_params=self.last_shared_params,
                representation=list(head_inputs.values()) if self.balancer.needs_representation else None,
                trunk_features=list(features.values()) if self.balancer.needs_representation else None,
                scale_loss=self.scaler.scale if self.scaler.is_enabled() else (lambda loss: loss),
                step=self.step, epoch=self.epoch, task_params=self.task_params, accumulate=opt.accumulate,
            )
            scaled = {t: v / opt.accumulate for t, v in losses.items()}
            logged = self.balancer.balance(scaled, present, ctx)
        return {t: float(losses[t].detach()) for t in present}, logged, None

    def _on_any_rank(self, flag: bool) -> bool:
        """`flag` or'ed over the DDP ranks (itself when not distributed)."""
        if not dist_utils.is_distributed():
            return flag
        return float(all_reduce_mean(torch.tensor([float(flag)], device=self.device))) > 0

    def _float_buffers(self) -> List[torch.Tensor]:
        """The model's floating-point buffers (BatchNorm statistics): a forward pass updates them,
        so a skipped step puts them back (`_skip_step`)."""
        return [b for b in self.model.buffers() if b.is_floating_point()]

    def _non_finite_state(self) -> Optional[str]:
        """What went non-finite in this step: a gradient (a task's head or the shared part, and
        the parameter), or a BatchNorm statistic (the training forward normalises with the
        batch's own statistics, so the loss can stay finite while the running ones overflow);
        None when all is finite. Under fp16 AMP a gradient overflow is GradScaler's to handle
        (it skips the step and lowers the scale), so gradients are not checked then."""
        buffers = [(name, b) for name, b in self.model.named_buffers() if b.is_floating_point()]
        check_grads = not self.scaler.is_enabled()
        grads = [(name, p) for name, p in self._named_trainable() if p.grad is not None] if check_grads else []
        tensors = [b for _, b in buffers] + [p.grad for _, p in grads]
        if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            return None  # the every-step path: one host sync, whatever the number of tensors
        for name, b in buffers:
            if not bool(torch.isfinite(b).all()):
                return f"non-finite BatchNorm statistics ({name})"
        owner = {id(p): t for t, params in self.task_params.items() for p in params}
        # the heads first: a task's non-finite gradient reaches the trunk too, the task is the news
        for name, p in sorted(grads, key=lambda item: id(item[1]) not in owner):
            if not bool(torch.isfinite(p.grad).all()):
                where = f"the {owner[id(p)]} head" if id(p) in owner else "the shared parameters"
                return f"non-finite gradient in {where} ({name})"
        return None

    def _named_trainable(self):
        """The model's and the balancer's parameters, by name (the balancer's prefixed)."""
        yield from self.model.named_parameters()
        yield from ((f"balancer.{n}", p) for n, p in self.balancer.named_parameters())

    def _reduced_and_checked(self, manual_sync: bool) -> Optional[str]:
        """Averages the step's gradients over the ranks, then why the step must be skipped
        (`_non_finite_state`), or None: the same answer on every rank (BN statistics are per rank)."""
        self._reduce_gradients(manual_sync)
        skip = self._non_finite_state()
        if self._on_any_rank(skip is not None) and skip is None:
            skip = "non-finite BatchNorm statistics on another rank"
        return skip

    def _skip_step(self, reason: str) -> None:
        """Drops the step's gradients and puts back the BatchNorm statistics its forward passes
        moved (`self._saved_buffers`); after `optim.max_nonfinite_steps` skipped steps in a row
        the run stops with a one-line error (checkpoints are written at epoch ends only, so the
        last one is from before the divergence)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(self._float_buffers(), self._saved_buffers):
                buffer.copy_(saved)
        self.skipped_in_a_row += 1
        where = f"epoch {self.epoch + 1}, step {self.step + self.skipped_in_a_row}"
        limit = self.recipe.optim.max_nonfinite_steps
        if self.skipped_in_a_row >= limit:
            last = self.out_dir / LAST
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
            raise TrainingError(f"training diverged: {reason} at {where}, {self.skipped_in_a_row} steps in a row "
                                f"(optim.max_nonfinite_steps = {limit}); {kept}")
        if dist_utils.is_main():
            warnings.warn(f"{reason} at {where}: step skipped ({self.skipped_in_a_row} of at most {limit} in a row)",
                          RuntimeWarning, stacklevel=2)


    def _label_presence(self, losses: Dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor]):
        """(losses, present tasks) under partial labels. One all-reduce of the per-task labelled
        counts gives every rank the same present tasks (so all run the same collectives); each
        rank's loss (a mean over its labelled samples) is scaled by n_rank * W / n_all, so DDP's
        gradient mean is that of the mean over all labelled samples (exact per sample; per pixel
        or per object when every labelled sample has as many)."""
        size = batch["image"].shape[0]
        counts = torch.tensor([float(batch[f"{t}_labelled"].sum()) if f"{t}_labelled" in batch else float(size)
                               for t in self.tasks], dtype=torch.float64)
        world = dist_utils.world_size()
        total = all_reduce_mean(counts.clone()) * world
        present = [t for t, n in zip(self.tasks, total.tolist()) if n > 0]
        if world > 1:
            factors = torch.where(total > 0, counts * world / total.clamp(min=1), torch.zeros_like(counts))
            losses = {t: v * float(f) for (t, v), f in zip(losses.items(), factors.tolist())}
        return losses, present

    def _reduce_gradients(self, manual_sync: bool) -> None:
        if manual_sync:
            all_reduce_grads(list(self.model.parameters()))
        if dist_utils.is_distributed():  # balancer parameters are outside DDP's model
            all_reduce_grads([p for p in self.balancer.parameters() if p.requires_grad])

    def _clip_gradients(self) -> None:
        if self.recipe.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)

    def _sam_second_pass(self, window: list, manual_sync: bool) -> bool:
        """SAM: climb to w + rho g/|g| along the (balanced, accumulated) gradient, recompute the
        gradient there on the same micro-batches without moving BN statistics or balancer state,
        then step from w with it. (The loss scale of AMP does not change the perturbation, so
        the gradient is unscaled once, for the second pass, as GradScaler allows.) False when
        the step was skipped (a non-finite loss or gradient at the perturbed point)."""
        if self.sam.first_step():
            self.optimizer.zero_grad(set_to_none=True)
            skip = None
            with frozen_bn_stats(self.model), frozen_buffers(self.balancer):
                for batch in window:
                    skip = skip or self._backward(batch, manual_sync)[2]
            if skip is None:
                skip = self._reduced_and_checked(manual_sync)
            if skip is not None:  # diverged at the perturbed point: back to w, no step
                self.sam.restore()
                self._skip_step(f"{skip} (SAM's second pass)")
                return False
        self._clip_gradients()
        self.sam.restore()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return True

    def _after_step(self) -> None:
        """Per-optimizer-step work of the optional stages (SWA collection per step)."""
        if self.swa is not None:
            self.swa.step_end(self.epoch)

    def train_epoch(self, step_log: Optional[CsvLog]) -> Dict[str, float]:
        opt = self.recipe.optim
        self.train_model.train()
        self.sampler.set_epoch(self.epoch)
        self.train_set.set_epoch(self.epoch)
        sums = {t: 0.0 for t in self.tasks}
        seen = {t: 0 for t in self.tasks}  # micro-batches in which the task was labelled
        batches = self.train_loader
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.recipe.total_epochs}", leave=False,
                           dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        # a balancer that writes gradients itself does not backpropagate through DDP's hooks:
        # run it without DDP's sync and average the gradients here instead
        manual_sync = dist_utils.is_distributed() and self.balancer.manual_gradients
        window = []  # the micro-batches of the current optimizer step (SAM's second pass re-runs them)
        skip = None  # why the current optimizer step is skipped (a non-finite loss or gradient)
        for i, batch in enumerate(batches):
            batch = to_device(batch, self.device)
            for hook in self.batch_hooks:
                hook(self, batch)
            if i % opt.accumulate == 0:  # the step's first micro-batch: what a skipped step restores
                self._saved_buffers = [b.detach().clone() for b in self._float_buffers()]
            if skip is None:
                values, logged, skip = self._backward(batch, manual_sync)
            if self.sam is not None:
                window.append(batch)
            if skip is None:
                for t, v in values.items():
                    sums[t] += v
                    seen[t] += 1
            if (i + 1) % opt.accumulate:
                continue
            if skip is None:
                skip = self._reduced_and_checked(manual_sync)
            if skip is not None:
                self._skip_step(skip)
                skip, window = None, []
                continue
            if self.sam is not None:
                if not self._sam_second_pass(window, manual_sync):
                    window = []
                    continue
            else:
                self._clip_gradients()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.skipped_in_a_row = 0
            window = []
            self.optimizer.zero_grad(set_to_none=True)
            self.balancer.step_end()
            if self.swa is None or not self.swa.controls_lr(self.epoch):  # SWALR steps per epoch instead
                self.scheduler.step()
            self.step += 1
            self._after_step()
            if step_log is not None:
                row = {"step": self.step, "epoch": self.epoch + (i + 1) / len(self.train_loader)}
                row.update({f"loss/{t}": values.get(t, float("nan")) for t in self.tasks})
                row.update(logged)
                step_log.append(row)
            if self.progress:
                batches.set_postfix({t[:5]: f"{v:.3f}" for t, v in values.items()})
        totals = all_reduce_mean(torch.tensor([[sums[t], seen[t]] for t in self.tasks], dtype=torch.float64))
        return {t: (s / n if n > 0 else float("nan")) for t, (s, n) in zip(self.tasks, totals.tolist())}


def _to_float(value):
    """Predictions made under autocast, cast back to float32 (tensors inside dicts/lists too)."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value
