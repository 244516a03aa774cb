"""CPU kernels: oneDNN convolutions and a fused GroupNorm(+swish) as XLA FFI custom calls
(``cpu.py``, C++ in ``csrc/``), with XLA's own ops on other platforms and for derivatives.

May import: utils.
"""
