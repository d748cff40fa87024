"""One matrix view of a weight, used everywhere: Linear weights as they are, conv kernels reshaped.

Layouts for a conv kernel K of shape (c_out, c_in, kh, kw):

* ``"channel"`` (im2col; Pufferfish, Composer): W = K.reshape(c_out, c_in * kh * kw). Row o is output
  channel o's weight over one input patch, so ``W`` is the layer's function on patch vectors.
* ``"spatial"`` (Khodak et al. 2021): W[(o, i), (c, j)] = K[o, c, i, j], shape (c_out * kh, c_in * kw).

Both are permutations of K's entries, so each view maps back to K exactly.
"""

from __future__ import annotations

from torch import Tensor

from ._checks import check_choice

__all__ = ["LAYOUTS", "kernel_to_matrix", "matrix_shape", "matrix_to_kernel"]

LAYOUTS = ("channel", "spatial")


def matrix_shape(kernel_shape: tuple[int, ...], layout: str = "channel") -> tuple[int, int]:
    """(rows, cols) of the matrix view of a kernel of shape (c_out, c_in, kh, kw) or a (out, in) matrix."""
    check_choice("layout", layout, LAYOUTS)
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
    if K.dim() == 2:
        return K
    c_out, c_in, kh, kw = K.shape
    if layout == "channel":
        return K.reshape(c_out, c_in * kh * kw)
    return K.permute(0, 2, 1, 3).reshape(c_out * kh, c_in * kw)  # (o, i, c, j)


def matrix_to_kernel(W: Tensor, kernel_shape: tuple[int, ...], layout: str = "channel") -> Tensor:
    """Inverse of :func:`kernel_to_matrix`: exact, since both views only permute entries."""
    check_choice("layout", layout, LAYOUTS)
    if len(kernel_shape) == 2:
        return W.reshape(kernel_shape)
    c_out, c_in, kh, kw = kernel_shape
    if layout == "channel":
        return W.reshape(c_out, c_in, kh, kw)
    return W.reshape(c_out, kh, c_in, kw).permute(0, 2, 1, 3).contiguous()
