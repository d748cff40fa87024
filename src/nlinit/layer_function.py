r"""The function a layer really computes up to its activation, and the whitened coordinates that solve it.

A unit i of a Linear / Conv2d layer in a network computes f(s_i (w_i . x + b_i) + t_i) on the layer's real
inputs x: b its bias, (s, t) an eval-mode BatchNorm folded into a per-unit affine map (s = 1, t = 0 without
one), f the activation. :class:`LayerFunction` holds everything beyond W: the inputs' mean mu and covariance
Sigma (from calibration data; x ~ N(mu, Sigma) is the fitted model), s, t, b, whether a training-mode
BatchNorm normalizes the unit instead, and calibration samples for sample-based objectives.

With Sigma = L L^T (a pivoted Cholesky factor, regularized where Sigma is singular: :func:`whitener`) and
x = mu + L z, z ~ N(0, I), unit i is f(w~_i . z + d_i) with

.. math::
    \tilde w_i = s_i L^\top w_i, \qquad d_i = s_i (w_i^\top \mu + b_i) + t_i,

the paper's problem plus an offset: solvers work on W~ = diag(s) W L and d (:func:`to_whitened`), return a
rank-r Y~ and refitted offsets d', and :func:`from_whitened` maps them back: Y = diag(1/s) Y~ L^{-1} (the
same rank) and the low-rank layer's bias b'_i = (d'_i - t_i) / s_i - y_i . mu (bias correction).
docs/theory.md, section 11.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import scipy.linalg.lapack
import torch
from torch import Tensor

from ._checks import check_finite, check_int, check_matrix, check_rank
from .activations import Activation, parse_activation
from .objective import _low_rank_losses, _sample_losses
from .subspace import SVD, _balance, _check_exact, _fit_rows_and_offsets, one_blas_thread, truncated_svd

if TYPE_CHECKING:
    from .calibration import LayerStats

__all__ = [
    "InitResult",
    "LayerFunction",
    "Whitened",
    "from_whitened",
    "relative_objectives",
    "row_space_coefficients",
    "svd_rows_and_offsets",
    "to_whitened",
    "whitened_problem",
    "whitened_svd",
    "whitener",
]

#: what an init returns: (U, V), or (U, V, bias') when it refitted the units' offsets (None: it did not).
InitResult = tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor | None]

#: the whitening's tolerance, relative to the largest input variance: :func:`whitener` factors Sigma exactly
#: until the variance left in the remaining directions is at most this much, and gives those directions
#: this much (what makes L invertible on singular covariances; SVD-LLM adds jitter for the same).
WHITEN_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LayerFunction:
    """What a layer's units compute beyond W; every field optional (None: the paper's model).

    mean: (d_in,) mu. cov: (d_in, d_in) Sigma (centered). out_cov: (d_out, d_out) the covariance of W x on
    the same inputs, when measured (:func:`nlinit.calibration.collect_stats`): K = W Sigma W^T without the
    d_out d_in^2 product (:func:`whitened_problem`, which checks that it fits W when Sigma is there too).
    cov None with out_cov given: Sigma was not measured (``collect_stats(input_cov=False)``), not the
    identity; whatever needs Sigma itself raises (:meth:`require_cov`), the rest works from out_cov.
    scale, shift: (d_out,) s, t of an eval-mode BatchNorm. bias: (d_out,) the dense layer's b. normalized:
    a training-mode BatchNorm follows (scale-free objective). samples, heldout: (K, d_in) calibration
    inputs for fitting and for evaluation. abs_mean: (d_in,) the inputs' mean absolute value per dimension,
    E|x_j| (ASVD's scale).
    """

    mean: Tensor | None = None
    cov: Tensor | None = None
    scale: Tensor | None = None
    shift: Tensor | None = None
    bias: Tensor | None = None
    normalized: bool = False
    samples: Tensor | None = None
    heldout: Tensor | None = None
    abs_mean: Tensor | None = None
    out_cov: Tensor | None = None

    def __post_init__(self) -> None:
        """Each given field is a finite floating-point tensor of its rank (sizes are checked against W by
        :meth:`check`); cov is square and symmetric."""
        fields = (("mean", 1), ("cov", 2), ("scale", 1), ("shift", 1), ("bias", 1))
        for name, dims in (*fields, ("samples", 2), ("heldout", 2), ("abs_mean", 1), ("out_cov", 2)):
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor) or t.dim() != dims or not t.is_floating_point():
                got = (
                    f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                )
                raise ValueError(f"LayerFunction.{name} must be a {dims}-D floating-point tensor, got {got}")
            check_finite(f"LayerFunction.{name}", t)
        for name in ("cov", "out_cov"):
            c = getattr(self, name)
            if c is None:
                continue
            if c.shape[0] != c.shape[1]:
                raise ValueError(f"LayerFunction.{name} must be square, got shape {tuple(c.shape)}")
            asym = float((c - c.T).abs().max()) if c.numel() else 0.0
            if asym > 1e-8 * max(float(c.abs().max()), 1e-300):
                raise ValueError(
                    f"LayerFunction.{name} must be symmetric, got max |{name} - {name}^T| = {asym:.3g}"
                )
        if not isinstance(self.normalized, bool):
            raise ValueError(f"LayerFunction.normalized must be a bool, got {self.normalized!r}")

    @classmethod
    def from_stats(
        cls,
        stats: LayerStats,
        *,
        bias: Tensor | None = None,
        scale: Tensor | None = None,
        shift: Tensor | None = None,
        normalized: bool = False,
    ) -> LayerFunction:
        """The layer function on calibration statistics (:class:`nlinit.calibration.LayerStats`): their
        mean, covariance, mean |x|, samples and held-out vectors, plus the layer's own bias and post-op
        (float64)."""

        fields = ("mean", "cov", "samples", "heldout", "abs_mean", "out_cov")
        missing = [a for a in fields if not hasattr(stats, a)]
        if missing:
            raise TypeError(f"stats must be a LayerStats (from collect_stats), got {type(stats).__name__}")

        def f64(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().double()

        return cls(
            mean=stats.mean,
            cov=stats.cov,
            samples=stats.samples,
            heldout=stats.heldout,
            abs_mean=stats.abs_mean,
            out_cov=stats.out_cov,
            bias=f64(bias),
            scale=f64(scale),
            shift=f64(shift),
            normalized=normalized,
        )

    @property
    def is_plain(self) -> bool:
        """True when this is the paper's model: x ~ N(0, I), no bias, no BatchNorm, no samples."""
        return (
            self.samples is None
            and self.heldout is None
            and self.mean is None
            and self.cov is None
            and self.scale is None
            and self.shift is None
            and self.bias is None
            and self.abs_mean is None
            and self.out_cov is None
            and not self.normalized
        )

    @property
    def cov_unmeasured(self) -> bool:
        """True when only the outputs' covariance is known (cov None, out_cov given): Sigma is unknown."""
        return self.cov is None and self.out_cov is not None

    def require_cov(self, what: str) -> None:
        """Raise a one-line ValueError when Sigma was not measured (:attr:`cov_unmeasured`), naming ``what``
        needs it."""
        if self.cov_unmeasured:
            raise ValueError(
                f"{what} needs the input covariance Sigma, but these statistics hold only the outputs' "
                "covariance W Sigma W^T (collect_stats(input_cov=False)); collect with input_cov=True"
            )

    @property
    def refits_offset(self) -> bool:
        """Whether a solver should refit the units' offsets (anything but the paper's centered model)."""
        return not self.normalized and not (self.mean is None and self.shift is None and self.bias is None)

    def offset(self, W: Tensor) -> Tensor:
        """The target offsets c_i = s_i b_i + t_i (d_out,), float64 (0 where the parts are absent)."""
        c = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
        if self.bias is not None:
            c = c + self.bias.double() * (self.scale.double() if self.scale is not None else 1.0)
        if self.shift is not None:
            c = c + self.shift.double()
        return c

    def check(self, d_out: int, d_in: int, where: str = "") -> LayerFunction:
        """Raise a one-line ValueError when a field does not fit a (d_out, d_in) weight; returns self. (Each
        field's finiteness was checked on construction, once: not again per call.)"""
        check_int("d_out", d_out, low=1)
        check_int("d_in", d_in, low=1)
        at = f" of {where}" if where else ""
        shapes = {
            "mean": (d_in,),
            "abs_mean": (d_in,),
            "cov": (d_in, d_in),
            "out_cov": (d_out, d_out),
            "scale": (d_out,),
            "shift": (d_out,),
            "bias": (d_out,),
        }
        for name, shape in shapes.items():
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name}{at} must have shape {shape} for a {d_out}x{d_in} weight, got {got}")
        for name in ("samples", "heldout"):
            t = getattr(self, name)
            if t is not None and (not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != d_in):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"{name}{at} must be an (N, {d_in}) tensor for a {d_out}x{d_in} weight, got {got}"
                )
        return self


