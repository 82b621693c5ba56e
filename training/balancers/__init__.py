"""Loss balancers, selected by name in the recipe (`balancer.name`, options in `balancer.options`)."""
from training.balancers import fixed, gradnorm, impartial, loss_weighting, mgda, surgery  # noqa: F401  (registration)
from training.balancers.base import BALANCERS, BalanceContext, Balancer, BalancerOptions, register_balancer

__all__ = ["BALANCERS", "BalanceContext", "Balancer", "BalancerOptions", "register_balancer"]
