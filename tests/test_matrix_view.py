"""nlinit.matrix_view: both layouts only permute a kernel's entries, so every round trip is exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nlinit.matrix_view import LAYOUTS, ConvGeometry, kernel_to_matrix, matrix_shape, matrix_to_kernel

dims = st.integers(min_value=1, max_value=5)
kernel_shapes = st.tuples(dims, dims, dims, dims)


def _kernel(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@given(shape=kernel_shapes, layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31 - 1))
def test_kernel_round_trip_is_exact(shape, layout, seed):
    K = _kernel(shape, seed)
    W = kernel_to_matrix(K, layout)
    assert tuple(W.shape) == matrix_shape(shape, layout)
    back = matrix_to_kernel(W, shape, layout)
    assert back.shape == K.shape
    assert torch.equal(back, K)  # a permutation of entries: exact, no tolerance


@given(shape=kernel_shapes, layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31 - 1))
def test_matrix_round_trip_is_exact(shape, layout, seed):
    rows, cols = matrix_shape(shape, layout)
    W = _kernel((rows, cols), seed)
    K = matrix_to_kernel(W, shape, layout)
    assert tuple(K.shape) == shape
    assert torch.equal(kernel_to_matrix(K, layout), W)


@given(shape=kernel_shapes, layout=st.sampled_from(LAYOUTS))
def test_views_are_permutations_of_entries(shape, layout):
    # Distinct integer entries: the matrix view must contain each of them exactly once.
    n = 1
    for s in shape:
        n *= s
    K = torch.arange(n, dtype=torch.float64).reshape(shape)
    W = kernel_to_matrix(K, layout)
    assert torch.equal(W.flatten().sort().values, K.flatten())


@pytest.mark.parametrize(
    ("shape", "channel", "spatial"),
    [
        ((8, 3, 3, 3), (8, 27), (24, 9)),
        ((4, 2, 1, 5), (4, 10), (4, 10)),
        ((6, 5, 7, 1), (6, 35), (42, 5)),
        ((1, 1, 1, 1), (1, 1), (1, 1)),
    ],
)
def test_matrix_shape(shape, channel, spatial):
    assert matrix_shape(shape, "channel") == channel
    assert matrix_shape(shape, "spatial") == spatial
    assert matrix_shape(shape) == channel  # default layout is "channel"


def test_channel_layout_rows_are_output_channels():
    K = _kernel((3, 2, 2, 3), 1)
    W = kernel_to_matrix(K, "channel")
    for o in range(3):
        assert torch.equal(W[o], K[o].flatten())  # row o = output channel o's patch weights, (c, i, j) order


def test_spatial_entry_mapping():
    c_out, c_in, kh, kw = 3, 4, 2, 5
    K = _kernel((c_out, c_in, kh, kw), 2)
    W = kernel_to_matrix(K, "spatial")
    assert W.shape == (c_out * kh, c_in * kw)
    for o in range(c_out):
        for i in range(kh):
            for c in range(c_in):
                for j in range(kw):
                    # W[(o, i), (c, j)] = K[o, c, i, j], rows indexed o * kh + i, columns c * kw + j.
                    assert W[o * kh + i, c * kw + j] == K[o, c, i, j]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_dimensional_weight_passes_through(layout):
    W = _kernel((5, 7), 3)
    assert matrix_shape((5, 7), layout) == (5, 7)
    assert kernel_to_matrix(W, layout) is W
    assert torch.equal(matrix_to_kernel(W, (5, 7), layout), W)


def test_unknown_layout_message_lists_layouts():
    K = torch.zeros(2, 2, 3, 3)
    expected = r"unknown layout 'im2col'; available: channel, spatial"
    with pytest.raises(ValueError, match=expected):
        kernel_to_matrix(K, "im2col")
    with pytest.raises(ValueError, match=expected):
        matrix_to_kernel(torch.zeros(2, 18), (2, 2, 3, 3), "im2col")
    with pytest.raises(ValueError, match=expected):
        matrix_shape((2, 2, 3, 3), "im2col")


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [(1, 2), "same", "valid", (0, 0)])
def test_conv_geometry_conv2d_equals_nn_conv2d(padding_mode, padding):
    # ConvGeometry.conv2d is the one place padding is reproduced (low-rank convs, lfai's image inputs).
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, (3, 2), padding=padding, dilation=(2, 1), padding_mode=padding_mode).double()
    geo = ConvGeometry(
        tuple(conv.weight.shape), "channel", conv.stride, conv.padding, conv.dilation, padding_mode
    )
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    # Same float64 ops in the same order up to F.pad's copy: equal to rounding.
    torch.testing.assert_close(geo.conv2d(x, conv.weight, conv.bias), conv(x), rtol=0, atol=1e-12)
