"""Low-rank layers: thin modules holding the factors U (d_out x r) and V (d_in x r), weight U @ V.T.

No solver code lives here: ``from_dense`` gets its factors from :func:`nlinit.inits.init_factors`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ._checks import check_choice, check_int, check_matrix, check_module, check_rank
from .activations import Activation, parse_activation
from .graph import PostOp
from .inits import (
    DEFAULT_INIT,
    Factors,
    InitInfo,
    check_init_options,
    full_rank_weight,
    get_init,
    resolve_init,
)
from .layer_function import LayerFunction
from .matrix_view import LAYOUTS, ConvGeometry, kernel_to_matrix, matrix_shape, matrix_to_kernel
from .subspace import SVD

__all__ = ["LowRankConv2d", "LowRankLinear", "check_init_layout", "frobenius_decay", "low_rank_layers"]


def check_init_layout(init: str, layout: str) -> None:
    """Refuse a per-unit init in the "spatial" layout (asks the registry: :meth:`InitInfo.check_layout`)."""
    if init != DEFAULT_INIT:
        get_init(init).check_layout(layout)


class _LowRank(nn.Module):
    """Shared parameter handling: U (rows, r), V (cols, r), optional bias (out,)."""

    U: nn.Parameter
    V: nn.Parameter
    bias: nn.Parameter | None

    def _make_parameters(self, rows: int, cols: int, rank: int, bias: bool, **factory: Any) -> None:
        self.rank = check_rank(rank, rows, cols)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        self.U = nn.Parameter(torch.empty(rows, rank, **factory))
        self.V = nn.Parameter(torch.empty(cols, rank, **factory))
        self.bias = nn.Parameter(torch.zeros(self._out(), **factory)) if bias else None
        with torch.no_grad():  # placeholder: entries of U V^T with variance 1/cols; init_from_ sets real ones
            nn.init.normal_(self.U, std=rank**-0.5)
            nn.init.normal_(self.V, std=cols**-0.5)

    def _out(self) -> int:
        raise NotImplementedError

    def set_factors_(self, U: Tensor, V: Tensor, bias: Tensor | None = None) -> None:
        """Copy ``U``, ``V`` (and ``bias``) into the parameters in place; shapes must match."""
        for name, new in (("U", U), ("V", V)):
            old = getattr(self, name)
            if new.shape != old.shape:
                raise ValueError(f"{name} must have shape {tuple(old.shape)}, got {tuple(new.shape)}")
        with torch.no_grad():
            self.U.copy_(U)
            self.V.copy_(V)
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)

    def init_from_(
        self,
        weight: Tensor,
        init: str | InitInfo = DEFAULT_INIT,
        *,
        activation: str | Activation = "relu",
        generator: torch.Generator | None = None,
        svd: SVD | None = None,
        post: PostOp | None = None,
        function: LayerFunction | None = None,
        **options: Any,
    ) -> Factors:
        """Set U, V from the dense ``weight`` (Linear (out, in) or conv kernel) by ``init``.

        ``init`` is ``"auto"``, a registered name (checked with its options) or a resolved
        :class:`~nlinit.inits.InitInfo` (from a caller that checked it, as ``factorize`` does). ``svd`` is
        the top-r SVD of this layer's matrix view of ``weight``, if the caller has it; ``post`` the layer's
        post-op (:class:`nlinit.graph.PostOp`) and ``function`` its real function
        (:class:`nlinit.layer_function.LayerFunction`, "channel" layout only), for inits that fit them.
        When the init refits the units' offsets, the refitted bias is set too (a bias parameter is added
        if the layer had none). Returns the :class:`~nlinit.inits.Factors`.
        """
        act = parse_activation(activation)
        W = self.to_matrix(weight)
        if not isinstance(init, InitInfo):
            check_matrix("weight", W)
            check_init_options(init, options)
        layout = getattr(self, "layout", "channel")
        info = resolve_init(init, act, layout)
        info.check_layout(layout)
        conv = self.geometry if isinstance(self, LowRankConv2d) else None
        if function is not None and layout != "channel" and not function.is_plain:
            raise NotImplementedError("a layer function (statistics, bias, BatchNorm) needs layout='channel'")
        factors = info.solve(
            W, self.rank, act, generator, options, conv=conv, svd=svd, post=post, function=function
        )
        self.set_factors_(factors.U, factors.V)
        if factors.bias is not None:
            if self.bias is None:
                self.bias = nn.Parameter(torch.zeros(self._out(), dtype=self.U.dtype, device=self.U.device))
            with torch.no_grad():
                self.bias.copy_(factors.bias)
        return factors

    @classmethod
    def from_dense(
        cls,
        layer: nn.Module,
        rank: int,
        init: str | InitInfo = DEFAULT_INIT,
        *,
        activation: str | Activation = "relu",
        source: str = "existing",
        distribution: str = "trunc-normal",
        generator: torch.Generator | None = None,
        layout: str = "channel",
        weight: Tensor | None = None,
        svd: SVD | None = None,
        post: PostOp | None = None,
        function: LayerFunction | None = None,
        **options: Any,
    ) -> Any:
        """A low-rank copy of ``layer`` (all its settings, bias, dtype, device) initialized by ``init``.

        The full-rank W is ``weight`` if given, else the layer's weight (``source="existing"``) or a fresh
        draw from ``distribution``; U, V come from the init (:meth:`init_from_`, ``"auto"`` by default:
        :func:`nlinit.inits.auto_init` for ``activation``); ``layout`` applies to convs. The bias is the
        dense layer's, or the init's refitted one when it fits ``function``.

        Example:
            >>> LowRankLinear.from_dense(nn.Linear(64, 32), rank=8, init="relu-svd")
            LowRankLinear(in_features=64, out_features=32, rank=8, bias=True)
        """
        cls._check_dense(layer)
        new = cls.like(layer, rank, layout)
        if weight is None:
            weight = full_rank_weight(layer, source, distribution, generator=generator)  # type: ignore[arg-type]
        factors = new.init_from_(
            weight,
            init,
            activation=activation,
            generator=generator,
            svd=svd,
            post=post,
            function=function,
            **options,
        )
        if factors.bias is None and layer.bias is not None:
            with torch.no_grad():
                new.bias.copy_(layer.bias)
        return new

    @classmethod
    def like(cls, layer: Any, rank: int, layout: str = "channel", bias: bool | None = None) -> Any:
        """An uninitialized low-rank layer with ``layer``'s settings; ``bias``: None as the dense layer."""
        raise NotImplementedError

    #: the dense module type this class replaces
    dense_type: type[nn.Module] = nn.Module

    @classmethod
    def _check_dense(cls, layer: object) -> None:
        """TypeError unless ``layer`` is exactly the dense type (a Conv1d is not a Conv2d, nor a subclass)."""
        if not isinstance(layer, cls.dense_type):
            raise TypeError(
                f"{cls.__name__}.from_dense needs an nn.{cls.dense_type.__name__}, got {type(layer).__name__}"
                " (nlinit factorizes nn.Linear and nn.Conv2d)"
            )

    def to_matrix(self, weight: Tensor) -> Tensor:
        """This layer's matrix view of a dense weight."""
        return weight

    def function_view(self, M: Tensor) -> Tensor:
        """The layer's function matrix (what x ~ N(0, I) meets) from a matrix in this layer's view."""
        return M

    def matrix(self) -> Tensor:
        """The effective weight U @ V.T in this layer's matrix view (forms the full matrix)."""
        return self.U @ self.V.T

    def frobenius_sq(self) -> Tensor:
        """||U V^T||_F^2 = sum((U^T U) * (V^T V)) in O((rows + cols) r^2), without forming U V^T."""
        return ((self.U.T @ self.U) * (self.V.T @ self.V)).sum()


