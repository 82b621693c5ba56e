"""Networks: the trunk registry (encoders + feature pyramids), the multi-task wrapper, and
over-parameterisation. Importing this package registers the built-in trunks."""
from training.models import soft_sharing, timm_trunk, trunk  # noqa: F401  (registration)
from training.models.registry import HEAD_FEATURES, TRUNKS, Trunk, build_trunk, register_trunk

__all__ = ["HEAD_FEATURES", "TRUNKS", "Trunk", "build_trunk", "register_trunk"]
