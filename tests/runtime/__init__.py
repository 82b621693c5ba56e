"""Tests of the runtime (mtl_perception). They need no torch: the few that use a model exported by
training's exporter take the `exported_models` fixture, which skips where torch is absent."""
