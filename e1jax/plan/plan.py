"""Compile one training step of a recipe for a TPU slice, ahead of time, and read what the
compiler says about it: per-chip memory, FLOPs, bytes accessed, collectives in the decode loop.

The programs are the trainer's own (`e1jax.rl.programs.step_programs`), lowered with abstract
inputs of the recipe's largest shapes (`StepShapes`) and the placements `train` gives them.
Times are estimates: the larger of FLOPs / peak FLOP/s and HBM bytes / HBM bandwidth per chip
(HBM bytes: the traffic of buffers in HBM; `bytes_accessed` also counts the compiler's copies
into and reads from on-chip memories).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from e1jax.dtypes import resolve_dtype
from e1jax.models.attention import attention_for
from e1jax.models.config import ModelConfig
from e1jax.models.params import abstract_params
from e1jax.plan.hlo_cost import analyze, collectives_summary
from e1jax.plan.tpu import Chip, Slice
from e1jax.rl.config import TrainConfig
from e1jax.rl.batch import BATCH_LOGICAL_AXES, TrainBatch
from e1jax.rl.programs import StepPrograms, StepShapes, check_context, placeholder_ids, step_programs
from e1jax.rl.update import TrainState, train_state_shardings
from e1jax.sampling.generate import _generate_jit, abstract_generate_args
from e1jax.sharding import activate, make_mesh, mesh_description, named_sharding

HEADROOM = 0.9  # a program fits when its peak is at most this share of a chip's memory
KNOBS = {"rollout": "rollout.chunk_prompts (or rollout.tensor_parallel, mesh)",
         "logprobs": "batch.micro_batch (or mesh)", "update": "batch.micro_batch (or mesh)"}


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of an abstract (sharded) pytree."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def tpu_model_config(cfg: TrainConfig, model_config: ModelConfig) -> ModelConfig:
    """The model as `train` builds it on a TPU: the recipe's dtypes (auto compute = bf16),
    remat, and the TPU attention kernel."""
    return model_config.replace(param_dtype=cfg.model.param_dtype, dtype=resolve_dtype(cfg.model.dtype, "tpu"),
                                remat=cfg.model.remat, attention=attention_for("tpu"))


@dataclasses.dataclass
class ProgramPlan:
    name: str
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    resident_bytes: int = 0  # other buffers alive meanwhile (training state, reference params)
    flops: float = 0.0
    bytes_accessed: float = 0.0
    hbm_bytes: float = 0.0
    compiler_flops: float = 0.0  # XLA's cost_analysis (while-loop bodies counted once)
    compiler_bytes_accessed: float = 0.0
    runs_per_step: int = 1
    compile_s: float = 0.0
    error: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes + self.resident_bytes

    def estimated_s(self, chip: Chip) -> float:
        return roofline_s(self.flops, self.hbm_bytes, chip)

    def fits(self, chip: Chip) -> bool:
        return not self.error and self.peak_bytes <= HEADROOM * chip.hbm_bytes

    def as_dict(self, chip: Chip) -> dict[str, Any]:
        out = {"argument_bytes": self.argument_bytes, "temp_bytes": self.temp_bytes, "output_bytes": self.output_bytes,
               "alias_bytes": self.alias_bytes, "resident_bytes": self.resident_bytes, "peak_bytes": self.peak_bytes,
               "flops": self.flops, "bytes_accessed": self.bytes_accessed, "hbm_bytes": self.hbm_bytes,
               "estimated_s": self.estimated_s(chip),
               "runs_per_step": self.runs_per_step, "fits": self.fits(chip),
               "compiler_cost_analysis": {"flops": self.compiler_flops, "bytes_accessed": self.compiler_bytes_accessed},
               "compile_s": self.compile_s}
        if self.error:
            out["error"] = self.error
        out.update(self.extra)
        return out


def _compile(plan: ProgramPlan, lower: Callable[[], Any], dynamic_trips: float = 1.0) -> Any:
    start = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as err:  # noqa: BLE001 - the TPU compiler reports running out of memory as an exception
        plan.compile_s = time.perf_counter() - start
        plan.error = _compile_error(err)
        return None
    plan.compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    plan.argument_bytes = int(memory.argument_size_in_bytes)
    plan.output_bytes = int(memory.output_size_in_bytes)
    plan.alias_bytes = int(memory.alias_size_in_bytes)
    plan.temp_bytes = int(memory.temp_size_in_bytes)
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    plan.compiler_flops = float(costs.get("flops", 0.0))
    plan.compiler_bytes_accessed = float(costs.get("bytes accessed", 0.0))
    module = analyze(compiled.as_text(), dynamic_trip_count=dynamic_trips)
    plan.flops, plan.bytes_accessed, plan.hbm_bytes = module.total.flops, module.total.bytes, module.total.hbm_bytes
    return module


def roofline_s(flops: float, hbm_bytes: float, chip: Chip) -> float:
    return max(flops / chip.peak_flops, hbm_bytes / chip.hbm_bytes_per_s)


def _compile_error(err: Exception) -> str:
    text = str(err)
    used = re.search(r"Used ([0-9.]+[KMGT]?i?B?) of ([0-9.]+[KMGT]?i?B?) hbm", text)
    if used:
        return f"out of memory: used {used.group(1)} of {used.group(2)} HBM"
    first = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
    return first[:300]


def _batch_arg(shape: tuple[int, ...], dtype: Any, axes: tuple, mesh: Mesh, name: str) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=named_sharding(axes, shape, mesh, name))


@dataclasses.dataclass(frozen=True)
class ProgramInputs:
    """One program of the step: the jitted function `train` calls, abstract arguments with the
    placements `train` gives them, its static keyword arguments, and the mesh it is traced under."""

    fn: Callable
    args: tuple
    kwargs: dict
    mesh: Mesh | None

    def lower(self):
        with activate(self.mesh):
            return self.fn.lower(*self.args, **self.kwargs)


def step_inputs(cfg: TrainConfig, programs: StepPrograms, shapes: StepShapes, ids) -> dict[str, ProgramInputs]:
    """The rollout, log-prob and update programs of `programs` with abstract inputs of `shapes`."""
    mesh, inference = programs.mesh, programs.inference
    state = abstract_state(programs)
    params = _abstract(jax.eval_shape(inference.reshard, state.params), inference.shardings())
    decode = shapes.decode
    rollout = ProgramInputs(_generate_jit, abstract_generate_args(decode, params, ids, inference.mesh),
                            decode.statics(inference.config), inference.mesh)

    fn, rows = programs.logprobs(shapes.sequences, shapes.response_width)
    seq = (rows, shapes.sequence_length)
    logprobs = ProgramInputs(fn, (state.params, _batch_arg(seq, jnp.int32, ("batch", "length"), mesh, "logprob tokens"),
                                  _batch_arg(seq, jnp.bool_, ("batch", "length"), mesh, "logprob attention mask"),
                                  jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))),
                             {}, mesh)

    rows, length, width = shapes.update_rows, shapes.sequence_length, shapes.response_width
    fields = {"tokens": ((rows, length), jnp.int32), "attention_mask": ((rows, length), jnp.bool_),
              "loss_mask": ((rows, width), jnp.bool_), "advantages": ((rows,), jnp.float32),
              "old_logp": ((rows, width), jnp.float32), "ref_logp": ((rows, width), jnp.float32)}
    if not cfg.grpo.use_kl:
        fields.pop("ref_logp")
    if cfg.grpo.loss_scale == "verl":
        fields["token_weight"] = ((rows,), jnp.float32)
    batch = TrainBatch(**{name: _batch_arg(shape, dtype, getattr(BATCH_LOGICAL_AXES, name), mesh, f"update batch {name}")
                          for name, (shape, dtype) in fields.items()})
    update = ProgramInputs(programs.update, (state, batch), {}, mesh)
    return {"rollout": rollout, "logprobs": logprobs, "update": update}


def plan_step(cfg: TrainConfig, model_config: ModelConfig, tpu: Slice, devices: list[Any]) -> dict[str, Any]:
    """Compile `cfg`'s step programs (cfg: the effective TrainConfig) for `tpu` and report them."""
    chip = tpu.chip
    mesh = make_mesh(cfg.mesh, devices)
    config = tpu_model_config(cfg, model_config)
    check_context(cfg, config, placeholder_ids())
    programs = step_programs(cfg, config, mesh, hbm_bytes=chip.hbm_bytes)
    ids = placeholder_ids()
    shapes = StepShapes.of(cfg, ids, programs.inference.mesh)
    inputs = step_inputs(cfg, programs, shapes, ids)
    state = abstract_state(programs)
    state_bytes = per_device_bytes(state)
    param_bytes = per_device_bytes(state.params)
    ref_bytes = param_bytes if cfg.grpo.use_kl else 0
    calls = -(-cfg.batch.prompts_per_step // (cfg.rollout.chunk_prompts or cfg.batch.prompts_per_step))

    plans = {
        # the training state (and the reference params) stay in memory throughout the step
        "rollout": ProgramPlan("rollout", resident_bytes=state_bytes + ref_bytes, runs_per_step=calls),
        "logprobs": ProgramPlan("logprobs", resident_bytes=state_bytes - param_bytes + ref_bytes,
                                runs_per_step=2 if cfg.grpo.use_kl else 1),
        "update": ProgramPlan("update", resident_bytes=ref_bytes, runs_per_step=cfg.updates_per_step),
    }
    for name, plan in plans.items():
        module = _compile(plan, inputs[name].lower, dynamic_trips=shapes.decode.max_steps if name == "rollout" else 1.0)
        if name == "rollout":
            _decode_figures(plan, module, programs, shapes, inputs[name].args[0], chip)
    step_s = sum(p.estimated_s(chip) * p.runs_per_step for p in plans.values())
    return {
        "topology": tpu.accelerator_type,
        "topology_name": tpu.topology_name,
        "devices": len(devices),
        "chip": {"name": chip.name, "hbm_bytes": chip.hbm_bytes, "peak_flops": chip.peak_flops,
                 "hbm_bytes_per_s": chip.hbm_bytes_per_s},
        "mesh": mesh_description(mesh),
        "decode_mesh": mesh_description(programs.inference.mesh),
        "model": {"params": config.num_params(), "param_dtype": config.param_dtype, "dtype": config.dtype,
                  "remat": config.remat, "attention": type(config.attention).__name__},
        "shapes": {"rollout_rows": shapes.decode.rows * shapes.decode.n, "prompt_width": shapes.decode.width,
                   "response_width": shapes.response_width, "sequences": shapes.sequences,
                   "update_rows": shapes.update_rows, "micro_batch": programs.micro_batch},
        "state_bytes_per_chip": state_bytes + ref_bytes,
        "programs": {name: p.as_dict(chip) for name, p in plans.items()},
        "estimated_step_s": step_s,
        "fits": all(p.fits(chip) for p in plans.values()),
    }


def abstract_state(programs: StepPrograms) -> TrainState:
    config, mesh = programs.model_config, programs.mesh
    shardings = train_state_shardings(config, programs.optimizer, mesh)
    params = abstract_params(config)
    opt_state = jax.eval_shape(programs.optimizer.init, params)
    return TrainState(params=_abstract(params, shardings.params), opt_state=_abstract(opt_state, shardings.opt_state),
                      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings.step))


