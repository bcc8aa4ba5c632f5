"""`e1jax bench`: decode throughput vs transformers, the memory roofline, the engine on a long tail,
the budget sweep, the update step."""

from __future__ import annotations

import argparse
import json
import sys

from e1jax.dtypes import AUTO, DTYPES


def _models() -> tuple:
    """(TINY, SMALL), built when used: registering the command (every CLI call) imports no jax."""
    from e1jax.models.config import ModelConfig

    tiny = ModelConfig("qwen2", 4096, 128, 512, 4, 4, 2, 32, max_position_embeddings=4096)
    # Large enough that a decode step reads weights more than KV cache: where sharing the thinking pays.
    small = ModelConfig("qwen2", 32000, 512, 1408, 8, 8, 4, 64, max_position_embeddings=4096)
    return tiny, small


def __getattr__(name: str):  # the module's TINY and SMALL
    if name in ("TINY", "SMALL"):
        return _models()[("TINY", "SMALL").index(name)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="speed benchmarks, side by side with transformers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="tiny model only, short runs (smoke test)")
    parser.add_argument("--no-peer", action="store_true", help="skip the transformers (PyTorch) runs")
    parser.add_argument("--large", default="qwen2.5-0.5b", help="preset for the large decode case (a name of e1jax.models.config.PRESETS)")
    parser.add_argument("--dtype", choices=(AUTO,) + DTYPES, default=AUTO, help="auto: float32 on CPU, bfloat16 on accelerators")
    parser.add_argument("--large-batches", default="1,8")
    parser.add_argument("--tiny-batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--peak-flops", type=float, default=None, help="accelerator peak FLOP/s, for the update's model FLOP utilisation")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: decode,long_tail,sweep,update")
    parser.add_argument("--long-tail-requests", type=int, default=256,
                        help="requests of the long-tail case (engine vs lockstep, lengths median = longest / 4)")
    parser.add_argument("--long-tail-longest", type=int, default=1024)
    parser.add_argument("--long-tail-slots", type=int, default=32)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e1jax.errors import E1Error
    from e1jax.models.config import PRESETS

    TINY, SMALL = _models()  # noqa: N806
    if not args.quick and args.large not in PRESETS:
        raise E1Error(f"--large {args.large} is not one of {', '.join(PRESETS)}")
    from e1jax.bench.decode import decode_case, sweep_case
    from e1jax.bench.machine import machine_info, read_bandwidth
    from e1jax.dtypes import resolve_dtype

    def log(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    skip = set(filter(None, args.skip.split(",")))
    dtype = resolve_dtype(args.dtype)
    peer = not args.no_peer
    result: dict = {"machine": machine_info()}
    bandwidth = read_bandwidth(1 << 28 if args.quick else 1 << 30)
    result["machine"]["read_bandwidth_gb_s"] = bandwidth / 1e9
    log(f"read bandwidth {bandwidth / 1e9:.1f} GB/s")

    if "decode" not in skip:
        rows = []
        if not args.quick:
            large = PRESETS[args.large].replace(param_dtype=dtype, dtype=dtype)
            batches = [int(b) for b in args.large_batches.split(",")]
            rows += decode_case(f"{args.large}-shape", large, batches, 32, args.new_tokens, bandwidth, peer, log)
        tiny = TINY.replace(param_dtype=dtype, dtype=dtype)
        tiny_batch = 8 if args.quick else args.tiny_batch
        rows += decode_case("tiny", tiny, [tiny_batch], 32, 16 if args.quick else 128, bandwidth, peer, log)
        result["decode"] = rows

    if "long_tail" not in skip:
        from e1jax.bench.long_tail import long_tail_case

        tiny = TINY.replace(param_dtype=dtype, dtype=dtype)
        sizes = dict(requests=16, slots=4, longest=64) if args.quick else dict(
            requests=args.long_tail_requests, slots=args.long_tail_slots, longest=args.long_tail_longest)
        result["long_tail"] = {"model": "tiny", **long_tail_case(tiny, prompt_len=32, log=log, **sizes)}
        log(json.dumps(result["long_tail"]))

    if "sweep" not in skip:
        budgets = [8, 16, 24, 32] if args.quick else [64, 128, 192, 256]
        solution = 8 if args.quick else 64
        model = TINY if args.quick else SMALL
        result["sweep"] = sweep_case(model.replace(param_dtype=dtype, dtype=dtype), 8, 32, budgets, solution, log)
        result["sweep"]["model"] = "tiny" if args.quick else "small"
        result["sweep"]["params"] = model.num_params()
        log(json.dumps(result["sweep"]))

    if "update" not in skip:
        from e1jax.bench.update import bench_update

        name = "tiny" if args.quick else f"{args.large}-shape"
        config = (TINY if args.quick else PRESETS[args.large]).replace(param_dtype=dtype, dtype=dtype)
        log(f"update step {name} ...")
        result["update"] = {"model": name, **bench_update(config, batch_size=2 if args.quick else 8, seq_len=64 if args.quick else 512,
                                                          micro_batch=2, peak_flops=args.peak_flops)}
        log(json.dumps(result["update"]))

    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


def format_report(result: dict) -> str:
    lines = [f"machine: {json.dumps(result['machine'])}"]
    for row in result.get("decode", []):
        peer = row["transformers_tokens_per_s"]
        line = (f"decode {row['model']:<22} batch {row['batch']:>3}: e1jax {row['e1jax_tokens_per_s']:9.1f} tok/s"
                f" | transformers {peer:9.1f} tok/s | ratio {row['ratio']:.2f}" if peer else
                f"decode {row['model']:<22} batch {row['batch']:>3}: e1jax {row['e1jax_tokens_per_s']:9.1f} tok/s")
        if "matmuls_only_tokens_per_s" in row:
            line += f" | matmuls alone {row['matmuls_only_tokens_per_s']:.1f} tok/s"
        if "roofline_tokens_per_s" in row:
            line += f" | roofline {row['roofline_tokens_per_s']:.1f} tok/s ({100 * row['roofline_fraction']:.0f}%)"
        lines.append(line)
    if "long_tail" in result:
        t = result["long_tail"]
        lines.append(f"long tail ({t['requests']} requests, {t['slots']} slots, lengths median {t['median_length']:.0f} "
                     f"max {t['longest']}): engine {t['engine_tokens_per_s']:.1f} tok/s | lockstep "
                     f"{t['lockstep_tokens_per_s']:.1f} tok/s | ratio {t['ratio']:.2f}")
    if "sweep" in result:
        s = result["sweep"]
        lines.append(f"sweep {s['budgets']}: {s['sweep_s']:.2f}s vs separate {s['separate_s']:.2f}s (ratio {s['ratio']:.2f})")
    if "update" in result:
        lines.append(f"update: {json.dumps(result['update'])}")
    return "\n".join(lines)
