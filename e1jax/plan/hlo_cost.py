"""FLOPs, bytes accessed and collectives of a compiled (partitioned, per-device) HLO module,
with every while loop counted as many times as it runs.

XLA's own `cost_analysis()` counts a while loop's body once, so for e1jax's programs (a scan
over layers, a scan over micro-batches, the decode loop) it reports one layer of one
micro-batch. This reads the compiled module's text instead: a loop whose condition compares
its counter with a constant runs that many times; a loop whose condition depends on data
(the decode loop) runs `dynamic_trip_count` times, and its body is reported on its own
(`DynamicLoop`: the cost of one iteration, i.e. one decoded token). Per instruction:
dots and convolutions count 2 x output elements x contraction, other arithmetic one FLOP per
element; bytes are operands + output, where a fusion reads only the slices it takes of an
operand and a dynamic-update-slice writes only its update (as XLA's cost model does), and
asynchronous copies count once. `hbm_bytes` counts only the buffers in memory space 0 (HBM):
the TPU compiler stages some buffers in on-chip memories (layouts marked S(1), S(3), ...), whose
reads do not load HBM.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter

import numpy as np

from e1jax.brackets import matching_close

DTYPE_BYTES = {
    "pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
    "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "token": 0,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3": 1, "f8e3m4": 1,
    "f8e8m0fnu": 1, "f4e2m1fn": 0.5,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_NAME = re.compile(r"%([\w.\-]+)")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id", "replica-id",
         "copy-done", "slice-done", "all-gather-done", "all-reduce-done", "collective-permute-done", "async-done",
         "send-done", "recv-done", "opt-barrier", "domain", "add-dependency"}
_BITCAST_CALLS = ("ConcatBitcast", "AssumeGatherIndicesInBound")  # custom calls that move no data
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute", "ragged-all-to-all")
_NO_FLOPS = {"copy", "copy-start", "transpose", "reshape", "broadcast", "slice", "dynamic-slice", "dynamic-update-slice",
             "concatenate", "pad", "gather", "scatter", "iota", "reverse", "convert", "bitcast-convert", "custom-call",
             "select", "clamp", "sort", "rng", "rng-bit-generator", "rng-get-and-update-state", "infeed", "outfeed",
             "send", "recv", "fusion", "while", "conditional", "call", "reduce-precision", "get-dimension-size",
             "set-dimension-size", "exponential", "log", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "sine", "cosine",
             "tan", "power", "atan2", "erf", "exponential-minus-one", "log-plus-one"} | set(_COLLECTIVES)
_TRANSPARENT = {"bitcast", "copy", "convert", "reshape", "transpose", "dynamic-slice", "slice", "broadcast"}


def array_shapes(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims, _ in _ARRAY.findall(shape)]


def _arrays(shape: str) -> list[tuple[float, int]]:
    """(bytes, memory space) of every array in a shape."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        space = re.search(r"S\((\d+)\)", layout)
        size = DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        out.append((size, int(space.group(1)) if space else 0))
    return out


@dataclasses.dataclass
class Bytes:
    total: float = 0.0
    hbm: float = 0.0

    def __add__(self, other: "Bytes") -> "Bytes":
        return Bytes(self.total + other.total, self.hbm + other.hbm)

    def scaled(self, times: float) -> "Bytes":
        return Bytes(self.total * times, self.hbm * times)


def traffic(shape: str) -> Bytes:
    arrays = _arrays(shape)
    return Bytes(sum(b for b, _ in arrays), sum(b for b, space in arrays if space == 0))


def _in_space_of(shape: str, size: float) -> Bytes:
    """`size` bytes of the buffer `shape` (its first array's memory space)."""
    arrays = _arrays(shape)
    return Bytes(size, size if not arrays or arrays[0][1] == 0 else 0.0)


def shape_bytes(shape: str) -> float:
    return traffic(shape).total


def _elements(shape: str) -> int:
    return sum(math.prod(dims) for _, dims in array_shapes(shape))


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    args: str = ""  # the text between the opcode's parentheses (a constant's value, a parameter's index)
    is_root: bool = False

    def integer_arg(self) -> int | None:
        return int(self.args) if re.fullmatch(r"-?\d+", self.args.strip()) else None

    def called(self, key: str) -> list[str]:
        match = re.search(rf"\b{key}=(\{{[^}}]*\}}|%[\w.\-]+)", self.attrs)
        return _NAME.findall(match.group(1)) if match else []


