"""``agentrl.kernels.linear_logprob_entropy`` against hand-computed values and a float64 reference.

The reference materialises the full logits in float64 (``naive_logprob_entropy(dtype=float64)``) from the
same input values, so for bfloat16 inputs it is exact up to float64 rounding. Tolerances:

* forward, both dtypes: both paths multiply exactly representable inputs and sum in float32, so the error is
  float32 summation error on values of size ~log V: ``atol = 5e-5``.
* gradients, float32: float32 rounding over a few hundred terms: max error <= 2e-5 x max |reference|.
* gradients, bfloat16: the result is rounded to bfloat16 (unit roundoff 2**-9 = 0.2%) and the Triton path also
  rounds ``dz`` to bfloat16 before its products (as the naive bf16 path does): <= 1.5e-2 x max |reference|;
  float16 (unit roundoff 2**-11): <= 4e-3 x max |reference|.

The Triton kernels run under Triton's CPU interpreter here (``TRITON_INTERPRET=1``, set in conftest.py) on
small shapes, with tilings that leave ragged edges in every dimension; a slow test also compiles them for
sm_90 ahead of time (no GPU needed) so code that only the interpreter accepts fails here; on a GPU the ``gpu``
tests run them compiled.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentrl.kernels import linear_logprob_entropy, naive_logprob_entropy

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Triton runs on CPU tensors under the interpreter, compiled on CUDA tensors otherwise.
TRITON_DEVICE = "cpu" if INTERPRET else "cuda"
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not (HAS_CUDA or INTERPRET), reason="Triton needs a GPU or TRITON_INTERPRET=1"))]
FWD_ATOL = 5e-5
GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 4e-3}


def _device(backend: str) -> str:
    return TRITON_DEVICE if backend == "triton" else "cpu"


def _inputs(n: int, h: int, v: int, dtype: torch.dtype, seed: int, device: str = "cpu", ignore_every: int = 0):
    """Random hidden/weight with logits of std ~2.5 (peaked and flat rows both occur), random targets."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen) * 0.5
    weight = torch.randn(v, h, generator=gen) * (5.0 / math.sqrt(h))
    targets = torch.randint(0, v, (n,), generator=gen)
    if ignore_every:
        targets[::ignore_every] = -100
    coef_lp = torch.randn(n, generator=gen)
    coef_ent = torch.randn(n, generator=gen)
    to = {"device": device}
    return (hidden.to(dtype=dtype, **to), weight.to(dtype=dtype, **to), targets.to(**to),
            coef_lp.to(**to), coef_ent.to(**to))


