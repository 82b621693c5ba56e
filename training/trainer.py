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
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler

from mtl_perception.dataset import MultiTaskDataset

from . import distributed as dist_utils
from .balancers import BALANCERS, BalanceContext
from .balancers.base import all_reduce_grads, all_reduce_mean
from .checkpoint import load_checkpoint, parameter_fingerprint, save_checkpoint
from .data import TaskDataset, to_device
from .logs import CsvLog, plot_curves, plot_weights
from .models.multitask import MultiTaskNet, build_model
from .recipe import Recipe
from .tasks import TASKS, DataInfo, Task

LAST = "last.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def prepare_data(recipe: Recipe, progress: bool = True) -> None:
    """Generates the synthetic train/val sets named by the recipe when they do not exist yet."""
    gen = recipe.data.generate
    if gen is None or not dist_utils.is_main():
        dist_utils.barrier()
        return
    from mtl_perception.synthetic import Camera, generate_dataset

    width, height = recipe.data.input_size
    camera = Camera.default(width * recipe.data.sr_scale, height * recipe.data.sr_scale)
    for root, frames, seed in ((recipe.data.train, gen.train_frames, gen.seed),
                               (recipe.data.val, gen.val_frames, gen.seed + 1)):
        if not (Path(root) / "dataset.json").exists():
            generate_dataset(root, frames, seed=seed, night_fraction=gen.night_fraction, camera=camera,
                             progress=progress)
    dist_utils.barrier()


def build_tasks(recipe: Recipe, source: MultiTaskDataset) -> Dict[str, Task]:
    info = DataInfo(semantic_classes=tuple(source.semantic_classes),
                    detection_classes=tuple(source.detection_classes),
                    sr_scale=recipe.data.sr_scale, input_size=tuple(recipe.data.input_size))
    return {name: TASKS[name](opts, info) for name, opts in recipe.task_options().items()}


def data_info_dict(tasks: Mapping[str, Task]) -> dict:
    """The data facts a checkpoint needs to rebuild its tasks without the dataset."""
    info = next(iter(tasks.values())).info
    return {"semantic_classes": list(info.semantic_classes), "detection_classes": list(info.detection_classes),
            "sr_scale": info.sr_scale, "input_size": list(info.input_size)}


