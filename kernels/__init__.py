"""Triton kernels with their PyTorch references (imported as ``agentrl.kernels``).

``linear_logprob_entropy`` gives per-token log-probs and entropies from a linear LM head without building the
``[N, V]`` logits. Importing this package imports torch, never triton (the Triton module loads on first use
with CUDA tensors).
"""

from agentrl.kernels.logprob_entropy import (
    DEFAULT_IGNORE_INDEX,
    linear_logprob_entropy,
    naive_logprob_entropy,
)

__all__ = ["DEFAULT_IGNORE_INDEX", "linear_logprob_entropy", "naive_logprob_entropy"]
