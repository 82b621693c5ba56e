"""One module per task kind (mirroring `training/tasks/`): its output topics, its outputs ->
message builders' inputs, its metric and trivial baseline; `registry` serves them by name."""