class Whitened:
    """The maps into and out of whitened coordinates: W~ = diag(s) W L, Y = diag(1/s) Y~ L_inv.

    From :func:`whitener`: L (d_in, d_in) with L L^T = Sigma (regularized where singular), a row permutation
    of a lower-triangular matrix, L_inv = L^{-1} (formed only when read; :meth:`times_inv` is a triangular
    solve), and how many directions the regularization filled in. From :func:`whitened_problem`'s reduced
    path (:meth:`reduced`): L (d_in, k) and L_inv (k, d_in) that depend on W as well (k = d_out), and how many
    of K's eigenvalues were zero; there L and L_inv are products formed only when read (L costs d_in^2 d_out,
    L_inv d_out^2 d_in), and :meth:`times_inv` applies L_inv without forming it. ``Whitened(None, None, 0)``:
    the identity.
    """

    def __init__(self, L: Tensor | None, L_inv: Tensor | None, floored: int) -> None:
        self._L, self._L_inv, self.floored = L, L_inv, floored
        #: from :meth:`_pivoted_factor` (whitener's): (Lp, perm) with L[perm] = Lp lower triangular
        self._pivoted: tuple[Tensor, Tensor] | None = None
        self._reduced: tuple[Tensor, Tensor, Tensor | None] | None = None  # (SW, M, Sigma): L_inv = M^T SW
        #: on the reduced path (E, root): W~ = E diag(root), root descending (its SVD, read off)
        self.left: tuple[Tensor, Tensor] | None = None

    @classmethod
    def reduced(
        cls,
        SW: Tensor,
        M: Tensor,
        cov: Tensor | None,
        floored: int,
        left: tuple[Tensor, Tensor] | None = None,
    ) -> Whitened:
        """L_inv = M^T SW (k, d_in) and L = Sigma SW^T M (d_in, k), both formed only when read; ``left``:
        (E, root) when W~ = E diag(root) with E orthonormal and root descending."""
        white = cls(None, None, floored)
        white._reduced = (SW, M, cov)
        white.left = left
        return white

    @classmethod
    def _pivoted_factor(cls, Lp: Tensor, perm: Tensor, floored: int) -> Whitened:
        """L with L[perm] = Lp, Lp (d_in, d_in) lower triangular (a pivoted Cholesky factor: Sigma[perm][:,
        perm] = Lp Lp^T); L_inv = Lp^{-1} with its columns put back in place, formed only when read."""
        L = torch.empty_like(Lp)
        L[perm] = Lp
        white = cls(L, None, floored)
        white._pivoted = (Lp, perm)
        return white

    @property
    def L(self) -> Tensor | None:  # noqa: N802 (the matrix's name)
        """(d_in, k) with W~ = diag(s) W L, or None for the identity."""
        if self._L is None and self._reduced is not None:
            SW, M, cov = self._reduced
            if cov is None:
                raise ValueError(
                    "L = Sigma W^T M needs the input covariance Sigma, but these statistics hold only the "
                    "outputs' covariance (collect_stats(input_cov=False)); collect with input_cov=True"
                )
            self._L = cov.to(SW.device).double() @ (SW.T @ M)
        return self._L

    @property
    def L_inv(self) -> Tensor | None:  # noqa: N802
        """(k, d_in) with Y = diag(1/s) Y~ L_inv, or None for the identity."""
        if self._L_inv is None and self._reduced is not None:
            SW, M, _ = self._reduced
            self._L_inv = M.T @ SW
        elif self._L_inv is None and self._pivoted is not None:
            Lp, _ = self._pivoted
            self._L_inv = self.times_inv(torch.eye(Lp.shape[0], dtype=Lp.dtype, device=Lp.device))
        return self._L_inv

    @property
    def is_identity(self) -> bool:
        """True for ``Whitened(None, None, 0)``: no covariance, W~ = diag(s) W."""
        return self._L is None and self._L_inv is None and self._reduced is None

    def __iter__(self) -> Iterator[Tensor | int | None]:
        """``L, L_inv, floored = white``, as when Whitened was a NamedTuple (forms a reduced path's maps)."""
        return iter((self.L, self.L_inv, self.floored))

    def shape(self) -> tuple[int, int] | None:
        """(d_in, k): L's shape without forming it; None for the identity."""
        if self._reduced is not None:
            SW, M, _ = self._reduced
            return SW.shape[1], M.shape[1]
        if self._L is not None:
            return tuple(self._L.shape)  # type: ignore[return-value]
        if self._L_inv is not None:
            return self._L_inv.shape[1], self._L_inv.shape[0]
        return None

    def times_inv(self, A: Tensor) -> Tensor:
        """A L_inv for A (m, k), float64 (A itself for the identity); on the reduced path (A M^T) SW, in
        O(m k d_out + m d_out d_in) without the (k, d_in) L_inv."""
        if self._reduced is not None and self._L_inv is None:
            SW, M, _ = self._reduced
            return (A.double() @ M.T.to(A.device)) @ SW.to(A.device)
        if self._pivoted is not None and self._L_inv is None:  # A L^{-1} = (A Lp^{-1}) with columns permuted
            Lp, perm = (t.to(A.device) for t in self._pivoted)
            out = torch.empty(A.shape, dtype=Lp.dtype, device=A.device)
            out[:, perm] = torch.linalg.solve_triangular(Lp, A.double(), upper=False, left=False)
            return out
        L_inv = self.L_inv
        return A.double() if L_inv is None else A.double() @ L_inv.to(A.device).double()