def _run(fn, hidden, weight, targets, coef_lp, coef_ent, temperature, **kwargs):
    """Outputs and gradients of loss = sum(coef_lp * logprob) + sum(coef_ent * entropy)."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    logprob, entropy = fn(hidden, weight, targets, temperature, **kwargs)
    loss = (coef_lp.to(logprob.dtype) * logprob).sum() + (coef_ent.to(entropy.dtype) * entropy).sum()
    loss.backward()
    return logprob.detach(), entropy.detach(), hidden.grad, weight.grad


def _reference(hidden, weight, targets, coef_lp, coef_ent, temperature):
    return _run(naive_logprob_entropy, hidden.double(), weight.double(), targets, coef_lp, coef_ent,
                temperature, dtype=torch.float64)


def _assert_close(got, ref, dtype, what):
    got_lp, got_ent, got_gh, got_gw = got
    ref_lp, ref_ent, ref_gh, ref_gw = ref
    assert got_lp.dtype == torch.float32 and got_ent.dtype == torch.float32
    assert got_gh.dtype == dtype and got_gw.dtype == dtype
    assert (got_lp.double() - ref_lp).abs().max() <= FWD_ATOL, f"{what}: logprob"
    # The entropy is a float32 sum over the vocabulary, whose rounding grows like sqrt(V): measured on an H200
    # with the fixed test tiling, 5.08e-5 at V = 151,936 (bf16 inputs, 4,099 rows): 5e-5 holds up to V = 32k.
    vocab = ref_gw.shape[0]
    ent_atol = FWD_ATOL * max(1.0, (vocab / 32_000) ** 0.5)
    assert (got_ent.double() - ref_ent).abs().max() <= ent_atol, f"{what}: entropy"
    for name, got_g, ref_g in (("grad hidden", got_gh, ref_gh), ("grad weight", got_gw, ref_gw)):
        err = (got_g.double() - ref_g).abs().max()
        assert err <= GRAD_RTOL[dtype] * ref_g.abs().max(), f"{what}: {name} error {err:.3g}"


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_gives_uniform_distribution(backend):
    # All logits 0: p = 1/V, so log p(target) = -log V and H = log V for any hidden state.
    vocab, dev = 77, _device(backend)
    hidden = torch.randn(5, 8, device=dev)
    weight = torch.zeros(vocab, 8, device=dev)
    logprob, entropy = linear_logprob_entropy(hidden, weight, torch.arange(5, device=dev), backend=backend)
    assert torch.allclose(logprob.cpu(), torch.full((5,), -math.log(vocab)), atol=1e-6)
    assert torch.allclose(entropy.cpu(), torch.full((5,), math.log(vocab)), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_token_vocabulary_by_hand(backend):
    # h = 1, W = [ln 3, 0]: p = (3/4, 1/4). log p(0) = ln(3/4); H = -(3/4 ln 3/4 + 1/4 ln 1/4).
    # d log p(0)/dh = W_0 - E_p[W] = ln3 - 3/4 ln3 = ln3 / 4.
    # d H/dh = -sum_v p_v (z_v - E_p z) W_v = -(3/4 * (1/4 ln3) * ln3 + 1/4 * (-3/4 ln3) * 0) = -3/16 ln3^2.
    ln3, dev = math.log(3.0), _device(backend)
    hidden = torch.tensor([[1.0]], device=dev, requires_grad=True)
    weight = torch.tensor([[ln3], [0.0]], device=dev, requires_grad=True)
    logprob, entropy = linear_logprob_entropy(hidden, weight, torch.tensor([0], device=dev), backend=backend)
    assert logprob.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert entropy.item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-6)
    (grad_lp,) = torch.autograd.grad(logprob.sum(), hidden, retain_graph=True)
    (grad_ent,) = torch.autograd.grad(entropy.sum(), hidden)
    assert grad_lp.item() == pytest.approx(ln3 / 4, abs=1e-6)
    assert grad_ent.item() == pytest.approx(-3 / 16 * ln3**2, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_divides_logits(backend):
    # Temperature T on (h, W) equals temperature 1 on (h / T, W), values and (scaled) gradients.
    hidden, weight, targets, c1, c2 = _inputs(9, 12, 50, torch.float32, seed=3, device=_device(backend))
    hot = _run(linear_logprob_entropy, hidden, weight, targets, c1, c2, 2.5, backend=backend)
    scaled = _run(linear_logprob_entropy, hidden / 2.5, weight, targets, c1, c2, 1.0, backend=backend)
    torch.testing.assert_close(hot[0], scaled[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(hot[1], scaled[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(hot[2], scaled[2] / 2.5, atol=1e-5, rtol=0)
    torch.testing.assert_close(hot[3], scaled[3], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- against the float64 reference

SHAPES = [(1, 1, 2), (37, 29, 301), (64, 45, 257), (5, 70, 1000)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}_H{}_V{}".format(*s))
def test_matches_float64_reference(backend, dtype, shape):
    n, h, v = shape
    data = _inputs(n, h, v, dtype, seed=n * 1000 + v, device=_device(backend), ignore_every=4 if n > 4 else 0)
    temperature = 0.7
    chunk = 100 if v > 100 else None  # several vocabulary chunks, the last one ragged
    got = _run(linear_logprob_entropy, *data, temperature, backend=backend, chunk_size=chunk)
    _assert_close(got, _reference(*data, temperature), dtype, f"{backend} {dtype} {shape}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_matches_float64_reference(backend):
    data = _inputs(37, 29, 301, torch.float16, seed=16, device=_device(backend), ignore_every=6)
    got = _run(linear_logprob_entropy, *data, 1.0, backend=backend, chunk_size=128)
    _assert_close(got, _reference(*data, 1.0), torch.float16, f"{backend} fp16")


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_torch_path_chunk_sizes(chunk_size):
    data = _inputs(11, 16, 130, torch.float32, seed=chunk_size)
    got = _run(linear_logprob_entropy, *data, 1.3, backend="torch", chunk_size=chunk_size)
    _assert_close(got, _reference(*data, 1.3), torch.float32, f"chunk {chunk_size}")


@pytest.mark.skipif(not (HAS_CUDA or INTERPRET), reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize(
    "config,splits",
    [
        ({"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_H": 16}, 1),  # several k-steps, many tiles in one split
        ({"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_H": 32}, 5),  # 3 vocabulary tiles over 5 splits: 2 empty
        ({"BLOCK_N": 64, "BLOCK_V": 16, "BLOCK_H": 64, "GROUP_N": 1}, 3),
    ],
)
def test_triton_tilings(config, splits):
    from agentrl.kernels.triton_logprob_entropy import TritonLinearLogprobEntropy

    data = _inputs(21, 40, 150, torch.float32, seed=splits, device=TRITON_DEVICE, ignore_every=5)

    def fn(hidden, weight, targets, temperature):
        return TritonLinearLogprobEntropy.apply(hidden, weight, targets, 1 / temperature, -100, 48, config, splits)

    got = _run(fn, *data, 0.9)
    _assert_close(got, _reference(*data, 0.9), torch.float32, f"{config} splits={splits}")


# ---------------------------------------------------------------- ignore index, partial use, shapes


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_positions_have_zero_outputs_and_gradients(backend):
    hidden, weight, targets, c1, c2 = _inputs(12, 16, 90, torch.float32, seed=7, device=_device(backend))
    targets[[0, 5, 11]] = -100
    got = _run(linear_logprob_entropy, hidden, weight, targets, c1, c2, 1.0, backend=backend)
    keep = targets != -100
    assert not got[0][~keep].any() and not got[1][~keep].any(), "ignored rows: outputs exactly 0"
    assert not got[2][~keep].any(), "ignored rows: hidden gradient exactly 0"
    # The valid rows alone give the same values and the same weight gradient.
    alone = _reference(hidden[keep], weight, targets[keep], c1[keep], c2[keep], 1.0)
    torch.testing.assert_close(got[0][keep].double(), alone[0], atol=FWD_ATOL, rtol=0)
    torch.testing.assert_close(got[3].double(), alone[3], atol=2e-5 * alone[3].abs().max().item(), rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("used", ["logprob", "entropy"])
def test_gradient_through_one_output(backend, used):
    hidden, weight, targets, c1, c2 = _inputs(10, 16, 120, torch.float32, seed=11, device=_device(backend))
    zero = torch.zeros_like(c1)
    coefs = (c1, zero) if used == "logprob" else (zero, c2)
    ref = _reference(hidden, weight, targets, *coefs, 1.0)
    hidden = hidden.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    logprob, entropy = linear_logprob_entropy(hidden, weight, targets, backend=backend)
    out, coef = (logprob, c1) if used == "logprob" else (entropy, c2)
    (out * coef).sum().backward()  # the other output gets no gradient (None in backward)
    torch.testing.assert_close(hidden.grad.double(), ref[2], atol=2e-5 * ref[2].abs().max().item(), rtol=0)
    torch.testing.assert_close(weight.grad.double(), ref[3], atol=2e-5 * ref[3].abs().max().item(), rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_empty_input(backend):
    hidden, weight, targets, _, _ = _inputs(12, 8, 40, torch.float32, seed=5, device=_device(backend))
    logprob, entropy = linear_logprob_entropy(hidden.view(3, 4, 8), weight, targets.view(3, 4), backend=backend)
    flat_lp, flat_ent = linear_logprob_entropy(hidden, weight, targets, backend=backend)
    assert logprob.shape == (3, 4) and torch.equal(logprob.reshape(-1), flat_lp)
    assert torch.equal(entropy.reshape(-1), flat_ent)
    empty_h = torch.zeros(0, 8, device=hidden.device, requires_grad=True)
    weight = weight.clone().requires_grad_()
    no_targets = torch.zeros(0, dtype=torch.long, device=hidden.device)
    lp, ent = linear_logprob_entropy(empty_h, weight, no_targets, backend=backend)
    assert lp.shape == (0,) and ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_only_weight_or_only_hidden_requires_grad():
    hidden, weight, targets, c1, c2 = _inputs(6, 8, 30, torch.float32, seed=2)
    ref = _reference(hidden, weight, targets, c1, c2, 1.0)
    w = weight.clone().requires_grad_()
    lp, ent = linear_logprob_entropy(hidden, w, targets)
    ((c1 * lp).sum() + (c2 * ent).sum()).backward()
    torch.testing.assert_close(w.grad.double(), ref[3], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"hidden": torch.zeros(4, 9)}, "H = weight.shape"),
        ({"weight": torch.zeros(10, 8, dtype=torch.float64)}, "share one float dtype"),
        ({"targets": torch.tensor([0, 1, 10, 2])}, "target id 10 is outside"),
        ({"targets": torch.tensor([0, 1, -1, 2])}, "target id -1 is outside"),
        ({"targets": torch.zeros(4)}, "integer token ids"),
        ({"targets": torch.zeros(3, dtype=torch.long)}, "targets must have shape"),
        ({"temperature": 0.0}, "positive finite"),
        ({"backend": "cuda"}, "backend must be one of"),
    ],
)
def test_bad_input_raises_clear_error(change, message):
    args = {"hidden": torch.zeros(4, 8), "weight": torch.zeros(10, 8), "targets": torch.zeros(4, dtype=torch.long),
            "temperature": 1.0, "backend": "torch"}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        linear_logprob_entropy(**args)


def test_import_does_not_load_triton():
    code = "import sys, agentrl.kernels; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- as the LM head of a causal LM


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_same_loss_and_gradients_as_full_logits_in_a_causal_lm(tied):
    # A tiny Qwen2 built from a config: the loss from the model's own full logits and the loss from the
    # backbone's hidden states through linear_logprob_entropy agree, and so do the gradients of every parameter
    # (backbone, embeddings, head; the tied case accumulates both uses of the embedding matrix).
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    model = transformers.Qwen2ForCausalLM(config)
    head = model.get_output_embeddings()
    assert isinstance(head, torch.nn.Linear) and head.bias is None
    assert (head.weight is model.get_input_embeddings().weight) == tied
    input_ids = torch.randint(0, 300, (3, 17))
    targets = torch.cat([input_ids[:, 1:], torch.full((3, 1), -100)], dim=1)
    targets[:, :5] = -100  # prompt positions are not scored
    coef = torch.randn(3, 17)
    temperature = 0.8

    def loss_and_grads(use_kernel: bool):
        model.zero_grad()
        if use_kernel:
            hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state
            logprob, entropy = linear_logprob_entropy(hidden, head.weight, targets, temperature)
        else:
            logp = torch.log_softmax(model(input_ids=input_ids).logits.float() / temperature, dim=-1)
            scored = targets != -100
            logprob = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * scored
            entropy = -(logp.exp() * logp).sum(-1) * scored
        loss = -(coef * logprob).sum() - 0.01 * entropy.sum()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    loss_full, grads_full = loss_and_grads(False)
    loss_fused, grads_fused = loss_and_grads(True)
    assert abs(loss_fused - loss_full) <= 1e-5 * abs(loss_full)
    for name, grad in grads_full.items():
        err = (grads_fused[name] - grad).abs().max()
        assert err <= 1e-4 * grad.abs().max() + 1e-8, f"{name}: {err:.3g}"


# ---------------------------------------------------------------- compiled for the GPU, on the CPU


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_a_gpu():
    # The interpreter accepts programs the GPU compiler rejects; compiling ahead of time for sm_90 (ptxas ships
    # with triton) catches those in CPU-only CI. A software-pipelined loop keeps num_stages copies of one
    # [BLOCK_N, BLOCK_H] and one [BLOCK_H, BLOCK_V] bf16 tile in shared memory: for the first config
    # 3 x (128*64 + 64*128) x 2 B = 98,304 B at least, and a Hopper block may use at most 227 KiB.
    script = Path(__file__).with_name("kernels_aot_compile.py")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script), "--arch", "90", "--dtype", "bf16"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert sorted(row["kernel"] for row in rows) == ["bwd", "fwd"]
    for row in rows:
        pipelined = row["num_stages"] * (row["BLOCK_N"] * row["BLOCK_H"] + row["BLOCK_H"] * row["BLOCK_V"]) * 2
        assert pipelined <= row["shared_bytes"] <= 227 * 1024, row
        assert row["wgmma"], f"{row['kernel']}: no Hopper warpgroup MMA in the PTX"


# ---------------------------------------------------------------- GPU (compiled, autotuned kernels)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 64, 1000), (77, 100, 5003), (1000, 576, 32_003), (4099, 1536, 151_936)],
                         ids=lambda s: "N{}_H{}_V{}".format(*s))
def test_gpu_triton_matches_float64_reference(dtype, shape):
    n, h, v = shape
    data = _inputs(n, h, v, dtype, seed=n, device="cuda", ignore_every=7)
    got = _run(linear_logprob_entropy, *data, 0.8)  # auto backend: Triton on CUDA
    _assert_close(got, _reference(*data, 0.8), dtype, f"cuda {dtype} {shape}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_torch_path_matches_float64_reference():
    data = _inputs(300, 256, 20_000, torch.float32, seed=1, device="cuda", ignore_every=3)
    got = _run(linear_logprob_entropy, *data, 1.0, backend="torch")
    _assert_close(got, _reference(*data, 1.0), torch.float32, "cuda torch fp32")
