"""The GRPO run configuration: frozen nested dataclasses, loaded from YAML plus key=value overrides.

    cfg = load_train_config("configs/e1_math_1.5b_1k_1k.yaml", ["run.steps=10"])

Unknown keys and ill-typed values are refused by `e1jax.config.load_config`
(naming the key); the cross-field checks below run before anything starts.
Defaults are the E1-Math-1.5B recipe (the original's scripts/e1-math/e1_math_1.5b_1k_1k.sh).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from e1jax.config import load_config
from e1jax.dtypes import check_dtype
from e1jax.errors import E1Error
from e1jax.mesh_spec import DEFAULT_MESH
from e1jax.task import RewardSpec


@dataclasses.dataclass(frozen=True)
class ModelSection:
    path: str = ""  # Hugging Face directory or Hub id: the initial policy (and the KL reference)
    param_dtype: str = "float32"  # e1jax.dtypes.DTYPES
    dtype: str = "auto"  # compute; auto: float32 on CPU, else bfloat16
    remat: Literal["none", "full", "dots"] = "full"


@dataclasses.dataclass(frozen=True)
class DataSection:
    train_files: tuple[str, ...] = ()  # dataset names or files (see e1jax.data.registry.resolve_dataset)
    max_prompt_len: int = 1024  # longer prompts are dropped
    seed: int = 0  # shuffle seed of the prompt stream
    prompt_key: str = "problem"  # record field holding the problem text
    chat_template: bool = True
    # the E1 instruction ("Let's think step by step ... \boxed{}") after the problem:
    # auto: math problems get it, code problems do not; always; never
    instruction: Literal["auto", "always", "never"] = "auto"


@dataclasses.dataclass(frozen=True)
class RolloutSection:
    n: int = 8  # samples per prompt (the GRPO group)
    think_budget: int = 1024
    solution_budget: int = 1024
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    eos_in_thinking: Literal["stop", "append_close"] = "stop"
    chunk_prompts: int = 0  # generate this many prompts (x n samples) per sampler call; 0: all at once
    # ways the decode copy of the weights is split over a tensor axis; 0: replicated when a
    # replica takes at most a quarter of a chip's memory, else the fewest ways that do
    tensor_parallel: int = 0


@dataclasses.dataclass(frozen=True)
class BatchSection:
    prompts_per_step: int = 128  # rollout batch, in prompts
    mini_batch: int = 64  # prompts per optimizer update (prompts_per_step / mini_batch updates per step)
    micro_batch: int = 0  # sequences per forward/backward pass; 0: the whole mini-batch at once


LOSS_SCALES = ("token_mean", "verl")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The GRPO objective (e1jax.rl.grpo.grpo_loss)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.001  # 0 -> no reference policy kept at all
    kl_clamp: float = 10.0
    entropy_coef: float = 0.001
    temperature: float = 0.6  # rollout temperature; trainer logits are divided by it
    adv_eps: float = 1e-6
    # The original trains on the forced </think> as if the model had sampled it.
    train_forced_tokens: bool = False
    # The original's vendored verl computes the clipped PPO term, then averages the unclipped one.
    unclipped_objective: bool = False
    # The original trains an EOS it never sampled after every solution cut at its budget
    # (responses right-padded with pad = EOS, and the loss mask takes the first pad).
    phantom_eos: bool = False
    # token_mean: every trained token of a mini-batch weighs 1 / its token count. verl: the
    # original's dynamic micro-batches (each rank's rows cut into balanced micro-batches of
    # at most verl_max_token_len tokens), each back-propagating its own token mean, summed,
    # averaged over verl_world_size ranks (e1jax.rl.verl_scale).
    loss_scale: Literal["token_mean", "verl"] = "token_mean"
    verl_world_size: int = 8  # the original's 8 GPUs
    verl_max_token_len: int = 32768  # its ppo_max_token_len_per_gpu

    def __post_init__(self):
        if self.clip_low < 0 or self.clip_high < 0:
            raise E1Error(f"clip_low/clip_high must be >= 0, got {self.clip_low}/{self.clip_high}")
        if self.temperature <= 0:
            raise E1Error(f"GRPO temperature must be > 0 (it divides the logits), got {self.temperature}")
        if self.kl_coef < 0 or self.kl_clamp <= 0:
            raise E1Error(f"kl_coef must be >= 0 and kl_clamp > 0, got {self.kl_coef}/{self.kl_clamp}")
        if self.loss_scale not in LOSS_SCALES:
            raise E1Error(f"grpo.loss_scale must be one of {', '.join(LOSS_SCALES)}, got {self.loss_scale!r}")
        if self.verl_world_size < 1 or self.verl_max_token_len < 1:
            raise E1Error(f"grpo.verl_world_size and grpo.verl_max_token_len must be positive, "
                          f"got {self.verl_world_size}/{self.verl_max_token_len}")

    @property
    def use_kl(self) -> bool:
        return self.kl_coef > 0


SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer (e1jax.rl.update.make_optimizer)."""

    learning_rate: float = 1e-6
    schedule: str = "constant"  # constant | cosine | linear (after warmup; cosine/linear decay to 0 at total_steps)
    warmup_steps: int = 0
    total_steps: int = 200
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; <= 0 disables
    opt_state_dtype: str = "float32"  # Adam moments, whatever the params' dtype

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise E1Error(f"schedule '{self.schedule}' is not one of {', '.join(SCHEDULES)}")
        check_dtype(self.opt_state_dtype, "opt_state_dtype")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise E1Error(f"warmup_steps must be >= 0 and total_steps >= 1, got {self.warmup_steps}/{self.total_steps}")


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    dir: str = ""  # default: <run.out_dir>/checkpoints
    every: int = 20  # save every k steps (and after the last step); 0: only at the end
    keep: int = 3  # keep the last N checkpoints
    async_save: bool = True
    resume: bool = True  # continue from the latest complete checkpoint in `dir`


