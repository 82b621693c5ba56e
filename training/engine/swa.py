"""Stochastic weight averaging on torch.optim.swa_utils, and averaging of finished checkpoints.

- `update_bn_multitask`: torch's `update_bn` fed with our multi-task batches (uint8 images in a
  dict): averaged weights need fresh BatchNorm statistics, the averaged statistics of the
  snapshots are not the statistics of the averaged weights.
- `SWACollector`: in-training SWA (AveragedModel + SWALR) from a configurable epoch, per epoch
  or per optimizer step, resumable through `state_dict`.
- `average_checkpoints` (`mtl-train average`, wired to the data in `average.py`): the uniform
  mean of any set of checkpoints that share an initialisation (the trainer's
  `init_fingerprint`), or a greedy selection that keeps a checkpoint only if the average
  improves on validation. The design notes found averages of
  runs with different task weightings or balancers better than one run's trajectory, and that
  averaging only works within one initialisation, so mismatches are refused.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from mtl_perception.evaluation.metrics import delta_m
from training.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.engine.network import checkpoint_recipe, network_from_checkpoint, tasks_from_checkpoint

Metrics = Mapping[str, Mapping[str, float]]
#: evaluate_fn(model) -> a score (higher is better) or validation metrics {task: {metric: value}}
EvaluateFn = Callable[[nn.Module], Union[float, Metrics]]


class AveragingError(CheckpointError):
    """Checkpoints cannot be averaged (different initialisation, model or tasks); names the files."""


# -- BatchNorm refresh ---------------------------------------------------------------------------
def image_batches(loader: Iterable[Mapping[str, torch.Tensor]], device=None,
                  max_batches: int = 0) -> Iterator[torch.Tensor]:
    """The network inputs of multi-task batches: batch["image"] (uint8 NCHW) -> float in [0, 1]."""
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            return
        image = batch["image"]
        if device is not None:
            image = image.to(device)
        yield image.float() / 255.0


def update_bn_multitask(loader: Iterable[Mapping[str, torch.Tensor]], model: nn.Module, device=None,
                        max_batches: int = 0) -> None:
    """Recomputes every BatchNorm's running statistics over `loader` (torch's update_bn: reset,
    cumulative average over one pass in training mode, momenta and train/eval mode restored).
    `device`: where the images go (default: the model's); `max_batches`: 0 = the whole loader."""
    if device is None:
        device = next(iter(model.parameters())).device
    update_bn(image_batches(loader, device, max_batches), model)


# -- in-training SWA -----------------------------------------------------------------------------
class SWACollector:
    """SWA during training: `AveragedModel` of `model` plus, with `swa_lr`, `SWALR` on the base
    optimizer.

    Epochs are counted as the trainer does (`epoch` = completed epochs before the one running,
    0-based). Epochs `start_epoch, start_epoch + 1, ...` are the SWA phase. The trainer calls:

    - `epoch_start(epoch)` before each epoch (creates SWALR when the phase begins);
    - `step_end(epoch)` after each optimizer step (collects when `every == "step"`);
    - `epoch_end(epoch)` after each epoch, before `epoch` is incremented (collects when
      `every == "epoch"`, then steps SWALR);
    - `controls_lr(epoch)`: when True the trainer skips its own scheduler's `step()`;
    - `finalize(loader)` at the end: BN refresh on the training data, returns the averaged model.

    `state_dict()` goes into the checkpoint so that a resumed run averages exactly the same
    snapshots.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, start_epoch: int = 0,
                 every: str = "epoch", swa_lr: Optional[float] = None, anneal_epochs: int = 1,
                 anneal_strategy: str = "cos", device=None):
        if every not in ("epoch", "step"):
            raise ValueError(f"every must be 'epoch' or 'step', got {every!r}")
        self.model = model
        self.optimizer = optimizer
        self.start_epoch = int(start_epoch)
        self.every = every
        self.swa_lr = swa_lr
        self.anneal_epochs = int(anneal_epochs)
        self.anneal_strategy = anneal_strategy
        self.averaged = AveragedModel(model, device=device)
        self.scheduler: Optional[SWALR] = None

    @classmethod
    def from_config(cls, model: nn.Module, optimizer: torch.optim.Optimizer, config, device=None) -> "SWACollector":
        """From a `recipe_extras.SWAConfig`."""
        return cls(model, optimizer, start_epoch=config.start_epoch, every=config.every, swa_lr=config.lr,
                   anneal_epochs=config.anneal_epochs, anneal_strategy=config.anneal_strategy, device=device)

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch

    def controls_lr(self, epoch: int) -> bool:
        return self.swa_lr is not None and self.active(epoch)

    def _make_scheduler(self) -> None:
        # created only when the phase begins: a scheduler sets the learning rate on construction
        self.scheduler = SWALR(self.optimizer, swa_lr=self.swa_lr, anneal_epochs=self.anneal_epochs,
                               anneal_strategy=self.anneal_strategy)

    def epoch_start(self, epoch: int) -> None:
        if self.controls_lr(epoch) and self.scheduler is None:
            self._make_scheduler()

    def step_end(self, epoch: int) -> None:
        if self.every == "step" and self.active(epoch):
            self.averaged.update_parameters(self.model)

    def epoch_end(self, epoch: int) -> None:
        if self.every == "epoch" and self.active(epoch):
            self.averaged.update_parameters(self.model)
        if self.scheduler is not None and self.controls_lr(epoch):
            self.scheduler.step()

    def finalize(self, loader: Iterable[Mapping[str, torch.Tensor]], device=None, max_batches: int = 0) -> nn.Module:
        """The averaged network (a plain model, as `build_model` makes it) with refreshed BN."""
        if self.n_averaged == 0:
            raise RuntimeError(f"SWA collected nothing (start_epoch {self.start_epoch} not reached)")
        update_bn_multitask(loader, self.averaged.module, device=device, max_batches=max_batches)
        return self.averaged.module

    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: Mapping) -> None:
        """Call after the optimizer's own state has been loaded."""
        self.averaged.load_state_dict(state["averaged"])
        if state.get("scheduler") is not None:
            self._make_scheduler()
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.scheduler = None


# -- checkpoints ---------------------------------------------------------------------------------
def model_from_state(state: Mapping, tasks=None) -> nn.Module:
    """The network of a checkpoint as it was trained (CPU, eval mode): the one builder,
    `training.engine.network.network_from_checkpoint` (it also restores over-parameterised layers)."""
    return network_from_checkpoint(state, tasks)


def _architecture(state: Mapping) -> dict:
    """What must agree for weights to be averageable: trunk, data facts and every task option
    except the loss weight (averaging runs with different weightings is the point)."""
    recipe = checkpoint_recipe(state)
    tasks = {name: {k: v for k, v in dataclasses.asdict(opts).items() if k != "weight"}
             for name, opts in recipe.task_options().items()}
    return {"model": dataclasses.asdict(recipe.model), "tasks": tasks, "data_info": dict(state["data_info"]),
            # over-parameterised layers (when the recipe has them) change the parameter layout
            "overparam": {"recipe": dataclasses.asdict(recipe.overparam), "collapsed": bool(state.get("collapsed"))}}


def check_averageable(states: Sequence[Mapping], paths: Sequence[str]) -> None:
    """Raises AveragingError naming the files when two checkpoints do not share an
    initialisation fingerprint, model configuration or tasks."""
    first, first_path = states[0], paths[0]
    reference = _architecture(first)
    for state, path in zip(states[1:], paths[1:]):
        fa, fb = first.get("init_fingerprint"), state.get("init_fingerprint")
        if fa is None or fb is None or fa != fb:
            raise AveragingError(f"{first_path} and {path} do not share an initialisation "
                                 f"(init_fingerprint {fa} vs {fb}); weights are only averageable from one start")
        other = _architecture(state)
        for part in ("model", "tasks", "data_info", "overparam"):
            if other[part] != reference[part]:
                raise AveragingError(f"{first_path} and {path} differ in {part} "
                                     f"({reference[part]} vs {other[part]}); cannot average")


def average_models(models: Sequence[nn.Module], device=None) -> nn.Module:
    """Uniform mean of the parameters (AveragedModel's running mean, equal weights); the BN
    buffers are the last model's until refreshed (or averaged by `average_bn_buffers`)."""
    averaged = AveragedModel(models[0], device=device)
    for m in models:
        averaged.update_parameters(m)
    return averaged.module


def average_bn_buffers(target: nn.Module, models: Sequence[nn.Module]) -> None:
    """Fallback without data: BN running statistics set to the snapshots' mean."""
    with torch.no_grad():
        mods = [[m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] for model in models]
        for i, bn in enumerate(m for m in target.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            for name in ("running_mean", "running_var"):
                if getattr(bn, name) is not None:
                    getattr(bn, name).copy_(torch.stack([getattr(ms[i], name) for ms in mods]).mean(0))


def main_metrics(metrics: Metrics, main: Mapping[str, str]) -> Dict[str, float]:
    """{"task/metric": value} of each task's main metric."""
    return {f"{t}/{main[t]}": float(metrics[t][main[t]]) for t in main if t in metrics and main[t] in metrics[t]}


def score_against(metrics: Metrics, reference: Metrics, main: Mapping[str, str]) -> float:
    """Δm in percent (mtl_perception.evaluation.metrics.delta_m) of the main metrics against `reference`:
    the mean sign-corrected relative change, higher is better. Keys whose reference value is 0
    or not finite (e.g. mAP 0 of an undertrained model) are left out: their relative change is
    undefined."""
    mine, ref = main_metrics(metrics, main), main_metrics(reference, main)
    usable = {k: v for k, v in ref.items() if math.isfinite(v) and v != 0.0 and k in mine and math.isfinite(mine[k])}
    if not usable:
        raise ValueError("no main metric with a usable (finite, non-zero) reference value")
    return delta_m({k: mine[k] for k in usable}, usable)


@dataclass
class AverageResult:
    model: nn.Module
    selected: List[str]  # paths in the average, in the order they joined
    scores: Dict[str, float] = field(default_factory=dict)  # each checkpoint alone (greedy / with evaluate_fn)
    score: Optional[float] = None  # the average's score
    metrics: Optional[Dict[str, Dict[str, float]]] = None  # the average's validation metrics
    state: Dict[str, Any] = field(default_factory=dict)  # the checkpoint written (without format keys)
    log: List[str] = field(default_factory=list)


def average_checkpoints(paths: Sequence[Union[str, os.PathLike]], out: Optional[Union[str, os.PathLike]] = None, *,
                        greedy: bool = False, evaluate_fn: Optional[EvaluateFn] = None,
                        bn_loader: Optional[Iterable[Mapping[str, torch.Tensor]]] = None, bn_batches: int = 0,
                        device="cpu", log: Callable[[str], None] = lambda line: None) -> AverageResult:
    """Averages checkpoints that share an initialisation; writes `out` (trainer's layout).

    Uniform: the mean of all. Greedy (model-soup style): checkpoints are ranked by their own
    score and, best first, each joins the average only if the average's score does not drop
    (>=). Scores: `evaluate_fn(model)` returns either a number (higher is better) or validation
    metrics, then scored as Δm of the main metrics against the *first path's* metrics (put the
    reference run first). Averages of two or more checkpoints get their BN statistics refreshed
    on `bn_loader` (the training data); without one, the snapshots' statistics are averaged.

    The written checkpoint is the first selected checkpoint's state with the averaged `model`,
    `history` replaced by one row of the average's validation metrics (when known) and an
    `averaged` record (sources, selection, scores); `training.engine.export.export_checkpoint` reads it.
    """
    if not paths:
        raise AveragingError("no checkpoints to average")
    if greedy and evaluate_fn is None:
        raise ValueError("greedy averaging needs evaluate_fn")
    paths, states = _load_averageable(paths)
    tasks = tasks_from_checkpoint(states[0])
    models = {p: model_from_state(s, tasks).to(device) for p, s in zip(paths, states)}
    result_log: List[str] = []

    def say(line: str) -> None:
        result_log.append(line)
        log(line)

    scorer = _Scorer(evaluate_fn, {name: task.main_metric for name, task in tasks.items()})
    soup = _Soup(models, bn_loader, bn_batches, device)
    scores: Dict[str, float] = {}
    metrics_of: Dict[str, Optional[Metrics]] = {}
    if evaluate_fn is not None:
        for p in paths:  # the first path first: it is the Δm reference
            scores[p], metrics_of[p] = scorer(models[p])
            say(f"{p}: score {scores[p]:+.4f}")
    if greedy:
        selected, model, avg_score, avg_metrics = _greedy_selection(paths, scores, metrics_of, soup, scorer, say)
    else:
        selected = list(paths)
        model = soup.combine(selected)
        avg_score = avg_metrics = None
        if evaluate_fn is not None:
            avg_score, avg_metrics = scorer(model)
            say(f"average of {len(selected)}: score {avg_score:+.4f}")
    bn = ("refreshed" if bn_loader is not None else "averaged") if len(selected) > 1 else "own"
    state = _averaged_state(states[paths.index(selected[0])], model, paths, selected, greedy, scores, avg_score,
                            avg_metrics, bn)
    if out is not None:
        save_checkpoint(out, state)
        say(f"wrote {out} (average of {len(selected)} of {len(paths)})")
    return AverageResult(model=model.cpu().eval(), selected=selected, scores=scores, score=avg_score,
                         metrics=None if avg_metrics is None else {t: dict(m) for t, m in avg_metrics.items()},
                         state=state, log=result_log)


def _load_averageable(paths: Sequence[Union[str, os.PathLike]]):
    """(paths as strings, their checkpoints), refused unless distinct and averageable."""
    paths = [str(p) for p in paths]
    if len(set(paths)) != len(paths):
        raise AveragingError(f"a checkpoint is named twice: {', '.join(paths)}")
    states = [load_checkpoint(p) for p in paths]
    check_averageable(states, paths)
    return paths, states


class _Scorer:
    """evaluate_fn's value as (score, metrics or None): metrics are scored as Δm against the
    first metrics it saw (the first path's), a plain number is the score itself."""

    def __init__(self, evaluate_fn: Optional[EvaluateFn], main: Mapping[str, str]):
        self.evaluate_fn, self.main = evaluate_fn, dict(main)
        self.reference: Optional[Metrics] = None

    def __call__(self, model: nn.Module):
        value = self.evaluate_fn(model)
        if isinstance(value, Mapping):
            metrics = {t: dict(m) for t, m in value.items()}
            if self.reference is None:
                self.reference = metrics
            return score_against(metrics, self.reference, self.main), metrics
        return float(value), None


class _Soup:
    """Averages of the loaded checkpoints' models, BN statistics refreshed on `bn_loader`
    (or the snapshots' statistics averaged without one)."""

    def __init__(self, models: Mapping[str, nn.Module], bn_loader, bn_batches: int, device):
        self.models, self.bn_loader, self.bn_batches, self.device = models, bn_loader, bn_batches, device

    def combine(self, members: Sequence[str]) -> nn.Module:
        if len(members) == 1:  # exactly that checkpoint, its own BN statistics
            return self.models[members[0]]
        averaged = average_models([self.models[p] for p in members], device=self.device)
        if self.bn_loader is not None:
            update_bn_multitask(self.bn_loader, averaged, device=self.device, max_batches=self.bn_batches)
        else:
            average_bn_buffers(averaged, [self.models[p] for p in members])
        return averaged.eval()


def _greedy_selection(paths: Sequence[str], scores: Mapping[str, float], metrics_of: Mapping[str, Optional[Metrics]],
                      soup: _Soup, scorer: _Scorer, say: Callable[[str], None]):
    """Model soup: best first, each checkpoint joins if the average's score does not drop;
    returns (selected paths, model, its score, its metrics)."""
    ranked = sorted(paths, key=lambda p: -scores[p])
    selected = [ranked[0]]
    best, best_metrics = scores[ranked[0]], metrics_of[ranked[0]]
    model = soup.models[ranked[0]]
    for p in ranked[1:]:
        candidate = soup.combine(selected + [p])
        score, metrics = scorer(candidate)
        keep = score >= best
        say(f"+ {p}: average of {len(selected) + 1} scores {score:+.4f} "
            f"({'kept' if keep else 'dropped'}, best {best:+.4f})")
        if keep:
            selected.append(p)
            best, best_metrics, model = score, metrics, candidate
    return selected, model, best, best_metrics


def _averaged_state(base: Mapping, model: nn.Module, paths: Sequence[str], selected: Sequence[str], greedy: bool,
                    scores: Mapping[str, float], avg_score: Optional[float], avg_metrics: Optional[Metrics],
                    bn: str) -> Dict[str, Any]:
    """The checkpoint written for an average: `base`'s state with the averaged weights, one
    history row of the average's validation metrics (when known) and the `averaged` record."""
    state = {k: v for k, v in base.items() if k not in ("format", "version")}
    state["model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    row: Dict[str, float] = {"epoch": base["epoch"], "step": base["step"]}
    if avg_metrics is not None:
        row.update({f"val/{t}/{k}": float(v) for t, m in avg_metrics.items() for k, v in m.items()})
    state["history"] = [row] if avg_metrics is not None else []
    state["averaged"] = {"sources": list(paths), "selected": list(selected), "greedy": bool(greedy),
                         "scores": {p: float(s) for p, s in scores.items()},
                         "score": None if avg_score is None else float(avg_score), "bn": bn}
    return state


__all__ = ["AveragingError", "SWACollector", "update_bn_multitask", "image_batches", "average_checkpoints",
           "average_models", "check_averageable", "model_from_state", "score_against",
           "AverageResult"]
