"""mtl_perception.ros."""