@dataclasses.dataclass(frozen=True)
class ValidationSection:
    """Periodic `e1jax eval` (one-pass budget sweep) of the current policy: val/<set>/t<budget>/<metric>."""

    datasets: tuple[str, ...] = ()  # empty: no validation
    every: int = 0  # steps; 0: never
    think_budgets: tuple[int, ...] = (1024,)
    solution_budget: int = 1024
    n: int = 1  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_problems: int = 0  # per dataset, the first ones within data.max_prompt_len; 0: all
    batch_size: int = 0  # problems per sampler call; 0: rollout.chunk_prompts (all of a set when that is 0)
    # eval: e1jax eval's graders (math or code by each problem's ability); reward: the run's reward.kind
    grader: Literal["eval", "reward"] = "eval"
    before_train: bool = True  # also validate the initial policy (step 0), as the original's val_before_train


@dataclasses.dataclass(frozen=True)
class RunSection:
    steps: int = 200
    out_dir: str = "runs/e1"
    seed: int = 0  # sampling seeds are derived from (seed, step)
    log_every: int = 1  # console line every k steps (metrics files get every step)
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on the console
    validation: ValidationSection = ValidationSection()


@dataclasses.dataclass(frozen=True)
class CompatSection:
    # Train exactly as the original (docs/faithfulness.md): the unclipped objective, the forced
    # </think> and the phantom EOS trained on, verl's loss scale, the original's math grader,
    # a sample that emits EOS while thinking stops there (reward 0, nothing after it trained).
    original_compat: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    rollout: RolloutSection = RolloutSection()
    grpo: GRPOConfig = GRPOConfig()  # temperature: always the rollout temperature (see effective())
    optim: OptimConfig = OptimConfig()  # total_steps: derived from run.steps (see effective())
    batch: BatchSection = BatchSection()
    mesh: str = DEFAULT_MESH  # e.g. "fsdp=-1", "data=2,fsdp=4", "fsdp=4,tensor=2"
    checkpoint: CheckpointSection = CheckpointSection()
    run: RunSection = RunSection()
    reward: RewardSpec = RewardSpec()
    compat: CompatSection = CompatSection()

    def __post_init__(self):
        check_train_config(self)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.run.out_dir) / "checkpoints"

    @property
    def updates_per_step(self) -> int:
        return self.batch.prompts_per_step // self.batch.mini_batch

    def effective(self) -> TrainConfig:
        """The config actually run: with compat.original_compat, each of the original's
        switches set its way; the GRPO temperature follows the rollout temperature; the
        optimizer's schedule length is run.steps x updates per step (optimizer steps)."""
        grpo = dataclasses.replace(self.grpo, temperature=self.rollout.temperature)
        optim = dataclasses.replace(self.optim, total_steps=self.run.steps * self.updates_per_step)
        rollout, reward = self.rollout, self.reward
        if self.compat.original_compat:
            grpo = dataclasses.replace(grpo, train_forced_tokens=True, unclipped_objective=True, phantom_eos=True,
                                       loss_scale="verl")
            rollout = dataclasses.replace(rollout, eos_in_thinking="stop")
            reward = dataclasses.replace(reward, grader="original")
        return dataclasses.replace(self, grpo=grpo, rollout=rollout, optim=optim, reward=reward)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise E1Error(message)