def tasks_from_checkpoint(state: Mapping) -> Dict[str, Task]:
    from .recipe import recipe_from_dict

    recipe = recipe_from_dict(state["recipe"], "checkpoint recipe")
    d = state["data_info"]
    info = DataInfo(semantic_classes=tuple(d["semantic_classes"]), detection_classes=tuple(d["detection_classes"]),
                    sr_scale=int(d["sr_scale"]), input_size=tuple(d["input_size"]))
    return {name: TASKS[name](opts, info) for name, opts in recipe.task_options().items()}


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
        self.train_source = MultiTaskDataset(recipe.data.train)
        self.val_source = MultiTaskDataset(recipe.data.val)
        self.tasks = build_tasks(recipe, self.train_source)

        torch.manual_seed(recipe.seed)
        self.model = build_model(recipe.model, self.tasks).to(self.device)
        self.init_fingerprint = parameter_fingerprint(self.model.state_dict())
        task_weights = {name: task.options.weight for name, task in self.tasks.items()}
        self.balancer = BALANCERS[recipe.balancer.name](task_weights, recipe.balancer_options()).to(self.device)
        self.train_model = self.model
        if dist_utils.is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

        data = recipe.data
        self.train_set = TaskDataset(self.train_source, self.tasks, data.input_size, data.sr_scale,
                                     augment=data.augment_flip, seed=recipe.seed, cache=data.cache)
        self.val_set = TaskDataset(self.val_source, self.tasks, data.input_size, data.sr_scale, cache=data.cache)
        self.sampler = DistributedSampler(self.train_set, num_replicas=dist_utils.world_size(),
                                          rank=dist_utils.rank(), shuffle=True, seed=recipe.seed, drop_last=True)
        self.train_loader = DataLoader(self.train_set, batch_size=recipe.optim.batch_size, sampler=self.sampler,
                                       num_workers=data.workers, drop_last=True,
                                       persistent_workers=data.workers > 0)
        self.val_loader = DataLoader(self.val_set, batch_size=recipe.optim.batch_size, shuffle=False,
                                     num_workers=data.workers)
        self.steps_per_epoch = max(1, len(self.train_loader) // recipe.optim.accumulate)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # AMP: bf16 autocast on CPU (no loss scaling needed), fp16 + GradScaler on CUDA
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=recipe.optim.amp and self.device.type == "cuda")
        self.shared_params = self.model.shared_parameters()
        self.last_shared_params = self.model.last_shared_parameters()
        self.task_params = self.model.task_parameters()
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps
        self.history: list = []

    # -- setup -------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        opt = self.recipe.optim
        decay, no_decay = [], []
        for param in self.model.parameters():
            (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [{"params": decay, "weight_decay": opt.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
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
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
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
        last = self.recipe.optim.epochs if stop_after_epoch is None else min(stop_after_epoch, self.recipe.optim.epochs)
        while self.epoch < last:
            t0 = time.time()
            mean_losses = self.train_epoch(step_log)
            metrics = dist_utils.broadcast_object(evaluate(self.model, self.tasks, self.val_loader) if main else None)
            self.balancer.epoch_end(self.epoch, mean_losses, metrics)
            self.epoch += 1
            row = {"epoch": self.epoch, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
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
                print(f"epoch {self.epoch}/{self.recipe.optim.epochs} ({row['seconds']:.0f}s)  {summary}", flush=True)
            dist_utils.barrier()
        return self.history

    def train_epoch(self, step_log: Optional[CsvLog]) -> Dict[str, float]:
        opt = self.recipe.optim
        self.train_model.train()
        self.sampler.set_epoch(self.epoch)
        self.train_set.set_epoch(self.epoch)
        sums = {t: 0.0 for t in self.tasks}
        count = 0
        batches = self.train_loader
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {self.epoch + 1}/{opt.epochs}", leave=False, dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        # a balancer that writes gradients itself does not backpropagate through DDP's hooks:
        # run it without DDP's sync and average the gradients here instead
        manual_sync = dist_utils.is_distributed() and self.balancer.manual_gradients
        for i, batch in enumerate(batches):
            batch = to_device(batch, self.device)
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
                bad = [t for t, v in losses.items() if not torch.isfinite(v)]
                if bad:
                    raise TrainingError(f"non-finite {', '.join(bad)} loss at epoch {self.epoch + 1}, step {self.step}; "
                                        f"the last good checkpoint is {self.out_dir / LAST}")
                ctx = BalanceContext(
                    shared_params=self.shared_params,
                    last_shared_params=self.last_shared_params,
                    representation=list(head_inputs.values()) if self.balancer.needs_representation else None,
                    trunk_features=list(features.values()) if self.balancer.needs_representation else None,
                    scale_loss=self.scaler.scale if self.scaler.is_enabled() else (lambda loss: loss),
                    step=self.step, epoch=self.epoch, task_params=self.task_params, accumulate=opt.accumulate,
                )
                scaled = {t: v / opt.accumulate for t, v in losses.items()}
                logged = self.balancer.backward(scaled, ctx)
            values = {t: float(v.detach()) for t, v in losses.items()}
            for t, v in values.items():
                sums[t] += v
            count += 1
            if (i + 1) % opt.accumulate:
                continue
            if manual_sync:
                all_reduce_grads(list(self.model.parameters()))
            if dist_utils.is_distributed():  # balancer parameters are outside DDP's model
                all_reduce_grads([p for p in self.balancer.parameters() if p.requires_grad])
            if opt.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), opt.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.balancer.after_step()
            self.scheduler.step()
            self.step += 1
            if step_log is not None:
                row = {"step": self.step, "epoch": self.epoch + (i + 1) / len(self.train_loader)}
                row.update({f"loss/{t}": v for t, v in values.items()})
                row.update(logged)
                step_log.append(row)
            if self.progress:
                batches.set_postfix({t[:5]: f"{v:.3f}" for t, v in values.items()})
        means = all_reduce_mean(torch.tensor([sums[t] / max(1, count) for t in self.tasks], dtype=torch.float64))
        return dict(zip(self.tasks, means.tolist()))


def _to_float(value):
    """Predictions made under autocast, cast back to float32 (tensors inside dicts/lists too)."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value