class LowRankLinear(_LowRank):
    """y = x V U^T + b: a Linear layer whose weight is U @ V.T of rank ``rank``.

    Args:
        in_features, out_features, rank: as in nn.Linear, plus 1 <= rank <= min(in, out).
        bias: keep a bias on the output side.
    Shape:
        input (*, in_features) -> output (*, out_features).

    Example:
        >>> layer = LowRankLinear.from_dense(nn.Linear(64, 32), rank=8, init="spectral", source="existing")
    """

    dense_type = nn.Linear

    def __init__(
        self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        check_int("in_features", in_features, low=1)
        check_int("out_features", out_features, low=1)
        self.in_features, self.out_features = in_features, out_features
        self._make_parameters(out_features, in_features, rank, bias, device=device, dtype=dtype)

    def _out(self) -> int:
        return self.out_features

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.V.T), self.U, self.bias)  # (*, in) -> (*, r) -> (*, out)

    @classmethod
    def like(
        cls, layer: nn.Linear, rank: int, layout: str = "channel", bias: bool | None = None
    ) -> LowRankLinear:
        """An uninitialized low-rank layer with ``layer``'s sizes, bias (or ``bias``), dtype and device."""
        return cls(
            layer.in_features,
            layer.out_features,
            rank,
            layer.bias is not None if bias is None else bias,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )

    def to_dense(self) -> nn.Linear:
        """An nn.Linear with weight U @ V.T and this layer's bias."""
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=self.U.device,
            dtype=self.U.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.matrix())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"bias={self.bias is not None}"
        )


