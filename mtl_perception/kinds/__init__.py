"""mtl_perception.kinds."""