def whitener(cov: Tensor | None, d_in: int, *, floor: float = WHITEN_TOLERANCE) -> Whitened:
    r"""A square root L of the covariance (L L^T = Sigma, regularized where singular), float64.

    Rule: the pivoted Cholesky factorization of Sigma (LAPACK's dpstrf: each step takes the input
    coordinate with the largest variance left given those already taken, Higham's "Cholesky with complete
    pivoting") stops once that conditional variance is at most lambda = ``floor`` max_j Sigma_jj; the k
    coordinates taken are factored exactly, and the conditional covariance of the d_in - k left (every
    entry <= lambda: a PSD matrix with diagonal <= lambda) is replaced by lambda I. So

    .. math::
        L L^\top = \Sigma + P\begin{pmatrix} 0 & 0 \\ 0 & \lambda I - S_{22} \end{pmatrix} P^\top,
        \qquad |(L L^\top - \Sigma)_{jl}| \le \lambda,

    with S_22 the Schur complement left: L L^T = Sigma exactly when every conditional variance exceeds
    lambda (in particular when Sigma's smallest eigenvalue does), and directions the data never visits (a
    dead channel: Sigma_jj = 0) get variance lambda instead of none, so L is invertible. Sigma = 0: L = I.
    ``floored`` = d_in - k. ``cov=None``: the identity, as ``Whitened(None, None, 0)`` (no d_in x d_in product
    is formed). Cost: d_in^3 / 3 multiply-adds (a Cholesky) where an eigendecomposition with its vectors
    costs several times that; computed on the CPU.
    """
    check_int("d_in", d_in, low=1)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < floor <= 1:
        raise ValueError(f"floor must be a number in (0, 1], got {floor!r}")
    if cov is None:
        return Whitened(None, None, 0)
    if not isinstance(cov, Tensor) or tuple(cov.shape) != (d_in, d_in) or not cov.is_floating_point():
        got = (
            f"shape {tuple(cov.shape)}, dtype {cov.dtype}" if isinstance(cov, Tensor) else type(cov).__name__
        )
        raise ValueError(f"cov must be a floating-point ({d_in}, {d_in}) tensor, got {got}")
    check_finite("cov", cov)
    asym = float((cov - cov.T).abs().max())
    if asym > 1e-8 * max(float(cov.abs().max()), 1e-300):
        raise ValueError(f"cov must be symmetric, got max |cov - cov^T| = {asym:.3g}")
    S = cov.detach().double().cpu()
    top = float(S.diagonal().max())
    if top <= 0:  # Sigma = 0 (a PSD matrix with zero diagonal)
        eye = torch.eye(d_in, dtype=torch.float64, device=cov.device)
        return Whitened._pivoted_factor(eye, torch.arange(d_in, device=cov.device), d_in)
    lam = floor * top
    with one_blas_thread():
        c, piv, k, _ = scipy.linalg.lapack.dpstrf(S.numpy(), lower=1, tol=lam)
    Lp = torch.from_numpy(c).tril()
    Lp[k:, k:] = torch.eye(d_in - k, dtype=torch.float64) * lam**0.5  # lambda I for what is left
    perm = torch.from_numpy(piv - 1).long()  # LAPACK's 1-based pivots
    return Whitened._pivoted_factor(Lp.to(cov.device), perm.to(cov.device), d_in - k)


