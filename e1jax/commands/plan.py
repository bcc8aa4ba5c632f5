"""`e1jax plan`: compile one training step of a recipe for a Cloud TPU slice, on this machine.

    python -m e1jax plan --config configs/e1_math_1.5b_1k_1k.yaml --topology v4-32 [key=value ...] [--json]

The trainer's own programs (rollout, log-prob pass, update) are compiled ahead of time by
libtpu's compiler for the slice's chips and the recipe's mesh, at the recipe's largest shapes.
Per chip: argument, temporary and output bytes, the buffers alive beside them (resident), the
peak against the chip's memory, FLOPs and bytes accessed, an estimated time, and the
collectives inside the decode loop. Exit 0 when every program fits with 10% headroom, else 1.
No TPU is needed; libtpu is (pip install -e ".[tpu]").
"""

from __future__ import annotations

import argparse
import json
import sys

from e1jax.errors import E1Error

# Hub ids of the recipes' models and the preset with their dimensions, for planning offline.
KNOWN_MODELS = {
    "agentica-org/deepscaler-1.5b-preview": "r1-distill-qwen-1.5b",
    "deepseek-ai/deepseek-r1-distill-qwen-1.5b": "r1-distill-qwen-1.5b",
    "salesforce/e1-math-1.5b": "r1-distill-qwen-1.5b",
    "deepseek-ai/deepseek-r1-distill-qwen-7b": "r1-distill-qwen-7b",
    "skywork/skywork-or1-math-7b": "r1-distill-qwen-7b",
    "salesforce/e1-math-7b": "r1-distill-qwen-7b",
    "deepseek-ai/deepseek-r1-distill-qwen-14b": "r1-distill-qwen-14b",
    "agentica-org/deepcoder-14b-preview": "r1-distill-qwen-14b",
    "salesforce/e1-code-14b": "r1-distill-qwen-14b",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("plan", help="compile a recipe's training step for a TPU slice (no TPU needed)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument("--topology", required=True, help="Cloud TPU accelerator type: v4-8 ... v4-4096, "
                        "v5litepod-1 ... v5litepod-256, v5p-8 ..., v6e-1 ...")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for train")
    parser.add_argument("--preset", default=None,
                        help="model dimensions from this preset instead of model.path's config.json "
                             "(default: the config.json, or the preset of a known Hub id when it cannot be read)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def model_config_for(path: str, preset: str | None):
    """(config, where it came from)."""
    from e1jax.models.config import PRESETS

    if preset is not None:
        if preset not in PRESETS:
            raise E1Error(f"unknown preset '{preset}'; presets: {', '.join(PRESETS)}")
        return PRESETS[preset], f"preset {preset}"
    from e1jax.models.hf import load_config

    try:
        return load_config(path), f"{path}/config.json"
    except E1Error as err:
        known = KNOWN_MODELS.get(path.lower())
        if known is None:
            raise E1Error(f"{err} (plan needs the model's config.json, or --preset NAME)") from err
        return PRESETS[known], f"preset {known} ({path} not reachable: {str(err).splitlines()[0][:120]})"


def run(args: argparse.Namespace) -> int:
    import os

    # Compiling for a slice needs libtpu's compiler, not a TPU runtime: stay off the local TPU
    # detection (slow and noisy on a host without one).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from e1jax.plan.tpu import parse_accelerator_type, topology_devices
    from e1jax.rl.config import load_train_config

    tpu = parse_accelerator_type(args.topology)
    cfg = load_train_config(args.config, args.overrides, require_model=False).effective()
    if not cfg.model.path and args.preset is None:
        raise E1Error("config key 'model.path' is required (or --preset NAME)")
    devices = topology_devices(tpu)
    model_config, source = model_config_for(cfg.model.path, args.preset)
    print(f"[plan] model from {source}; compiling for {tpu.accelerator_type} ...", file=sys.stderr, flush=True)

    from e1jax.plan.plan import failures, format_report, plan_step

    report = plan_step(cfg, model_config, tpu, devices)
    report["config"] = args.config
    report["model_source"] = source
    print(json.dumps(report) if args.json else format_report(report))
    problems = failures(report)
    for line in problems:
        print(f"e1jax plan: {line}", file=sys.stderr)
    return 1 if problems else 0
