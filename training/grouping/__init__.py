"""Task grouping: which tasks should share a network under an inference-time budget.

Two ways to score groups, one search, one deployment:

- `standley`: train every single task and every pair (every subset with `--all-subsets`) with a
  short schedule, plus half-size single-task networks; estimate larger groups with the
  higher-order approximation (`higher_order`); Standley et al., ICML 2020.
- `affinity`: TAG (Fifty et al., NeurIPS 2021), lookahead inter-task affinities recorded during
  one joint run (`TagRecorder`, a `Trainer.batch_hooks` hook).
- `search`: the set of candidate networks covering every task that minimises the total task loss
  within a cost budget (branch-and-bound, checked against brute force); TAG's selection is the
  same search with loss = -affinity.
- `costs`: measured inference cost of candidate architectures and of exported networks.
- `group`: the `mtl-train group` orchestration (jobs through `training.experiments.jobs`, with
  this package's job hooks `evaluation.LossHook` and `affinity.TagHook`), final training,
  table, heatmap and the exported bundle.
"""