def _check_problem(W: object, fn: object) -> Tensor:
    """W a finite floating-point matrix and fn a :class:`LayerFunction` whose fields fit it."""
    check_matrix("W", W)  # type: ignore[arg-type]
    assert isinstance(W, Tensor)
    if not isinstance(fn, LayerFunction):
        raise TypeError(f"fn must be a LayerFunction, got {type(fn).__name__}")
    fn.check(*W.shape)
    return W


def _check_whitened(white: object, d_in: int) -> Whitened:
    """A :class:`Whitened` whose L has d_in rows and whose L_inv has d_in columns."""
    if not isinstance(white, Whitened):
        raise TypeError(
            f"white must be a Whitened (from whitener or whitened_problem), got {type(white).__name__}"
        )
    shape = white.shape()
    L, L_inv = white._L, white._L_inv
    bad = (L is None) != (L_inv is None) and white._reduced is None and white._pivoted is None
    if shape is not None and not bad:
        for t, want in ((L, shape), (L_inv, shape[::-1])):
            bad = bad or (t is not None and (not isinstance(t, Tensor) or tuple(t.shape) != want))
        bad = bad or shape[0] != d_in
    if bad:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else t for t in (L, L_inv)]
        raise ValueError(
            f"white must have L (d_in, k) and L_inv (k, d_in) with d_in = {d_in}, or both None, "
            f"got {shapes[0]} and {shapes[1]}"
        )
    return white


def _offsets(W64: Tensor, fn: LayerFunction) -> Tensor:
    """d = s (W mu + b) + t (d_out,), float64."""
    d = fn.offset(W64)
    if fn.mean is not None:
        d = d + (W64 @ fn.mean.double()) * (fn.scale.double() if fn.scale is not None else 1.0)
    return d


def to_whitened(W: Tensor, fn: LayerFunction, white: Whitened) -> tuple[Tensor, Tensor]:
    """(W~, d): W~ = diag(s) W L (d_out, d_in) and d = s (W mu + b) + t (d_out,), float64."""
    _check_problem(W, fn)
    fn.require_cov("to_whitened")
    _check_whitened(white, W.shape[1])
    W64 = W.double()
    Wt = W64 @ white.L.to(W64.device) if white.L is not None else W64
    if fn.scale is not None:
        Wt = Wt * fn.scale.double()[:, None]
    return Wt, _offsets(W64, fn)


