"""Triton kernels with their PyTorch references (imported as ``agentrl.kernels``)."""
