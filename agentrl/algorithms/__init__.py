"""Policy-gradient algorithms as pure torch functions, one module each, with paper names."""
