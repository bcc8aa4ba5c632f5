"""The HLO cost reader: FLOPs and bytes agree with XLA's own cost analysis where XLA counts
right (no loops), loops are counted as often as they run, data-dependent loops are reported
per iteration, and all-gathers of loop-invariant values (weights) are told apart."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.plan.hlo_cost import _tuple_parts, analyze, parse_module, traffic
from e1jax.sharding import make_mesh

W = jax.ShapeDtypeStruct((256, 256), jnp.float32)
X = jax.ShapeDtypeStruct((64, 256), jnp.float32)


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def _xla(compiled):
    costs = compiled.cost_analysis()
    return costs[0] if isinstance(costs, (list, tuple)) else costs


def _chain(x, w):
    for _ in range(5):
        x = jnp.tanh(x @ w)
    return x


def _scan(x, w):
    return jax.lax.scan(lambda x, _: (jnp.tanh(x @ w), None), x, None, length=5)[0]


def test_loop_free_program_matches_xla_cost_analysis():
    compiled = _compiled(_chain, X, W)
    ours, xla = analyze(compiled.as_text()).total, _xla(compiled)
    assert ours.flops == pytest.approx(xla["flops"], rel=0.02)
    assert ours.flops >= 5 * 2 * 64 * 256 * 256
    assert ours.bytes == pytest.approx(xla["bytes accessed"], rel=0.25)
    assert ours.hbm_bytes == ours.bytes  # CPU buffers carry no memory-space annotation


def test_a_counted_loop_runs_its_trip_count():
    scanned = analyze(_compiled(_scan, X, W).as_text())
    unrolled = analyze(_compiled(_chain, X, W).as_text())
    assert not scanned.dynamic_loops
    assert scanned.total.flops == pytest.approx(unrolled.total.flops, rel=0.02)
    # XLA's own figure counts the body once
    assert _xla(_compiled(_scan, X, W))["flops"] < 0.5 * scanned.total.flops


def _until(x, w):
    def cond(state):
        return jnp.sum(state[0]) < 1e6

    def body(state):
        x, i = state
        return jnp.abs(x @ w) + 1.0, i + 1

    return jax.lax.while_loop(cond, body, (x, 0))[0]


def test_a_data_dependent_loop_is_reported_per_iteration():
    text = _compiled(_until, X, W).as_text()
    once, many = analyze(text, dynamic_trip_count=1), analyze(text, dynamic_trip_count=100)
    assert len(once.dynamic_loops) == 1
    per_step = once.dynamic_loops[0].per_iteration
    assert per_step.flops == pytest.approx(2 * 64 * 256 * 256, rel=0.05)
    assert many.total.flops == pytest.approx(once.total.flops + 99 * per_step.flops, rel=1e-6)


_DECODE = """HloModule m

%cond (s: (s32[], f32[8,16], f32[2,16])) -> pred[] {
  %s = (s32[], f32[8,16]{1,0}, f32[2,16]{1,0}) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%s), index=1
  %zero = f32[] constant(0)
  %total = f32[] reduce(%x, %zero), dimensions={0,1}, to_apply=%sum
  %limit = f32[] constant(1000000)
  ROOT %go = pred[] compare(%total, %limit), direction=LT
}

%sum (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %c = f32[] add(%a, %b)
}

%body (s: (s32[], f32[8,16], f32[2,16])) -> (s32[], f32[8,16], f32[2,16]) {
  %s = (s32[], f32[8,16]{1,0}, f32[2,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%s), index=0
  %x = f32[8,16]{1,0} get-tuple-element(%s), index=1
  %w = f32[2,16]{1,0} get-tuple-element(%s), index=2
  %weight = f32[16,16]{1,0} all-gather(%w), dimensions={0}, replica_groups={{0,1,2,3,4,5,6,7}}
  %activ = f32[64,16]{1,0} all-gather(%x), dimensions={0}, replica_groups={{0,1,2,3,4,5,6,7}}
  %y = f32[8,16]{1,0} dot(%x, %weight), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[8,16]{1,0}, f32[2,16]{1,0}) tuple(%next, %y, %w)
}