@dataclasses.dataclass
class Computation:
    name: str
    instructions: dict[str, Instruction]
    root: str
    is_entry: bool = False

    def users(self, name: str) -> list[Instruction]:
        return [inst for inst in self.instructions.values() if name in inst.operands]


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesised group opening at text[start]."""
    close = matching_close(text, start, "()")
    if close < 0:
        raise ValueError(f"unbalanced parentheses in HLO line: {text[:200]}")
    return close + 1


def _parse_instruction(line: str) -> Instruction | None:
    body = line.strip()
    is_root = body.startswith("ROOT ")
    if is_root:
        body = body[5:]
    if not body.startswith("%") or " = " not in body:
        return None
    name, rest = body.split(" = ", 1)
    if rest.startswith("("):
        end = _balanced(rest, 0)
        shape, rest = rest[:end], rest[end:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    paren = rest.find("(")
    opcode = rest[:paren]
    end = _balanced(rest, paren)
    args = rest[paren + 1 : end - 1]
    return Instruction(name[1:], shape, opcode, _NAME.findall(args), rest[end:], args, is_root)


def parse_module(text: str) -> dict[str, Computation]:
    computations: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            header = re.match(r"(ENTRY\s+)?%([\w.\-]+)\s*\(", stripped)
            if header and stripped.endswith("{"):
                current = Computation(header.group(2), {}, "", is_entry=bool(header.group(1)))
            continue
        if stripped == "}":
            computations[current.name] = current
            current = None
            continue
        inst = _parse_instruction(line)
        if inst is not None:
            current.instructions[inst.name] = inst
            if inst.is_root:
                current.root = inst.name
    return computations


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0  # every memory space
    hbm_bytes: float = 0.0  # memory space 0
    collectives: Counter = dataclasses.field(default_factory=Counter)  # kind -> count
    collective_bytes: Counter = dataclasses.field(default_factory=Counter)  # kind -> bytes

    def set_bytes(self, amount: Bytes) -> None:
        self.bytes, self.hbm_bytes = amount.total, amount.hbm

    def add(self, other: "Cost", times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.bytes += times * other.bytes
        self.hbm_bytes += times * other.hbm_bytes
        for kind, count in other.collectives.items():
            self.collectives[kind] += times * count
        for kind, size in other.collective_bytes.items():
            self.collective_bytes[kind] += times * size


@dataclasses.dataclass
class DynamicLoop:
    """A while loop whose trip count depends on data: the cost of one iteration."""

    name: str
    per_iteration: Cost
    weight_gathers: int  # all-gathers of loop-invariant values (weights) per iteration
    gathers: int  # all all-gathers per iteration


@dataclasses.dataclass
class ModuleCost:
    total: Cost
    dynamic_loops: list[DynamicLoop]


class _Analyzer:
    def __init__(self, computations: dict[str, Computation], dynamic_trip_count: float):
        self.comps = computations
        self.dynamic_trip_count = dynamic_trip_count
        self.dynamic_loops: list[DynamicLoop] = []
        self._memo: dict[str, Cost] = {}

    # --------------------------------------------------------------- loops
    def trip_count(self, inst: Instruction, comp: Computation) -> int | None:
        """XLA's known trip count, else N when the condition is `counter < N` with the counter starting at 0."""
        known = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attrs)
        if known:
            return int(known.group(1))
        cond = self.comps[inst.called("condition")[0]]
        root = cond.instructions[cond.root]
        if root.opcode != "compare" or "direction=LT" not in root.attrs or len(root.operands) != 2:
            return None
        counter, bound = (cond.instructions.get(o) for o in root.operands)
        if counter is None or bound is None or counter.opcode != "get-tuple-element" or bound.opcode != "constant":
            return None
        limit = bound.integer_arg()
        if limit is None:
            return None
        index = int(re.search(r"index=(\d+)", counter.attrs).group(1))
        init = comp.instructions.get(inst.operands[0])
        if init is not None and init.opcode == "tuple" and index < len(init.operands):
            start = comp.instructions.get(init.operands[index])
            if start is not None and start.opcode == "constant" and start.integer_arg() != 0:
                return None
        return limit

    def invariant_indices(self, body: Computation) -> set[int]:
        """Tuple indices the loop body passes through unchanged."""
        root = body.instructions[body.root]
        params = [i for i in body.instructions.values() if i.opcode == "parameter"]
        if root.opcode != "tuple" or not params:
            return set()
        out = set()
        for index, operand in enumerate(root.operands):
            inst = body.instructions.get(operand)
            if (inst is not None and inst.opcode == "get-tuple-element" and inst.operands == [params[0].name]
                    and f"index={index}" in inst.attrs.replace(" ", "")):
                out.add(index)
        return out

    def _is_invariant(self, body: Computation, name: str, invariant: set[int]) -> bool:
        seen = set()
        while name not in seen:
            seen.add(name)
            inst = body.instructions.get(name)
            if inst is None:
                return False
            if inst.opcode == "get-tuple-element":
                source = body.instructions.get(inst.operands[0])
                if source is not None and source.opcode == "parameter":
                    return int(re.search(r"index=(\d+)", inst.attrs).group(1)) in invariant
                return False
            if inst.opcode == "fusion":
                big = [o for o in inst.operands if _elements(body.instructions[o].shape) > 1] if all(
                    o in body.instructions for o in inst.operands) else []
                if len(big) != 1:
                    return False
                name = big[0]
                continue
            if inst.opcode in _TRANSPARENT and inst.operands:
                name = inst.operands[0]
                continue
            return False
        return False

    def _gathers(self, comp_name: str, invariant_of: dict[str, set[int]], times: float, acc: list[float]) -> None:
        """acc[0] += weight gathers, acc[1] += all gathers, in comp_name and what it runs."""
        comp = self.comps[comp_name]
        for inst in comp.instructions.values():
            if inst.opcode in ("all-gather", "all-gather-start"):
                acc[1] += times
                if comp_name in invariant_of and inst.operands and self._is_invariant(comp, inst.operands[0], invariant_of[comp_name]):
                    acc[0] += times
            elif inst.opcode == "while":
                body = inst.called("body")[0]
                trips = self.trip_count(inst, comp) or self.dynamic_trip_count
                invariant_of[body] = self.invariant_indices(self.comps[body])
                self._gathers(body, invariant_of, times * trips, acc)
            else:
                for key in ("calls", "to_apply", "branch_computations", "true_computation", "false_computation"):
                    for callee in inst.called(key):
                        if callee in self.comps and key != "to_apply":
                            self._gathers(callee, invariant_of, times, acc)

    # ---------------------------------------------------------------- cost
    def computation(self, name: str) -> Cost:
        if name in self._memo:
            return self._memo[name]
        comp = self.comps[name]
        cost = Cost()
        for inst in comp.instructions.values():
            cost.add(self.instruction(inst, comp))
        self._memo[name] = cost
        return cost

    def instruction(self, inst: Instruction, comp: Computation) -> Cost:
        op = inst.opcode
        cost = Cost()
        if op in _FREE:
            return cost
        if op == "while":
            body, cond = inst.called("body")[0], inst.called("condition")[0]
            trips = self.trip_count(inst, comp)
            one = Cost()
            one.add(self.computation(body))
            one.add(self.computation(cond))
            if trips is None:
                acc = [0.0, 0.0]
                body_comp = self.comps[body]
                self._gathers(body, {body: self.invariant_indices(body_comp)}, 1.0, acc)
                self.dynamic_loops.append(DynamicLoop(inst.name, one, int(acc[0]), int(acc[1])))
                trips = self.dynamic_trip_count
            cost.add(one, trips)
            return cost
        if op == "conditional":
            branches = inst.called("branch_computations") or inst.called("true_computation") + inst.called("false_computation")
            costs = [self.computation(b) for b in branches]
            return max(costs, key=lambda c: (c.bytes, c.flops)) if costs else cost
        if op in ("call", "async-start"):
            for callee in inst.called("calls") or inst.called("to_apply"):
                cost.add(self.computation(callee))
            return cost
        operands = [traffic(comp.instructions[o].shape) if o in comp.instructions else Bytes() for o in inst.operands]
        read = sum(operands, Bytes())
        out = traffic(inst.shape)
        kind = next((c for c in _COLLECTIVES if op == c or op == f"{c}-start"), None)
        if kind is not None:
            cost.collectives[kind] += 1
            cost.collective_bytes[kind] += out.total if kind == "all-gather" else read.total
            cost.set_bytes(read + out)
            return cost
        if op == "fusion":
            fused = self.comps[inst.called("calls")[0]]
            cost.flops = self._flops_of(fused)
            cost.set_bytes(self._fusion_bytes(inst, comp, fused))
            return cost
        if op == "custom-call" and any(f'custom_call_target="{t}"' in inst.attrs for t in _BITCAST_CALLS):
            return cost
        cost.flops = self._flops(inst, comp)
        if op in ("dynamic-slice", "slice"):
            moved = out.total
            cost.set_bytes(_in_space_of(comp.instructions[inst.operands[0]].shape, moved) + out)
        elif op == "dynamic-update-slice":
            update = operands[1] if len(operands) > 1 else out
            cost.set_bytes(update + _in_space_of(inst.shape, update.total))
        elif op in ("copy-start", "slice-start"):  # shapes: (destination, source, context) / ((sources), destination, context)
            parts = _tuple_parts(inst.shape)
            dest = parts[0] if op == "copy-start" else parts[1]
            moved = traffic(dest)
            cost.set_bytes(moved + _in_space_of(comp.instructions[inst.operands[0]].shape, moved.total))
        else:
            cost.set_bytes(read + out)
        return cost

    def _flops_of(self, comp: Computation) -> float:
        total = 0.0
        for inst in comp.instructions.values():
            if inst.opcode == "fusion":
                total += self._flops_of(self.comps[inst.called("calls")[0]])
            else:
                total += self._flops(inst, comp)
        return total

    def _flops(self, inst: Instruction, comp: Computation) -> float:
        op = inst.opcode
        out = _elements(inst.shape)
        if op == "dot":
            lhs = comp.instructions.get(inst.operands[0])
            dims = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inst.attrs)
            if lhs is None or dims is None:
                return 2.0 * out
            lhs_dims = array_shapes(lhs.shape)[0][1]
            contraction = math.prod(lhs_dims[int(d)] for d in dims.group(1).split(",") if d)
            return 2.0 * out * contraction
        if op == "convolution":
            return _convolution_flops(inst, comp)
        if op in ("reduce", "reduce-window"):
            return float(sum(_elements(comp.instructions[o].shape) for o in inst.operands[: max(1, len(inst.operands) // 2)]
                             if o in comp.instructions))
        if op in _NO_FLOPS or op in _FREE:
            return 0.0
        return float(out)

    def _fusion_bytes(self, inst: Instruction, comp: Computation, fused: Computation) -> Bytes:
        params = {p.integer_arg(): p for p in fused.instructions.values() if p.opcode == "parameter"}
        root = fused.instructions[fused.root]
        roots = [fused.instructions[o] for o in root.operands] if root.opcode == "tuple" else [root]
        in_place = {r.operands[0] for r in roots if r.opcode == "dynamic-update-slice"}
        total = Bytes()
        for index, operand in enumerate(inst.operands):
            if operand not in comp.instructions:
                continue
            shape = comp.instructions[operand].shape
            size = shape_bytes(shape)
            param = params.get(index)
            if param is not None:
                size = self._read_bytes(fused, param.name, size, in_place)
            total = total + _in_space_of(shape, size)
        outputs = _tuple_parts(inst.shape) if root.opcode == "tuple" else [inst.shape]
        for r, shape in zip(roots, outputs):
            written = shape_bytes(fused.instructions[r.operands[1]].shape) if r.opcode == "dynamic-update-slice" else shape_bytes(shape)
            total = total + _in_space_of(shape, written)
        return total

    def _read_bytes(self, fused: Computation, name: str, full: float, in_place: set[str]) -> float:
        """Bytes a fusion reads of parameter `name`: the slices it takes when it only slices it."""
        if name in in_place:
            return 0.0
        root = fused.instructions[fused.root]
        if name == fused.root or (root.opcode == "tuple" and name in root.operands):
            return full  # handed on whole to the fusion's consumer
        users = fused.users(name)
        if not users:
            return 0.0
        taken = 0.0
        for user in users:
            if user.opcode in ("dynamic-slice", "slice", "gather") and user.operands[0] == name:
                taken += shape_bytes(user.shape)
            elif user.opcode == "bitcast":
                taken += self._read_bytes(fused, user.name, full, in_place)
            elif user.opcode == "fusion":  # a nested fusion: what it reads of that operand
                nested = self.comps[user.called("calls")[0]]
                params = {p.integer_arg(): p.name for p in nested.instructions.values() if p.opcode == "parameter"}
                for position, operand in enumerate(user.operands):
                    if operand == name and position in params:
                        taken += self._read_bytes(nested, params[position], full, set())
            elif user.opcode == "dynamic-update-slice" and user.operands[0] == name and user.name in in_place:
                continue
            else:
                return full
        return min(taken, full)


def _tuple_parts(shape: str) -> list[str]:
    """The top-level elements of a tuple shape "(a, (b, c), d)" (the shape itself if not a tuple)."""
    shape = shape.strip()
    if not shape.startswith("("):
        return [shape]
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(shape):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if (ch == "," and depth == 1) or (depth == 0 and ch == ")"):
            parts.append(re.sub(r"/\*.*?\*/", "", shape[start:i]).strip())
            start = i + 1
    return [p for p in parts if p]


def _window(attrs: str, rank: int) -> dict[str, list]:
    spec = re.search(r"window=\{([^}]*)\}", attrs)
    fields = dict(item.split("=", 1) for item in spec.group(1).split()) if spec else {}

    def ints(key: str, default: int) -> list[int]:
        return [int(x) for x in fields[key].split("x")] if key in fields else [default] * rank

    pads = [tuple(int(x) for x in p.split("_")) for p in fields["pad"].split("x")] if "pad" in fields else [(0, 0)] * rank
    return {"size": ints("size", 1), "stride": ints("stride", 1), "pad": pads,
            "lhs_dilate": ints("lhs_dilate", 1), "rhs_dilate": ints("rhs_dilate", 1)}


def _taps(out_size: int, in_size: int, size: int, stride: int, pad_lo: int, lhs_dilate: int, rhs_dilate: int) -> int:
    """Window taps that land on real (not padded, not dilation-hole) input elements, summed over
    the output positions of one spatial dimension."""
    o = np.arange(out_size)[:, None]
    w = np.arange(size)[None, :]
    pos = o * stride - pad_lo + w * rhs_dilate
    valid = (pos >= 0) & (pos % lhs_dilate == 0) & (pos // lhs_dilate < in_size)
    return int(valid.sum())


def _convolution_flops(inst: Instruction, comp: Computation) -> float:
    """2 x (output batch x features) x input features per group x the real window taps."""
    lhs, rhs = (comp.instructions.get(o) for o in inst.operands[:2])
    labels = re.search(r"dim_labels=([^_]+)_([^-]+)->(\S+?)(,|$)", inst.attrs)
    if lhs is None or rhs is None or labels is None:
        return 2.0 * _elements(inst.shape)
    lhs_labels, rhs_labels, out_labels = labels.group(1), labels.group(2), labels.group(3)
    lhs_dims, rhs_dims = array_shapes(lhs.shape)[0][1], array_shapes(rhs.shape)[0][1]
    out_dims = array_shapes(inst.shape)[0][1]
    spatial = sorted(c for c in out_labels if c.isdigit())
    window = _window(inst.attrs, len(spatial))
    taps = 1
    non_spatial = math.prod(d for c, d in zip(out_labels, out_dims) if not c.isdigit())
    for k, c in enumerate(spatial):
        taps *= _taps(out_dims[out_labels.index(c)], lhs_dims[lhs_labels.index(c)], window["size"][k],
                      window["stride"][k], window["pad"][k][0], window["lhs_dilate"][k], window["rhs_dilate"][k])
    return 2.0 * non_spatial * taps * rhs_dims[rhs_labels.index("i")]


def analyze(text: str, dynamic_trip_count: float = 1.0) -> ModuleCost:
    """The per-device cost of the compiled module `text` (`compiled.as_text()`)."""
    computations = parse_module(text)
    entry = next((c for c in computations.values() if c.is_entry), None)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    analyzer = _Analyzer(computations, dynamic_trip_count)
    return ModuleCost(total=analyzer.computation(entry.name), dynamic_loops=analyzer.dynamic_loops)


def collectives_summary(cost: Cost) -> dict[str, dict[str, float]]:
    return {kind: {"count": float(cost.collectives[kind]), "bytes": float(cost.collective_bytes[kind])}
            for kind in sorted(cost.collectives)}

