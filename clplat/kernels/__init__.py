"""Triton step kernels, each beside its PyTorch reference, behind a dispatcher.

Only torch and triton are imported here. ``CLPLAT_KERNELS=triton|reference|auto`` forces a backend.
"""

from clplat.kernels._backend import choose_backend, is_tracing, tracing, triton_forced
from clplat.kernels.conv_epilogue import (
    ACTIVATIONS,
    conv_epilogue,
    conv_epilogue_reference,
    conv_epilogue_triton,
)
from clplat.kernels.ssm_step import ssm_step, ssm_step_reference, ssm_step_triton

__all__ = [
    "ACTIVATIONS",
    "choose_backend",
    "conv_epilogue",
    "conv_epilogue_reference",
    "conv_epilogue_triton",
    "is_tracing",
    "ssm_step",
    "ssm_step_reference",
    "ssm_step_triton",
    "tracing",
    "triton_forced",
]