class LowRankConv2d(_LowRank):
    """A Conv2d whose kernel, in a matrix view, is U @ V.T of rank ``rank``.

    Layouts (see :mod:`nlinit.matrix_view`):

    * ``"channel"``: a kh x kw conv c_in -> r (the dense layer's stride, padding, dilation, padding_mode),
      then a 1 x 1 conv r -> c_out with the bias. U: (c_out, r), V: (c_in kh kw, r).
    * ``"spatial"`` (Khodak et al.): a 1 x kw conv c_in -> r, then a kh x 1 conv r -> c_out.
      U: (c_out kh, r), V: (c_in kw, r).

    Both compute exactly the dense conv with kernel ``matrix_to_kernel(U @ V.T)``. Grouped convs
    (groups > 1) are not supported.

    Shape:
        input (N, c_in, H, W) -> output (N, c_out, H', W'), H', W' as for the dense conv.
    """

    dense_type = nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        layout: str = "channel",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_choice("layout", layout, LAYOUTS)
        check_choice("padding_mode", padding_mode, ("circular", "reflect", "replicate", "zeros"))
        check_int("in_channels", in_channels, low=1)
        check_int("out_channels", out_channels, low=1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size: tuple[int, int] = _int_pair("kernel_size", kernel_size, low=1)
        self.stride: tuple[int, int] = _int_pair("stride", stride, low=1)
        self.padding: tuple[int, int] | str = (
            padding if isinstance(padding, str) else _int_pair("padding", padding, low=0)
        )
        self.dilation: tuple[int, int] = _int_pair("dilation", dilation, low=1)
        self.padding_mode, self.layout = padding_mode, layout
        if padding == "same" and self.stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={self.stride}")
        rows, cols = matrix_shape(self.kernel_shape, layout)
        self._make_parameters(rows, cols, rank, bias, device=device, dtype=dtype)
        self.geometry.explicit_padding  # noqa: B018  (raises for an unknown padding string)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry(
            self.kernel_shape, self.layout, self.stride, self.padding, self.dilation, self.padding_mode
        )

    def _out(self) -> int:
        return self.out_channels

    def forward(self, x: Tensor) -> Tensor:
        c_out, c_in, kh, kw = self.kernel_shape
        r = self.rank
        x, (ph, pw) = self.geometry.pad(x)  # F.pad unless the conv's own zero padding does it
        (sh, sw), (dh, dw) = self.stride, self.dilation
        if self.layout == "channel":
            first = self.V.T.reshape(r, c_in, kh, kw)
            h = F.conv2d(x, first, None, (sh, sw), (ph, pw), (dh, dw))  # (N, r, H', W')
            return F.conv2d(h, self.U.reshape(c_out, r, 1, 1), self.bias)  # (N, c_out, H', W')
        first = self.V.T.reshape(r, c_in, 1, kw)
        h = F.conv2d(x, first, None, (1, sw), (0, pw), (1, dw))  # (N, r, H + 2ph, W')
        second = self.U.reshape(c_out, kh, r).permute(0, 2, 1).unsqueeze(-1)  # (c_out, r, kh, 1)
        return F.conv2d(h, second, self.bias, (sh, 1), (ph, 0), (dh, 1))  # (N, c_out, H', W')

    def kernel(self) -> Tensor:
        """The effective dense kernel (c_out, c_in, kh, kw)."""
        return matrix_to_kernel(self.matrix(), self.kernel_shape, self.layout)

    def to_matrix(self, weight: Tensor) -> Tensor:
        return kernel_to_matrix(weight, self.layout)

    def function_view(self, M: Tensor) -> Tensor:
        return self.geometry.function_view(M)

    @classmethod
    def like(
        cls, layer: nn.Conv2d, rank: int, layout: str = "channel", bias: bool | None = None
    ) -> LowRankConv2d:
        """An uninitialized low-rank layer with all of ``layer``'s settings (``bias``: None as it has).

        Raises:
            NotImplementedError: for grouped or depthwise convs (groups > 1).
        """
        if layer.groups != 1:
            raise NotImplementedError(f"grouped convs are not factorized (groups={layer.groups})")
        return cls(
            layer.in_channels,
            layer.out_channels,
            _pair(layer.kernel_size),
            rank,
            stride=_pair(layer.stride),
            padding=layer.padding if isinstance(layer.padding, str) else _pair(layer.padding),
            dilation=_pair(layer.dilation),
            bias=layer.bias is not None if bias is None else bias,
            padding_mode=layer.padding_mode,
            layout=layout,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )

    def to_dense(self) -> nn.Conv2d:
        """An nn.Conv2d with this layer's settings and kernel :meth:`kernel`."""
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,  # type: ignore[arg-type]
            self.dilation,
            1,
            self.bias is not None,
            self.padding_mode,  # type: ignore[arg-type]
            device=self.U.device,
            dtype=self.U.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.kernel())
            if self.bias is not None:
                dense.bias.copy_(self.bias)  # type: ignore[union-attr]
        return dense

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
            f"layout={self.layout!r}, stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", bias={self.bias is not None}"


def _int_pair(name: str, value: object, *, low: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= ``low``, as a pair (what nn.Conv2d accepts)."""
    pair = _pair(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in pair):
        raise ValueError(f"{name} must be an int >= {low} or a pair of them, got {value!r}")
    return (pair[0], pair[1])


def low_rank_layers(model: nn.Module) -> list[tuple[str, LowRankLinear | LowRankConv2d]]:
    """All (name, module) low-rank layers of ``model`` in registration order."""
    check_module("model", model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LowRankLinear, LowRankConv2d))]


def frobenius_decay(model: nn.Module) -> Tensor:
    r"""sum over low-rank layers of ||U V^T||_F^2 (Khodak et al. 2021), without forming any U V^T.

    ||U V^T||_F^2 = tr(U^T U V^T V) = sum((U^T U) * (V^T V)): O((rows + cols) r^2) per layer.
    Differentiable; add ``coef * frobenius_decay(model)`` to the loss.
    """
    terms = [layer.frobenius_sq() for _, layer in low_rank_layers(model)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()