def _decode_figures(plan: ProgramPlan, module: Any, programs: StepPrograms, shapes: StepShapes, params: Any,
                    chip: Chip) -> None:
    """The decode loop's per-token figures against the bytes it cannot avoid: the weights and the KV cache."""
    inference, decode = programs.inference, shapes.decode
    weights = per_device_bytes(params)
    kv = _kv_cache_bytes(inference.config, inference.mesh, decode.rows * decode.n, decode.cache_len)
    plan.extra = {"decode_steps": decode.max_steps, "weight_bytes": weights, "kv_cache_bytes": kv}
    if module is None or not module.dynamic_loops:
        return
    loop = max(module.dynamic_loops, key=lambda item: item.per_iteration.bytes)
    step = loop.per_iteration
    plan.extra.update({
        "decode_loop_weight_gathers": loop.weight_gathers,
        "decode_loop_all_gathers": loop.gathers,
        "decode_step": {"flops": step.flops, "bytes_accessed": step.bytes, "hbm_bytes": step.hbm_bytes,
                        "hbm_bytes_per_weight_and_kv_byte": step.hbm_bytes / max(weights + kv, 1),
                        "bytes_accessed_per_weight_and_kv_byte": step.bytes / max(weights + kv, 1),
                        "estimated_s": roofline_s(step.flops, step.hbm_bytes, chip),
                        "collectives": collectives_summary(step)},
    })