def whitened_problem(W: Tensor, fn: LayerFunction) -> tuple[Tensor, Tensor, Whitened]:
    r"""(W~, d, white): the layer's problem in whitened coordinates, built on the cheaper side; float64.

    With d_in <= d_out (or no covariance): :func:`whitener` and :func:`to_whitened`, W~ (d_out, d_in).

    With d_out < d_in, the reduced problem: under z ~ N(0, I) unit i's pre-activation is w~_i . z + d_i,
    and the joint law of all units' pre-activations (and of any Y~ in W~'s row space) depends on W~ only
    through the Gram matrix

    .. math::
        K = \tilde W \tilde W^\top = \mathrm{diag}(s)\, W \Sigma W^\top \mathrm{diag}(s) = E \Lambda E^\top
        \quad (d_{out} \times d_{out}),

    the covariance of the units' pre-activations s (W x). So R = E Lambda^{1/2} (d_out, d_out; Lambda in
    descending order, so R's columns are its singular vectors in order: :func:`whitened_svd` reads its SVD
    off) replaces W~ = R O^T, O^T = Lambda^{-1/2} E^T W~ (orthonormal rows, O^T z ~ N(0, I)), and a solution
    Y_R maps back as Y = diag(1/s) Y_R Lambda^{-1/2} E^T diag(s) W, i.e. L_inv = Lambda^{-1/2} E^T diag(s) W
    and L = Sigma W^T diag(s) E Lambda^{-1/2} (W~ = diag(s) W L = R), neither formed unless read
    (:class:`Whitened`). Eigenvalues of K at most d_out eps max(Lambda) are directions W~ does not have:
    their columns of R and rows of L_inv are 0 (a pseudo-inverse, no floor). Exact for every Y in W~'s row
    space, where every solver's solution lies.

    Cost: K from Sigma is W Sigma W^T, d_out d_in^2 + d_out^2 d_in multiply-adds (a 3 x 3 conv with
    d_in = 9 d_out: 9x spectral's W W^T). When ``fn.out_cov`` holds the covariance of W x measured on the
    same inputs (:func:`nlinit.calibration.collect_stats` accumulates it from the layer's outputs, N d_out^2
    instead of N d_in^2 per layer), K = diag(s) out_cov diag(s) after a check of two random quadratic forms
    against Sigma (2 d_in^2): a mismatch beyond :data:`OUT_COV_TOLERANCE` (out_cov measured on another W)
    warns and computes K from Sigma. Then the whole reduced problem costs an eigendecomposition of size
    d_out, less than spectral's Gram matrix. Without Sigma (``fn.cov_unmeasured``) out_cov is used as
    given (nothing to check it against) and the returned Whitened cannot form L (only L_inv).

    Raises:
        ValueError / TypeError: W or fn bad (:meth:`LayerFunction.check`), or Sigma unmeasured where the
            problem needs it (d_in <= d_out).
    """
    _check_problem(W, fn)
    W64 = W.double()
    d_out, d_in = W64.shape
    if (fn.cov is None and fn.out_cov is None) or d_in <= d_out:
        fn.require_cov(f"the whitened problem of a {d_out}x{d_in} layer (d_in <= d_out)")
        white = whitener(fn.cov, d_in)
        return (*to_whitened(W64, fn, white), white)
    SW = W64 * fn.scale.double()[:, None] if fn.scale is not None else W64
    cov = fn.cov.double().to(W64.device) if fn.cov is not None else None
    K: Tensor | None = None
    if cov is None:  # only the outputs' covariance was measured: K from it, trusted
        assert fn.out_cov is not None
        K = _scaled(fn.out_cov, fn.scale, SW.device)
    elif fn.out_cov is not None:
        K = _measured_gram(SW, cov, fn.out_cov, fn.scale)
    if K is None:
        assert cov is not None
        K = SW @ (cov @ SW.T)
    lam, E = torch.linalg.eigh((K + K.T) / 2)
    lam, E = lam.flip(0), E.flip(1)  # descending
    live = lam > d_out * torch.finfo(torch.float64).eps * max(float(lam[0]), 0.0)
    root = torch.where(live, lam.clamp_min(0.0).sqrt(), 0.0)
    inv_root = torch.where(live, 1.0 / torch.where(live, root, 1.0), 0.0)
    white = Whitened.reduced(SW, E * inv_root, cov, int((~live).sum()), left=(E, root))
    return E * root, _offsets(W64, fn), white


