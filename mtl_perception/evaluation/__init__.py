"""mtl_perception.evaluation."""