ENTRY %main (x: f32[8,16], w: f32[2,16]) -> f32[8,16] {
  %x = f32[8,16]{1,0} parameter(0)
  %w = f32[2,16]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,16]{1,0}, f32[2,16]{1,0}) tuple(%zero, %x, %w)
  %loop = (s32[], f32[8,16]{1,0}, f32[2,16]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %result = f32[8,16]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_all_gathers_of_loop_invariant_weights_are_told_apart():
    """The decode loop gathers a weight it passes through unchanged and an activation it updates."""
    loop = analyze(_DECODE, dynamic_trip_count=10).dynamic_loops[0]
    assert (loop.weight_gathers, loop.gathers) == (1, 2)
    assert loop.per_iteration.collectives["all-gather"] == 2
    assert loop.per_iteration.collective_bytes["all-gather"] == 4 * (16 * 16 + 64 * 16)
    assert loop.per_iteration.flops == pytest.approx(2 * 8 * 16 * 16 + 8 * 16 + 1, rel=0.01)


def test_the_decode_loop_of_the_sampler_gathers_no_weights():
    """The real sampler on a mesh, decoding from its replicated copy: no all-gather in the loop."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    from e1jax.models.config import ModelConfig
    from e1jax.models.params import abstract_params
    from e1jax.rl.programs import placeholder_ids
    from e1jax.sampling.generate import DecodeShapes, _generate_jit, abstract_generate_args
    from e1jax.sampling.inference import inference_layout
    from e1jax.sharding import activate

    config = ModelConfig("qwen2", 128, 32, 64, 2, 4, 2, 8)
    layout = inference_layout(config, make_mesh("fsdp=8"), platform="tpu")
    shardings = layout.shardings()
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          jax.eval_shape(layout.reshard, abstract_params(config)), shardings)
    shapes = DecodeShapes.of(8, 16, n=2, steps=40, mesh=layout.mesh)
    with activate(layout.mesh):
        compiled = _generate_jit.lower(*abstract_generate_args(shapes, params, placeholder_ids(), layout.mesh),
                                       **shapes.statics(layout.config)).compile()
    loops = analyze(compiled.as_text(), dynamic_trip_count=shapes.max_steps).dynamic_loops
    assert loops and all(loop.gathers == 0 for loop in loops)


def test_memory_spaces_and_async_copies():
    assert traffic("bf16[4,8]{1,0:T(8,128)(2,1)}").hbm == 64
    on_chip = traffic("(bf16[4,8]{1,0:T(8,128)(2,1)S(3)}, f32[2]{0})")
    assert on_chip.total == 72 and on_chip.hbm == 8
    assert _tuple_parts("((bf16[2]{0}), bf16[1]{0:S(3)}, s32[]{:S(2)})") == ["(bf16[2]{0})", "bf16[1]{0:S(3)}", "s32[]{:S(2)}"]
    text = """HloModule m

ENTRY %main (p: f32[1024]) -> f32[256] {
  %p = f32[1024]{0} parameter(0)
  %start = ((f32[1024]{0}), f32[256]{0:S(1)}, s32[]{:S(2)}) slice-start(%p), slice={[0:256]}
  %done = f32[256]{0:S(1)} slice-done(%start)
  ROOT %copy = f32[256]{0} copy(%done)
}
"""
    assert set(parse_module(text)) == {"main"}
    cost = analyze(text).total
    # the async slice reads 1 KiB of HBM and writes 1 KiB on chip; the copy reads it there and writes HBM
    assert cost.bytes == 4 * 1024 and cost.hbm_bytes == 2 * 1024


def test_convolution_flops_count_real_window_taps():
    """TPU batch matmuls come as convolutions whose window walks a dilated batch dimension."""
    text = """HloModule m

ENTRY %main (a: bf16[32,6144,128], b: bf16[32,128,1024]) -> f32[32,6144,1024] {
  %a = bf16[32,6144,128]{2,1,0} parameter(0)
  %b = bf16[32,128,1024]{2,1,0} parameter(1)
  ROOT %c = f32[32,6144,1024]{2,1,0} convolution(%a, %b), window={size=32 stride=31 lhs_dilate=32}, dim_labels=0bf_0io->0bf
}
"""
    assert analyze(text).total.flops == pytest.approx(2 * 32 * 6144 * 1024 * 128)
    np.testing.assert_equal(len(parse_module(text)["main"].instructions), 3)
