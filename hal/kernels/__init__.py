"""Device-agnostic compute: pure functions of tensors (Triton kernels and their torch references).

Nothing here knows about hal devices; drivers call these functions.
"""
