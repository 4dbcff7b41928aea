"""Triton kernels (installed as ``zoo.kernels``)."""
