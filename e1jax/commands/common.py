"""Argument helpers shared by commands: the model, its mesh, the prompt and the reward."""

from __future__ import annotations

import argparse

from e1jax.dtypes import AUTO, DTYPES
from e1jax.errors import E1Error
from e1jax.mesh_spec import DEFAULT_MESH
from e1jax.task import BUILTIN_REWARDS, CODE_TESTS, INSTRUCTION_RULES, MATH_GRADERS, PromptSpec, RewardSpec


def add_model_args(parser: argparse.ArgumentParser, mesh: bool = True, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help="Hugging Face model directory or Hub id")
    parser.add_argument("--dtype", choices=(AUTO,) + DTYPES, default=AUTO,
                        help="parameter and compute dtype (auto: float32 on CPU, bfloat16 on accelerators)")
    if mesh:
        add_mesh_arg(parser)


def add_mesh_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh", default=DEFAULT_MESH,
                        help=f"device mesh over all devices, e.g. data=2,tensor=4 (default: {DEFAULT_MESH})")


def add_prompt_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-chat-template", action="store_true", help="do not apply the chat template")
    parser.add_argument("--instruction", choices=INSTRUCTION_RULES, default="auto",
                        help="the E1 instruction after the problem (auto: math problems get it, code problems do not)")


def prompt_spec(args: argparse.Namespace) -> PromptSpec:
    return PromptSpec(chat_template=not args.no_chat_template, instruction=args.instruction)


def add_reward_args(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """--reward, --grade-workers, --grade-timeout, --grader, --code-tests; `aliases`: extra names of the
    first three, in order."""
    names = dict(zip(("reward", "workers", "timeout"), aliases))
    parser.add_argument("--reward", *(("--" + names["reward"],) if "reward" in names else ()), dest="reward",
                        default="auto", metavar="KIND",
                        help=f"grader: {', '.join(BUILTIN_REWARDS)} (auto: math or code by each record's ability) "
                        "or a python callable module:function")
    parser.add_argument("--grade-workers", *(("--" + names["workers"],) if "workers" in names else ()),
                        dest="grade_workers", type=int, default=0, help="parallel graders (default: CPU count)")
    parser.add_argument("--grade-timeout", *(("--" + names["timeout"],) if "timeout" in names else ()),
                        dest="grade_timeout", type=float, default=0.0,
                        help="seconds per math answer / per code test (default: 5, original grader 30 / by --code-tests)")
    parser.add_argument("--grader", choices=MATH_GRADERS, default="e1jax",
                        help="math rules: e1jax's (default) or the original E1 grader's, to compare with the paper")
    parser.add_argument("--code-tests", choices=CODE_TESTS, default="original",
                        help="code tests run: the original's per data_source (default: the 15 longest inputs at "
                        "12 s each, livecodebench all at 6 s) or all at 6 s each")


def reward_spec(args: argparse.Namespace, **extra) -> RewardSpec:
    return RewardSpec(kind=args.reward, workers=args.grade_workers, timeout_s=args.grade_timeout,
                      grader=args.grader, code_tests=args.code_tests, **extra)


def parse_ids(text: str, flag: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise E1Error(f"{flag} must be comma-separated integers, got '{text}'") from err
    if not ids:
        raise E1Error(f"{flag} is empty")
    return ids


def load_model_from_args(args: argparse.Namespace, mesh=None):
    """(config, params) for --model/--dtype."""
    from e1jax.dtypes import resolve_dtype
    from e1jax.models.hf import load_model

    dtype = resolve_dtype(args.dtype)
    return load_model(args.model, mesh=mesh, param_dtype=dtype, dtype=dtype)


def load_for_inference(args: argparse.Namespace):
    """(config, params, mesh) to sample with: --model loaded on --mesh, then in the sampler's
    layout (`e1jax.sampling.inference`: its own copy, mesh and compute dtype)."""
    from e1jax.sampling.inference import inference_layout
    from e1jax.sharding import make_mesh

    mesh = make_mesh(args.mesh)
    config, params = load_model_from_args(args, mesh=mesh)
    layout = inference_layout(config, mesh)
    return layout.config, layout(params), layout.mesh