def check_train_config(cfg: TrainConfig) -> None:
    b, r, v = cfg.batch, cfg.rollout, cfg.run.validation
    check_dtype(cfg.model.param_dtype, "model.param_dtype")
    check_dtype(cfg.model.dtype, "model.dtype", allow_auto=True)
    _require(b.prompts_per_step > 0, f"batch.prompts_per_step must be positive, got {b.prompts_per_step}")
    _require(b.mini_batch > 0 and b.prompts_per_step % b.mini_batch == 0,
             f"batch.mini_batch ({b.mini_batch}) must divide batch.prompts_per_step ({b.prompts_per_step})")
    rows = b.mini_batch * r.n
    _require(b.micro_batch >= 0 and (b.micro_batch == 0 or rows % b.micro_batch == 0),
             f"batch.micro_batch ({b.micro_batch}) must divide the mini-batch's {rows} sequences "
             f"(batch.mini_batch {b.mini_batch} x rollout.n {r.n})")
    _require(r.n >= 2, f"rollout.n must be at least 2 (GRPO compares samples of a prompt), got {r.n}")
    verl_scale = cfg.grpo.loss_scale == "verl" or cfg.compat.original_compat
    _require(not verl_scale or rows % cfg.grpo.verl_world_size == 0,
             f"grpo.verl_world_size ({cfg.grpo.verl_world_size}) must divide the mini-batch's {rows} sequences "
             "under grpo.loss_scale=verl (or compat.original_compat)")
    _require(r.think_budget > 0 and r.solution_budget > 0,
             f"rollout budgets must be positive, got think_budget={r.think_budget} solution_budget={r.solution_budget}")
    _require(r.temperature > 0, f"rollout.temperature must be > 0 for training, got {r.temperature}")
    _require(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    _require(r.top_k >= 0, f"rollout.top_k must be >= 0, got {r.top_k}")
    _require(r.chunk_prompts >= 0, f"rollout.chunk_prompts must be >= 0, got {r.chunk_prompts}")
    _require(r.tensor_parallel >= 0, f"rollout.tensor_parallel must be >= 0, got {r.tensor_parallel}")
    _require(cfg.data.max_prompt_len > 0, f"data.max_prompt_len must be positive, got {cfg.data.max_prompt_len}")
    _require(cfg.run.steps > 0, f"run.steps must be positive, got {cfg.run.steps}")
    _require(cfg.run.log_every > 0, f"run.log_every must be positive, got {cfg.run.log_every}")
    _require(cfg.checkpoint.every >= 0, f"checkpoint.every must be >= 0, got {cfg.checkpoint.every}")
    _require(cfg.checkpoint.keep >= 1, f"checkpoint.keep must be at least 1, got {cfg.checkpoint.keep}")
    _require(v.every >= 0, f"run.validation.every must be >= 0, got {v.every}")
    _require(all(t > 0 for t in v.think_budgets) and v.solution_budget > 0 and v.n >= 1,
             "run.validation budgets and n must be positive")
    _require(not (v.datasets and v.every) or bool(v.think_budgets), "run.validation.think_budgets is empty")
    _require(v.batch_size >= 0, f"run.validation.batch_size must be >= 0, got {v.batch_size}")
    _require(v.temperature >= 0 and 0 < v.top_p <= 1,
             f"run.validation needs temperature >= 0 and top_p in (0, 1], got {v.temperature} and {v.top_p}")
    _require(v.max_problems >= 0, f"run.validation.max_problems must be >= 0, got {v.max_problems}")


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      *, require_model: bool = True) -> TrainConfig:
    cfg = load_config(TrainConfig, path, overrides or [])
    if require_model and not cfg.model.path:
        raise E1Error("config key 'model.path' is required (a Hugging Face model directory or Hub id)")
    if require_model and not cfg.data.train_files:
        raise E1Error("config key 'data.train_files' is required (dataset names or files)")
    return cfg
