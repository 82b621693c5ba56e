"""mtl_perception.bags."""