def whitened_svd(Wt: Tensor, white: Whitened, rank: int) -> SVD:
    """W~'s top-r SVD (:func:`nlinit.subspace.truncated_svd`); on :func:`whitened_problem`'s reduced path,
    where W~ = E diag(root) with root descending, read off as (E_r, root_r, I_r): no decomposition.

    Raises:
        ValueError / TypeError: Wt not a finite matrix, white not a Whitened, rank outside [1, min(Wt.shape)].
    """
    check_matrix("Wt", Wt)
    if not isinstance(white, Whitened):
        raise TypeError(f"white must be a Whitened (from whitened_problem), got {type(white).__name__}")
    check_rank(rank, *Wt.shape)
    if white.left is None:
        return truncated_svd(Wt, rank)
    E, root = white.left
    return SVD(E[:, :rank], root[:rank], torch.eye(Wt.shape[1], rank, dtype=Wt.dtype, device=Wt.device))


#: the largest relative disagreement :func:`whitened_problem` accepts between a measured output covariance
#: and Sigma's quadratic forms, g^T out_cov g against (W^T g)^T Sigma (W^T g). A float32 layer's outputs
#: carry rounding of about sqrt(d_in) 2^-24 relative; measured on ResNet-20 / ResNet-50 layers at most
#: ~1e-5 (benchmarks/LAYER_FUNCTION.md); another W gives O(1).
OUT_COV_TOLERANCE = 1e-3


def _measured_gram(SW: Tensor, cov: Tensor, out_cov: Tensor, scale: Tensor | None) -> Tensor | None:
    """K = diag(s) out_cov diag(s) if two random quadratic forms g^T K g agree with (SW^T g)^T Sigma
    (SW^T g) within :data:`OUT_COV_TOLERANCE`, else None (with a warning saying so)."""
    K = _scaled(out_cov, scale, SW.device)
    G = torch.randn(SW.shape[0], 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    G = G.to(SW.device)
    H = SW.T @ G  # (d_in, 2)
    exact = (H * (cov @ H)).sum(0)
    got = (G * (K @ G)).sum(0)
    size = float((G * G).sum(0).max()) * float(K.diagonal().abs().max())
    err = float(((got - exact).abs() / (exact.abs() + 1e-12 * size + 1e-300)).max())
    if not err <= OUT_COV_TOLERANCE:
        warnings.warn(
            f"out_cov does not match W Sigma W^T (relative difference {err:.3g} > {OUT_COV_TOLERANCE:g} on "
            "random quadratic forms: measured on another weight?); computing W Sigma W^T from Sigma instead",
            stacklevel=4,
        )
        return None
    return K


def _scaled(out_cov: Tensor, scale: Tensor | None, device: torch.device) -> Tensor:
    """diag(s) out_cov diag(s), float64 on ``device`` (out_cov itself without a scale)."""
    K = out_cov.double().to(device)
    if scale is not None:
        s = scale.double().to(device)
        K = K * s[:, None] * s[None, :]
    return K


def from_whitened(
    U: Tensor, V: Tensor, d_new: Tensor | None, fn: LayerFunction, white: Whitened, W: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Map whitened factors (Y~ = U V^T) and offsets d' back: (U, V, bias') in W's dtype.

    U <- diag(1/s) U (units with s = 0 are constant: their row of U is 0), V <- L^{-T} V, so
    U V^T = diag(1/s) Y~ L^{-1} and the rank is kept; then rebalanced (:func:`nlinit.subspace.balance`).
    bias'_i = (d'_i - t_i) / s_i - y_i . mu, or None when no offset was refitted (d_new None).
    """
    _check_problem(W, fn)
    d_out, d_in = W.shape
    _check_whitened(white, d_in)
    shape = white.shape()
    k = d_in if shape is None else shape[1]
    check_matrix("U", U)
    check_matrix("V", V)
    if U.shape[0] != d_out or V.shape[0] != k or U.shape[1] != V.shape[1]:
        raise ValueError(
            f"U and V must be ({d_out}, r) and ({k}, r) for a {d_out}x{d_in} W and this white, "
            f"got {tuple(U.shape)} and {tuple(V.shape)}"
        )
    if d_new is not None:
        if not isinstance(d_new, Tensor) or tuple(d_new.shape) != (d_out,) or not d_new.is_floating_point():
            got = tuple(d_new.shape) if isinstance(d_new, Tensor) else type(d_new).__name__
            raise ValueError(f"d_new must be a floating-point ({d_out},) tensor or None, got {got}")
        check_finite("d_new", d_new)
    return _from_whitened(U, V, d_new, fn, white, W)


def _from_whitened(
    U: Tensor, V: Tensor, d_new: Tensor | None, fn: LayerFunction, white: Whitened, W: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`from_whitened` without checks."""
    s = fn.scale.double() if fn.scale is not None else None
    U64, V64 = U.double(), V.double()
    if not white.is_identity:
        V64 = white.times_inv(V64.T).T  # L_inv^T V
    if s is not None:
        inv = torch.where(s != 0, 1.0 / torch.where(s != 0, s, 1.0), 0.0)
        U64 = U64 * inv[:, None]
    Qv, Rv = torch.linalg.qr(V64)
    U64, V64 = _balance(U64 @ Rv.T, Qv)  # the same product, balanced again
    bias = None
    if d_new is not None:
        c = d_new.double()
        if fn.shift is not None:
            c = c - fn.shift.double()
        if s is not None:
            old = fn.bias.double() if fn.bias is not None else torch.zeros_like(c)
            c = torch.where(s != 0, c / torch.where(s != 0, s, 1.0), old)
        if fn.mean is not None:
            c = c - U64 @ (V64.T @ fn.mean.double())
        bias = c.to(W.dtype)
    return U64.to(W.dtype), V64.to(W.dtype), bias


