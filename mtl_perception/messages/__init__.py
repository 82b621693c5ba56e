"""mtl_perception.messages."""
