"""Loss balancers, selected by name in the recipe."""
from .base import BALANCERS, BalanceContext, Balancer, BalancerOptions, register_balancer
from . import fixed  # noqa: F401  (registration)

__all__ = ["BALANCERS", "BalanceContext", "Balancer", "BalancerOptions", "register_balancer"]
