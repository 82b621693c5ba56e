"""Small solvers on the T x T Gram matrix M = G G^T of the task gradients (numpy, float64).

Every gradient method reduces to "find weights α, then use Σ α_i g_i"; the weights depend on
the gradients only through their inner products, so the solvers work on M (T x T) and never
touch the P-dimensional gradients. One implementation each, tested against closed forms and
brute force in tests/test_balancers.py.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def min_norm_2(v1v1: float, v1v2: float, v2v2: float) -> float:
    """γ in [0, 1] minimising |γ v1 + (1 - γ) v2|² (closed form, Sener & Koltun 2018, Alg. 1)."""
    denom = v1v1 + v2v2 - 2.0 * v1v2
    if denom <= 1e-30:  # v1 == v2: every γ gives the same norm
        return 0.5
    return float(np.clip((v2v2 - v1v2) / denom, 0.0, 1.0))


def min_norm_weights(M: np.ndarray, max_iter: int = 250, tol: float = 1e-6) -> np.ndarray:
    """The min-norm point of the convex hull of the gradients: argmin_{α in simplex} αᵀ M α.

    Frank–Wolfe as in Sener & Koltun 2018 (Algorithm 2): start at the centre, step towards the
    vertex with the smallest directional derivative with the exact two-point line search. Plain
    Frank–Wolfe crawls when the solution lies on a face of the simplex (a task gets weight 0),
    so away steps (Lacoste-Julien & Jaggi 2015: move weight off the worst active vertex) are
    taken when they promise more; that converges linearly. Stops when the Frank–Wolfe duality
    gap is below `tol` times the current squared norm. With two tasks the first step is exact.
    """
    T = M.shape[0]
    alpha = np.full(T, 1.0 / T)
    for _ in range(max_iter):
        m_alpha = M @ alpha
        norm2 = float(alpha @ m_alpha)
        s = int(np.argmin(m_alpha))
        fw_gap = norm2 - float(m_alpha[s])
        if fw_gap <= tol * max(norm2, 1e-30):
            break
        active = np.nonzero(alpha > 0)[0]
        v = int(active[np.argmax(m_alpha[active])])
        away_gap = float(m_alpha[v]) - norm2
        if fw_gap >= away_gap or alpha[v] >= 1.0:
            gamma = min_norm_2(norm2, float(m_alpha[s]), float(M[s, s]))  # weight kept on alpha
            alpha = gamma * alpha
            alpha[s] += 1.0 - gamma
        else:  # away step: alpha + γ (alpha − e_v), γ in [0, α_v / (1 − α_v)], exact line search
            d = alpha.copy()
            d[v] -= 1.0
            curvature = float(d @ M @ d)
            gamma_max = alpha[v] / (1.0 - alpha[v])
            gamma = gamma_max if curvature <= 0 else min(gamma_max, max(0.0, -float(d @ m_alpha) / curvature))
            alpha = alpha + gamma * d
            if gamma == gamma_max:
                alpha[v] = 0.0  # the vertex leaves the active set exactly
        alpha = np.maximum(alpha, 0.0)
        alpha /= alpha.sum()
    return alpha


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {x >= 0, Σ x = 1} (sort-based, Held et al. 1974)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def cagrad_weights(M: np.ndarray, c: float, max_iter: int = 500, tol: float = 1e-10) -> np.ndarray:
    """CAGrad's dual (Liu et al. 2021): argmin_{w in simplex} g_wᵀ g_0 + √φ ‖g_w‖, with
    g_0 the mean gradient, g_w = Σ w_i g_i and φ = c² ‖g_0‖². In Gram form: wᵀ M 1/T +
    c ‖g_0‖ √(wᵀ M w). Convex; solved by projected gradient descent with backtracking."""
    T = M.shape[0]
    b = M.mean(axis=1)  # M 1 / T
    g0_norm = float(np.sqrt(max(M.mean(), 0.0)))
    coef = c * g0_norm
    eps = 1e-12 * max(float(np.trace(M)), 1e-30)

    def value(w):
        return float(w @ b) + coef * np.sqrt(max(float(w @ M @ w), 0.0) + eps)

    def grad(w):
        return b + coef * (M @ w) / np.sqrt(max(float(w @ M @ w), 0.0) + eps)

    w = np.full(T, 1.0 / T)
    f = value(w)
    step = 1.0 / max(float(np.abs(M).max()), 1e-30)
    for _ in range(max_iter):
        g = grad(w)
        while True:
            candidate = project_simplex(w - step * g)
            f_new = value(candidate)
            # sufficient decrease for the projected step (Beck & Teboulle), else shrink
            if f_new <= f + g @ (candidate - w) + np.sum((candidate - w) ** 2) / (2 * step) + 1e-15 or step < 1e-20:
                break
            step *= 0.5
        moved = float(np.abs(candidate - w).max())
        w, f = candidate, f_new
        step *= 1.5
        if moved < tol:
            break
    return w


def nash_weights(M: np.ndarray, alpha0: Optional[np.ndarray] = None, max_iter: int = 100,
                 tol: float = 1e-10) -> np.ndarray:
    """Nash-MTL's bargaining solution (Navon et al. 2022): α > 0 with M α = 1/α, for the raw
    Gram matrix M = G Gᵀ (the paper's and the reference implementations' equations, so the
    update Σ α_i g_i has squared norm αᵀ M α = T whatever the losses' scale).

    That is the stationarity condition of the strictly convex f(α) = ½ αᵀ M α − Σ log α_i, so
    it is solved exactly by damped Newton steps (Hessian M + diag(1/α²)) that keep α > 0. For
    conditioning the steps run on M̂ = M / ‖M‖_F, whose solution is α̂ = √‖M‖_F α; a tiny ridge
    keeps f bounded below when the gradients are linearly dependent. `alpha0`: a start (e.g.
    the previous step's α), in the units of M.
    """
    T = M.shape[0]
    norm = float(np.linalg.norm(M))
    if not norm > 0:  # all gradients zero: any weights give the same (zero) update
        return np.ones(T)
    root = math.sqrt(norm)
    M = M / norm
    M = M + 1e-9 * max(float(np.trace(M)) / T, 1e-30) * np.eye(T)
    if alpha0 is not None:
        alpha = np.array(alpha0, dtype=np.float64) * root
    else:
        alpha = 1.0 / np.sqrt(np.maximum(np.diag(M), 1e-30))
    alpha = np.maximum(alpha, 1e-12)

    def f(a):
        return 0.5 * float(a @ M @ a) - float(np.sum(np.log(a)))

    for _ in range(max_iter):
        g = M @ alpha - 1.0 / alpha
        if np.linalg.norm(g * alpha) < tol:  # relative residual of M α = 1/α
            break
        H = M + np.diag(1.0 / alpha ** 2)
        d = -np.linalg.solve(H, g)
        t = 1.0
        neg = d < 0
        if neg.any():  # stay strictly inside α > 0
            t = min(1.0, 0.99 * float(np.min(-alpha[neg] / d[neg])))
        f0, slope = f(alpha), float(g @ d)
        while f(alpha + t * d) > f0 + 1e-4 * t * slope and t > 1e-12:
            t *= 0.5
        alpha = alpha + t * d
    return alpha / root


def imtl_weights(M: np.ndarray) -> np.ndarray:
    """IMTL-G (Liu et al. 2021): the weights (Σ α = 1) whose combination g = Σ α_i g_i has equal
    projections on every task's unit gradient u_i: α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹ with rows
    D_i = g_1 − g_i and U_i = u_1 − u_i; α_1 = 1 − Σ α_{2..T}. In Gram form A_ij = g_i·u_j."""
    if M.shape[0] == 1:
        return np.ones(1)
    norms = np.sqrt(np.maximum(np.diag(M), 1e-30))
    A = M / norms[None, :]
    g1U = A[0, 0] - A[0, 1:]  # g_1·(u_1 − u_j)
    DU = (A[0, 0] - A[0, 1:])[None, :] - (A[1:, 0][:, None] - A[1:, 1:])  # (g_1 − g_i)·(u_1 − u_j)
    rest = np.linalg.lstsq(DU.T, g1U, rcond=None)[0]
    return np.concatenate([[1.0 - rest.sum()], rest])


def aligned_weights(M: np.ndarray, scale: str = "min") -> np.ndarray:
    """Aligned-MTL (Senushkin et al. 2023): the gradient matrix is replaced by the nearest one
    with orthogonal, equal-norm columns (Procrustes: σ U Vᵀ for G = U Σ Vᵀ), i.e. G W with
    W = σ V Σ⁻¹ Vᵀ on the non-degenerate eigenvectors of M; summing its columns gives the
    effective weights W 1. σ is the smallest singular value ("min"), the median, or the RMS."""
    lam, V = np.linalg.eigh(M)
    tol = max(float(lam.max()), 0.0) * M.shape[0] * np.finfo(np.float32).eps
    keep = lam > tol
    if not keep.any():
        return np.ones(M.shape[0])
    lam, V = lam[keep], V[:, keep]
    sigma = np.sqrt(lam)
    target = {"min": sigma.min(), "median": np.median(sigma), "rmse": np.sqrt(lam.mean())}[scale]
    W = (V * (target / sigma)[None, :]) @ V.T
    return W.sum(axis=1)


def pcgrad_weights(M: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """PCGrad (Yu et al. 2020) as weights on the original gradients.

    For each task i, g_i is projected, in the order `orders[i]`, onto the normal plane of every
    g_j it conflicts with (g_i'·g_j < 0): g_i' -= (g_i'·g_j / ‖g_j‖²) g_j. Every projected
    gradient stays a combination Σ_k C_ik g_k, and g_i'·g_j = C_i · M[:, j], so the whole
    procedure runs on M; the summed update is Σ_k (Σ_i C_ik) g_k.
    """
    T = M.shape[0]
    C = np.eye(T)
    for i in range(T):
        for j in orders[i]:
            if j == i:
                continue
            dot = float(C[i] @ M[:, j])
            if dot < 0 and M[j, j] > 0:
                C[i, j] -= dot / M[j, j]
    return C.sum(axis=0)
