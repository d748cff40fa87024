"""nlinit: low-rank layers whose factors are initialized to approximate the layer's function.

Each weight W is replaced by U V^T of rank r, with U, V chosen so that act(U V^T x) approximates
act(W x) (Vodrahalli et al., "Nonlinear Initialization Methods for Low-Rank Neural Networks", 2022).

    >>> import torchvision, nlinit
    >>> model = torchvision.models.resnet50()
    >>> report = nlinit.factorize(model, rank_scale=0.1)  # init="auto": relu-svd after a ReLU
    >>> print(report.summary())
"""

from .activations import ACTIVATIONS, Activation, parse_activation
from .bounds import Certificate, certify, nlra_lower_bound
from .calibration import LayerStats, collect_stats
from .factorize import factorize
from .inits import INITS, init_factors, list_inits, register_init
from .layer_function import LayerFunction
from .layers import LowRankConv2d, LowRankLinear, frobenius_decay, low_rank_layers
from .matrix_view import kernel_to_matrix, matrix_to_kernel
from .objective import arccos_kernel, nlra_loss
from .report import FactorizeReport, LayerReport

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "Activation",
    "Certificate",
    "FactorizeReport",
    "LayerFunction",
    "LayerReport",
    "LayerStats",
    "LowRankConv2d",
    "LowRankLinear",
    "arccos_kernel",
    "certify",
    "collect_stats",
    "factorize",
    "frobenius_decay",
    "init_factors",
    "kernel_to_matrix",
    "list_inits",
    "low_rank_layers",
    "matrix_to_kernel",
    "nlra_lower_bound",
    "nlra_loss",
    "parse_activation",
    "register_init",
]
