"""Compile the logprob/entropy Triton kernels for an NVIDIA target without a GPU; print one JSON line per kernel.

Run as a script in a process where TRITON_INTERPRET is unset (the interpreter replaces ``@triton.jit``
functions at import). Used by tests/test_kernels.py so CPU-only CI catches kernels that no longer compile
for the GPU, and by hand to read shared memory per config. The signature mirrors a real launch: unit
strides become constants and 16-divisible sizes carry the divisibility hint, as Triton's launcher does.

    python tests/kernels_aot_compile.py [--arch 90] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from agentrl.kernels import triton_logprob_entropy as kernels  # noqa: E402

_FWD = {
    "h_ptr": "*T", "w_ptr": "*T", "tgt_ptr": "*i32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "mom_ptr": "*fp32",
    "tlogit_ptr": "*fp32", "N": "i32", "V": "i32", "H": "i32", "stride_hn": "i32", "stride_hk": 1,
    "stride_wv": "i32", "stride_wk": 1, "inv_temp": "fp32", "SPLITS": "i32",
}
_BWD = {
    "h_ptr": "*T", "w_ptr": "*T", "tgt_ptr": "*i32", "lse_ptr": "*fp32", "mean_ptr": "*fp32", "glp_ptr": "*fp32",
    "gent_ptr": "*fp32", "dz_ptr": "*T", "N": "i32", "H": "i32", "v_start": "i32", "width": "i32",
    "stride_hn": "i32", "stride_hk": 1, "stride_wv": "i32", "stride_wk": 1, "stride_dzn": "i32", "inv_temp": "fp32",
}
_DIVISIBLE = {"stride_hn", "stride_wv", "stride_dzn", "H", "V"}


def compile_kernel(fn, args: dict, meta: dict, dtype: str, arch: int, num_warps: int, num_stages: int):
    """``args``: name -> Triton type (``*T`` is a pointer to ``dtype``) or a constant; ``meta``: constexprs."""
    signature, constexprs, attrs = {}, {}, {}
    for name, kind in [*args.items(), *((name, (value,)) for name, value in meta.items())]:
        index = (len(signature),)
        if isinstance(kind, str):
            signature[name] = kind.replace("T", dtype) if kind.startswith("*") else kind
            if kind.startswith("*") or name in _DIVISIBLE:
                attrs[index] = [["tt.divisibility", 16]]
        else:  # a unit stride (int) or a meta-parameter (1-tuple): compile-time constant
            signature[name] = "constexpr"
            constexprs[index] = kind[0] if isinstance(kind, tuple) else kind
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--all-configs", action="store_true", help="every autotuning candidate, not the first")
    args = parser.parse_args()
    precision = "ieee" if args.dtype == "fp32" else "tf32"
    configs = kernels._configs(group=True)
    for config in configs if args.all_configs else configs[:1]:
        tile = {k: config.kwargs[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H")}
        for name, fn, sig, extra in (
            ("fwd", kernels._fwd_stats_kernel, _FWD, {}),
            ("bwd", kernels._bwd_dz_kernel, _BWD, {"GROUP_N": config.kwargs["GROUP_N"]}),
        ):
            meta = {**tile, **extra, "UPCAST": False, "INPUT_PRECISION": precision}
            compiled = compile_kernel(fn, sig, meta, args.dtype, args.arch, config.num_warps, config.num_stages)
            ptx = compiled.asm.get("ptx", "")
            print(json.dumps({
                "kernel": name, **tile, "num_warps": config.num_warps, "num_stages": config.num_stages,
                "shared_bytes": compiled.metadata.shared, "wgmma": "wgmma" in ptx, "cubin_bytes": len(compiled.asm["cubin"]),
            }), flush=True)


if __name__ == "__main__":
    main()