def svd_rows_and_offsets(
    W: Tensor, rank: int, activation: Activation, fn: LayerFunction
) -> tuple[Tensor, Tensor, Tensor | None]:
    """relu-svd on the layer's real function: (U, V, bias') in W's dtype.

    In whitened coordinates (:func:`to_whitened`), on the top-r SVD subspace S of W~: normalized units get
    Y~ = W~ P_S (their row norms and offsets do not change the function: the normalization removes them);
    others with each unit's best norm and offset (:func:`nlinit.subspace.fit_rows_and_offsets`),
    never worse than ``whiten``. Mapped back by :func:`from_whitened`.

    Raises:
        ValueError / TypeError: W not a finite matrix, rank outside [1, min(W.shape)], fn not a
            LayerFunction that fits W. NotImplementedError: (units not normalized) an activation without an
            exact objective.
    """
    _check_problem(W, fn)
    check_rank(rank, *W.shape)
    if not fn.normalized:
        activation = _check_exact(activation)
    Wt, d, white = whitened_problem(W, fn)
    svd = whitened_svd(Wt, white, rank)
    Q, coords = svd.Q, svd.P * svd.s  # W~ Q = P diag(s)
    if fn.normalized:  # (_from_whitened balances the factors it maps back)
        return _from_whitened(coords, Q, None, fn, white, W)
    A, d_new = _fit_rows_and_offsets(Wt, d, Q, activation, coords=coords)
    return _from_whitened(A, Q, d_new, fn, white, W)


def relative_objectives(
    W: Tensor,
    candidates: list[tuple[Tensor, Tensor, Tensor | None]],
    activation: Activation,
    fn: LayerFunction,
    samples: Tensor | None = None,
) -> list[float | None]:
    r"""R(Y)/R(0) on the layer's function (mean, covariance, bias, eval-mode BatchNorm) for each low-rank
    candidate (U, V, bias'), Y = U V^T: what :func:`nlinit.objective.nlra_loss` computes with ``mean``,
    ``cov``, ``scale``, ``offset`` = s b + t and ``offset_y`` = s b' + t, at a fraction of the cost.

    The exact objective needs only Sigma's quadratic forms, never a factor of it: W Sigma once per layer
    (O(d_out d_in^2)), each Y Sigma from the factors as U (V^T Sigma), and R(0) (the zero approximant's,
    each unit the constant f(c_i)) shared by all candidates (``nlinit.objective._low_rank_losses``). fn's
    covariance comes from calibration statistics (symmetric, checked by :class:`LayerFunction`; PSD by
    construction). None where R(0) = 0 < R(Y) (undefined).

    Without Sigma (``fn.cov_unmeasured``: only out_cov = W Sigma W^T measured), in the outputs'
    coordinates: a candidate whose V has its columns in W's row space, V = W^T B
    (:func:`row_space_coefficients`), has Y x = U B^T (W x), so its objective is the one of W' = I
    (d_out, d_out), Y' = U B^T on y = W x ~ N(W mu, out_cov), exactly; O(d_in d_out^2) per candidate
    instead of W Sigma's d_out d_in^2. Every SVD-type candidate (svd, asvd, whiten, relu-svd, nlra-opt,
    lfai-data's start) has its rows there; one that does not (a random baseline) gets None.

    With ``samples`` X (N, d_in), on those input vectors instead (e.g. ``fn.heldout``): the mean over the
    rows of sum_i (f(s_i (y_i . x + b'_i) + t_i) - f(s_i (w_i . x + b_i) + t_i))^2, over R(0)'s (each unit
    the constant f(s_i b_i + t_i)): what :func:`nlinit.objective.nlra_loss` gives with ``samples``,
    ``relative=True``, with W x formed once for all candidates and each Y x from its factors; fn's mean and
    covariance are not used (any activation).

    Args:
        W: (d_out, d_in) the dense layer's matrix. candidates: (U (d_out, r), V (d_in, r), bias' (d_out,) or
            None). activation: f. fn: the layer function (its mean and cov may be None: 0 and I).
        samples: None (the Gaussian of fn's mean and covariance) or X (N >= 1, d_in), finite.
    Returns:
        One float (or None) per candidate, in order.
    """
    _check_problem(W, fn)
    act = _check_exact(activation) if samples is None else parse_activation(activation)  # type: ignore[arg-type]
    if samples is not None:
        check_matrix("samples", samples)
        if samples.shape[1] != W.shape[1] or samples.shape[0] < 1:
            raise ValueError(
                f"samples must be an (N >= 1, {W.shape[1]}) tensor for a {W.shape[0]}x{W.shape[1]} W, got "
                f"shape {tuple(samples.shape)}"
            )
    if not isinstance(candidates, list):
        raise TypeError(f"candidates must be a list of (U, V, bias) triples, got {type(candidates).__name__}")
    d_out, d_in = W.shape
    for k, cand in enumerate(candidates):
        if not isinstance(cand, tuple) or len(cand) != 3:
            got = f"a {type(cand).__name__}" + (f" of length {len(cand)}" if isinstance(cand, tuple) else "")
            raise ValueError(f"candidates[{k}] must be a (U, V, bias) triple, got {got}")
        U, V, b = cand
        for name, x, rows in (("U", U, d_out), ("V", V, d_in)):
            check_matrix(f"candidates[{k}] {name}", x)
            if x.shape[0] != rows or x.shape[1] != U.shape[1]:
                raise ValueError(
                    f"candidates[{k}] has U {tuple(U.shape)} and V {tuple(V.shape)}; a {d_out}x{d_in} W "
                    f"needs ({d_out}, r) and ({d_in}, r)"
                )
        if b is not None and (not isinstance(b, Tensor) or tuple(b.shape) != (d_out,)):
            got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"candidates[{k}] bias must be None or a ({d_out},) tensor, got {got}")
        if b is not None:
            check_finite(f"candidates[{k}] bias", b)
    W64 = W.double()
    if fn.cov_unmeasured and samples is None:
        return _relative_objectives_on_outputs(W64, candidates, act, fn)
    s = fn.scale.double() if fn.scale is not None else W64.new_ones(W.shape[0])
    t = fn.shift.double() if fn.shift is not None else torch.zeros_like(s)
    approximants = [
        (U.detach(), V.detach(), s * (b.detach().double() if b is not None else torch.zeros_like(s)) + t)
        for U, V, b in candidates
    ]
    if samples is not None:
        X = samples.detach().to(W64.device)
        losses, ref = _sample_losses(W64, approximants, act, X, scale=s, offset=fn.offset(W64))
    else:
        mean = fn.mean.double() if fn.mean is not None else None
        cov = fn.cov.double() if fn.cov is not None else None
        losses, ref = _low_rank_losses(
            W64, approximants, act, mean=mean, cov=cov, scale=s, offset=fn.offset(W64)
        )
    return [loss / ref if ref > 0 else 0.0 if loss == 0 else None for loss in losses]


