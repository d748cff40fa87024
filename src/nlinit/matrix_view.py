"""One matrix view of a weight, used everywhere: Linear weights as they are, conv kernels reshaped.

Layouts for a conv kernel K of shape (c_out, c_in, kh, kw):

* ``"channel"`` (im2col; Pufferfish, Composer): W = K.reshape(c_out, c_in * kh * kw). Row o is output
  channel o's weight over one input patch, so ``W`` is the layer's function on patch vectors.
* ``"spatial"`` (Khodak et al. 2021): W[(o, i), (c, j)] = K[o, c, i, j], shape (c_out * kh, c_in * kw).

Both are permutations of K's entries, so each view maps back to K exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Size, Tensor

from ._checks import check_choice

__all__ = ["LAYOUTS", "ConvGeometry", "kernel_to_matrix", "matrix_shape", "matrix_to_kernel"]

LAYOUTS = ("channel", "spatial")


def matrix_shape(kernel_shape: tuple[int, ...], layout: str = "channel") -> tuple[int, int]:
    """(rows, cols) of the matrix view of a kernel of shape (c_out, c_in, kh, kw) or a (out, in) matrix."""
    check_choice("layout", layout, LAYOUTS)
    if (
        not isinstance(kernel_shape, (tuple, list, Size))
        or len(kernel_shape) not in (2, 4)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in kernel_shape)
    ):
        raise ValueError(
            f"kernel_shape must be (c_out, c_in, kh, kw) or (out, in), ints >= 1, got {kernel_shape!r}"
        )
    if len(kernel_shape) == 2:
        return kernel_shape[0], kernel_shape[1]
    c_out, c_in, kh, kw = kernel_shape
    if layout == "channel":
        return c_out, c_in * kh * kw
    return c_out * kh, c_in * kw


def kernel_to_matrix(K: Tensor, layout: str = "channel") -> Tensor:
    """The (rows, cols) matrix view of K (c_out, c_in, kh, kw); a 2-D K is returned as is.

    Example:
        >>> kernel_to_matrix(torch.zeros(8, 3, 3, 3)).shape
        torch.Size([8, 27])
    """
    check_choice("layout", layout, LAYOUTS)
    if not isinstance(K, Tensor) or K.dim() not in (2, 4):
        got = f"shape {tuple(K.shape)}" if isinstance(K, Tensor) else type(K).__name__
        raise ValueError(f"K must be a (c_out, c_in, kh, kw) kernel or a 2-D matrix tensor, got {got}")
    if K.dim() == 2:
        return K
    c_out, c_in, kh, kw = K.shape
    if layout == "channel":
        return K.reshape(c_out, c_in * kh * kw)
    return K.permute(0, 2, 1, 3).reshape(c_out * kh, c_in * kw)  # (o, i, c, j)


def matrix_to_kernel(W: Tensor, kernel_shape: tuple[int, ...], layout: str = "channel") -> Tensor:
    """Inverse of :func:`kernel_to_matrix`: exact, since both views only permute entries."""
    rows_cols = matrix_shape(kernel_shape, layout)
    if not isinstance(W, Tensor) or tuple(W.shape) != rows_cols:
        got = f"shape {tuple(W.shape)}" if isinstance(W, Tensor) else type(W).__name__
        raise ValueError(f"W must have shape {rows_cols} for kernel shape {tuple(kernel_shape)}, got {got}")
    if len(kernel_shape) == 2:
        return W.reshape(kernel_shape)
    c_out, c_in, kh, kw = kernel_shape
    if layout == "channel":
        return W.reshape(c_out, c_in, kh, kw)
    return W.reshape(c_out, kh, c_in, kw).permute(0, 2, 1, 3).contiguous()


@dataclass(frozen=True)
class ConvGeometry:
    """A conv's settings beyond its weight: what inits and low-rank convs need to reproduce it.

    kernel_shape is (c_out, c_in, kh, kw); layout is the matrix view being factorized; stride, padding
    (a pair, "same" or "valid"), dilation and padding_mode are those of the dense nn.Conv2d.
    """

    kernel_shape: tuple[int, int, int, int]
    layout: str = "channel"
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        def ints(name: str, value: object, low: int, n: int) -> None:
            items = list(value) if isinstance(value, tuple) and len(value) == n else []
            if not items or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= low for v in items
            ):
                raise ValueError(f"{name} must be a tuple of {n} ints >= {low}, got {value!r}")

        ints("kernel_shape", self.kernel_shape, 1, 4)
        check_choice("layout", self.layout, LAYOUTS)
        ints("stride", self.stride, 1, 2)
        ints("dilation", self.dilation, 1, 2)
        if isinstance(self.padding, str) and self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be a pair of ints >= 0, 'same' or 'valid', got {self.padding!r}")
        if not isinstance(self.padding, str):
            ints("padding", self.padding, 0, 2)
        check_choice("padding_mode", self.padding_mode, ("circular", "reflect", "replicate", "zeros"))

    def function_view(self, M: Tensor) -> Tensor:
        """The layer's function matrix (channel layout) from a matrix in this layout."""
        if self.layout == "channel":
            return M
        return kernel_to_matrix(matrix_to_kernel(M, self.kernel_shape, self.layout), "channel")

    @property
    def explicit_padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding in F.pad order, as nn.Conv2d computes it (incl. "same")."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            th, tw = (d * (k - 1) for d, k in zip(self.dilation, self.kernel_shape[2:]))
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        if isinstance(self.padding, str):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {self.padding!r}")
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(x, conv padding): zero symmetric padding is left to the conv; anything else is done by F.pad."""
        left, right, top, bottom = self.explicit_padding
        if self.padding_mode == "zeros" and left == right and top == bottom:
            return x, (top, left)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, (left, right, top, bottom), mode=mode), (0, 0)

    def conv2d(self, x: Tensor, K: Tensor, bias: Tensor | None = None) -> Tensor:
        """The dense conv with kernel K (c_out, c_in, kh, kw) and these settings: nn.Conv2d's output."""
        x, padding = self.pad(x)
        return F.conv2d(x, K, bias, self.stride, padding, self.dilation)