def _kv_cache_bytes(config: ModelConfig, mesh: Mesh, rows: int, cache_len: int) -> int:
    shape = (config.num_layers, rows, config.num_kv_heads, config.head_dim, cache_len)
    k = jax.ShapeDtypeStruct(shape, jnp.dtype(config.dtype),
                             sharding=named_sharding(("layers", "batch", "kv_heads", "head_dim", "cache_length"), shape, mesh, "kv cache"))
    return 2 * per_device_bytes(k)


def failures(report: dict[str, Any]) -> list[str]:
    """One line per program that does not fit, naming its bytes, the chip and the knob."""
    chip = report["chip"]
    lines = []
    for name, p in report["programs"].items():
        if p["fits"]:
            continue
        what = p.get("error") or (f"peak {p['peak_bytes'] / 2**30:.2f} GiB per chip > {HEADROOM:.0%} of "
                                  f"{chip['hbm_bytes'] / 2**30:.2f} GiB")
        lines.append(f"{name} does not fit on {report['topology']} ({chip['name']}): {what}; lower it with {KNOBS[name]}")
    return lines


def _gib(x: float) -> str:
    return f"{x / 2**30:7.2f}"


def format_report(report: dict[str, Any]) -> str:
    chip = report["chip"]
    lines = [
        f"{report['topology']} ({report['topology_name']}): {report['devices']} x {chip['name']}, "
        f"{chip['hbm_bytes'] / 2**30:.1f} GiB HBM, {chip['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
        f"{chip['hbm_bytes_per_s'] / 1e12:.2f} TB/s per chip",
        f"mesh {report['mesh']}; decode copy {report['model']['dtype']} on {report['decode_mesh']}; "
        f"attention {report['model']['attention']}; shapes {report['shapes']}",
        "per chip, GiB:   argument     temp   output  resident     peak  of HBM    TFLOPs  HBM GB  all GB   est. s x runs  fits",
    ]
    for name, p in report["programs"].items():
        share = p["peak_bytes"] / chip["hbm_bytes"]
        lines.append(f"{name:<14} {_gib(p['argument_bytes'])}  {_gib(p['temp_bytes'])}  {_gib(p['output_bytes'] - p['alias_bytes'])}"
                     f"  {_gib(p['resident_bytes'])}  {_gib(p['peak_bytes'])}  {share:6.0%}  {p['flops'] / 1e12:8.1f}"
                     f"  {p['hbm_bytes'] / 1e9:6.0f}  {p['bytes_accessed'] / 1e9:6.0f}  {p['estimated_s']:7.3f} x {p['runs_per_step']:<3}  "
                     f"{'yes' if p['fits'] else 'NO'}{'  ' + p['error'] if p.get('error') else ''}")
    rollout = report["programs"]["rollout"]
    if "decode_step" in rollout:
        step = rollout["decode_step"]
        coll = ", ".join(f"{k} x{v['count']:g} ({v['bytes'] / 1e6:.1f} MB)" for k, v in step["collectives"].items()) or "none"
        lines.append(f"decode loop, per token: HBM {step['hbm_bytes'] / 1e9:.2f} GB = {step['hbm_bytes_per_weight_and_kv_byte']:.2f} x "
                     f"(weights {rollout['weight_bytes'] / 1e9:.2f} GB + KV cache {rollout['kv_cache_bytes'] / 1e9:.2f} GB); "
                     f"all memories {step['bytes_accessed'] / 1e9:.2f} GB; est. {step['estimated_s'] * 1e3:.2f} ms x "
                     f"{rollout['decode_steps']} steps at most; weight all-gathers {rollout['decode_loop_weight_gathers']}; "
                     f"collectives: {coll}")
    lines.append(f"estimated step (rollout + log-probs + updates, grading excluded): {report['estimated_step_s']:.1f} s")
    return "\n".join(lines)
