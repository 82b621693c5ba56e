"""mtl_perception.inference."""