def _relative_objectives_on_outputs(
    W64: Tensor, candidates: list[tuple[Tensor, Tensor, Tensor | None]], act: Activation, fn: LayerFunction
) -> list[float | None]:
    """:func:`relative_objectives` from out_cov alone (its docstring): W' = I, Y' = U B^T with V = W^T B."""
    assert fn.out_cov is not None
    on_outputs = LayerFunction(
        mean=None if fn.mean is None else W64 @ fn.mean.double().to(W64.device),
        cov=fn.out_cov.double().to(W64.device),
        scale=fn.scale,
        shift=fn.shift,
        bias=fn.bias,
    )
    eye = torch.eye(W64.shape[0], dtype=torch.float64, device=W64.device)
    moved, where = [], []
    for k, (U, V, b) in enumerate(candidates):
        B = row_space_coefficients(W64, V.detach())
        if B is not None:
            moved.append((U.detach().double(), B, b))
            where.append(k)
    values: list[float | None] = [None] * len(candidates)
    for k, value in zip(where, relative_objectives(eye, moved, act, on_outputs) if moved else []):
        values[k] = value
    return values


#: the largest relative residual ||W^T B - M||_F / ||M||_F at which :func:`row_space_coefficients` counts
#: M's columns as in W's row space: float32 factors carry ~6e-8 relative rounding, which is all a solver's
#: V = W^T B (computed in float64) has outside the row space.
ROW_SPACE_TOLERANCE = 1e-5


def row_space_coefficients(W: Tensor, M: Tensor) -> Tensor | None:
    """B (d_out, k) float64 with W^T B = M, the least-squares solution, when M's columns lie in W's row space
    (relative residual at most :data:`ROW_SPACE_TOLERANCE`), else None. W (d_out, d_in), M (d_in, k).
    O(d_in d_out (d_out + k)) (a least-squares solve with W^T)."""
    check_matrix("W", W)
    check_matrix("M", M)
    if M.shape[0] != W.shape[1]:
        raise ValueError(f"M must have {W.shape[1]} rows (W's columns), got shape {tuple(M.shape)}")
    A, M64 = W.double().T, M.double().to(W.device)
    B = torch.linalg.lstsq(A, M64, driver="gelsd" if A.device.type == "cpu" else None).solution
    size = float(torch.linalg.matrix_norm(M64))
    if float(torch.linalg.matrix_norm(A @ B - M64)) > ROW_SPACE_TOLERANCE * size:
        return None
    return B
