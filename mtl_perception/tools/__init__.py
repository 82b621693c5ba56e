"""mtl_perception.tools."""
