"""The continuous-batching engine: a fixed number of decode slots over a paged KV cache, with
E1's per-request thinking and solution budgets.

    engine = Engine(config, params, ids, EngineConfig(slots=32, kv_tokens=65536), max_response=2049)
    for request in requests:
        engine.submit(request)
    for done in engine.completions():  # as they finish
        ...

Requests wait in submission order and enter free slots between runs of decode steps: the
prompt (all but its last token) is prefilled into fresh pages in chunks, or, for another
sample of a prompt prefilled in the same admission, its pages are copied; the last prompt
token is the slot's first decode input, as in the lockstep sampler. Pages are taken from a
free list as slots grow (the pool is `EngineConfig.kv_tokens` tokens, not slots x the longest
request); when it runs dry the youngest running request gives its pages back and starts again
later (its samples do not change: randomness is keyed by sample id and response index).
Attention reads only the pages of the table it is given, cut to the pages the longest live
slot holds in this run of steps.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from e1jax.engine import slots as programs
from e1jax.engine.model import DecodeWeights
from e1jax.engine.paged import TRASH_PAGE, PagedCache, RaggedReader
from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.sampling import loop, prepare
from e1jax.sampling.ops import SamplingParams


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    slots: int = 32  # decode slots (requests decoded at once)
    page_size: int = 16  # tokens per KV page
    kv_tokens: int = 0  # the KV pool in tokens; 0: room for every slot's longest request
    steps_per_call: int = 16  # decode steps between admissions
    prefill_chunk: int = 512  # prompt tokens per prefill pass

    def __post_init__(self) -> None:
        for name in ("slots", "page_size", "steps_per_call", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise E1Error(f"engine {name} must be positive, got {getattr(self, name)}")
        if self.kv_tokens < 0:
            raise E1Error(f"engine kv_tokens must be >= 0, got {self.kv_tokens}")


@dataclasses.dataclass(frozen=True)
class Request:
    """One sample: a prompt and either elastic budgets or (think_budget None) a plain length."""

    prompt: tuple[int, ...]
    think_budget: int | None = 1024
    solution_budget: int = 1024  # plain: max new tokens
    sample_id: int = 0  # its random stream
    tag: Any = None  # the caller's handle, returned with the completion

    @property
    def plain(self) -> bool:
        return self.think_budget is None


@dataclasses.dataclass(frozen=True)
class Completion:
    request: Request
    tokens: np.ndarray  # (length,) response tokens
    logprobs: np.ndarray  # (length,)
    forced: np.ndarray  # (length,) bool
    truncated: bool
    finish: int  # e1jax.sampling.loop finish code


def response_width(requests: Iterable[Request], ids: prepare.SpecialIds, eos_in_thinking: str) -> int:
    """The most tokens any of `requests` may write."""
    widths = [prepare.generation_bucket(_steps(r, ids, eos_in_thinking)) for r in requests]
    if not widths:
        raise E1Error("no requests")
    return max(widths)


def _steps(request: Request, ids: prepare.SpecialIds, eos_in_thinking: str) -> int:
    from e1jax.sampling.generate import decode_steps

    return decode_steps(np.array([request.think_budget or 1]), np.array([request.solution_budget]), ids,
                        request.plain, eos_in_thinking)


@dataclasses.dataclass
class _Running:
    request: Request
    pages: list[int]
    admitted: int  # admission order, for eviction


class Engine:
    def __init__(self, config: ModelConfig, params: Any, ids: prepare.SpecialIds, engine: EngineConfig = EngineConfig(),
                 *, max_response: int, max_prompt: int, sampling: SamplingParams = SamplingParams(), seed: int = 0,
                 eos_in_thinking: prepare.EosInThinking = "stop", progress: bool = False) -> None:
        self.config, self.ids, self.engine = config, ids, engine
        weights = params if isinstance(params, DecodeWeights) else DecodeWeights.of(config, params)
        # one device holds the engine (the weights gathered there when they were spread over a mesh)
        self.device = jax.local_devices()[0]
        self.weights = jax.device_put(weights, self.device)
        self.width, self.max_prompt = max_response, max_prompt
        self.seed, self.eos_forces_close = seed, eos_in_thinking == "append_close"
        self.eos_in_thinking = eos_in_thinking
        self.settings = prepare.loop_settings(sampling, ids, max_response + 1)
        page = engine.page_size
        self.pages_per_slot = math.ceil((max_prompt + max_response + 1) / page)
        pages = engine.kv_tokens // page if engine.kv_tokens else engine.slots * self.pages_per_slot
        if pages < 1:
            raise E1Error(f"kv_tokens={engine.kv_tokens} holds no page of {page} tokens")
        self.pool_pages = pages
        self.cache = PagedCache.zeros(config, pages + 1, page)
        self.state = programs.SlotState.idle(engine.slots, max_response, ids.pad_id)
        self.page_table = np.full((engine.slots, self.pages_per_slot), TRASH_PAGE, np.int32)
        self.free_pages = collections.deque(range(1, pages + 1))
        self.queue: collections.deque[Request] = collections.deque()
        self.running: dict[int, _Running] = {}
        self.positions = np.zeros(engine.slots, np.int64)  # host copy: each running slot's next position
        self._admitted = 0
        self.progress = progress
        self.stats = collections.Counter()

    # ------------------------------------------------------------------ API

    def submit(self, request: Request) -> None:
        prompt = tuple(int(t) for t in request.prompt)
        if not prompt:
            raise E1Error("a request's prompt is empty")
        if len(prompt) > self.max_prompt:
            raise E1Error(f"a prompt of {len(prompt)} tokens is longer than the engine's max_prompt {self.max_prompt}")
        steps = _steps(request, self.ids, self.eos_in_thinking)
        if steps > self.width:
            raise E1Error(f"a request may write {steps} tokens, more than the engine's max_response {self.width}")
        if request.solution_budget < 1 or (request.think_budget is not None and request.think_budget < 1):
            raise E1Error(f"request budgets must be positive, got {request.think_budget}/{request.solution_budget}")
        need = math.ceil((len(prompt) + steps + 1) / self.engine.page_size)
        if need > self.pool_pages:
            raise E1Error(f"a request of {len(prompt)} prompt tokens and up to {steps} new ones needs {need} KV pages; "
                          f"kv_tokens={self.engine.kv_tokens} holds {self.pool_pages}")
        self.queue.append(dataclasses.replace(request, prompt=prompt))

    def completions(self) -> Iterator[Completion]:
        """Run until every submitted request is done, yielding each as it finishes."""
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self.queue) + len(self.running), desc="generate", unit="sample", dynamic_ncols=True)
        try:
            while self.queue or self.running:
                self._admit()
                self._reserve()
                for done in self._decode():
                    if bar is not None:
                        bar.update(1)
                    yield done
        finally:
            if bar is not None:
                bar.close()

    def run(self, requests: Iterable[Request]) -> list[Completion]:
        """Every request's completion, in the order given."""
        requests = list(requests)
        for i, r in enumerate(requests):
            self.submit(dataclasses.replace(r, tag=(i, r.tag)))
        done = sorted(self.completions(), key=lambda c: c.request.tag[0])
        return [dataclasses.replace(c, request=dataclasses.replace(c.request, tag=c.request.tag[1])) for c in done]

    # ------------------------------------------------------------ scheduler

    def _take_pages(self, count: int) -> list[int] | None:
        if count > len(self.free_pages):
            return None
        return [self.free_pages.popleft() for _ in range(count)]

    def _release(self, slot: int) -> Request:
        run = self.running.pop(slot)
        self.free_pages.extend(run.pages)
        self.page_table[slot] = TRASH_PAGE
        return run.request

    def _admit(self) -> None:
        free = [s for s in range(self.engine.slots) if s not in self.running]
        page, k = self.engine.page_size, self.engine.steps_per_call
        started: list[tuple[int, Request]] = []
        for slot in free:
            if not self.queue:
                break
            request = self.queue[0]
            last = len(request.prompt) - 1  # the pending token's position
            pages = self._take_pages(min(math.ceil((last + k) / page), self.pages_per_slot))
            if pages is None:
                break
            self.queue.popleft()
            self.running[slot] = _Running(request, pages, self._admitted)
            self._admitted += 1
            self.page_table[slot, :len(pages)] = pages
            self.positions[slot] = last
            started.append((slot, request))
        if not started:
            return
        prefilled: dict[tuple[int, ...], int] = {}
        for slot, request in started:
            source = prefilled.get(request.prompt)
            if source is None:
                self._prefill(slot, request.prompt)
                prefilled[request.prompt] = slot
            elif len(request.prompt) > 1:
                count = math.ceil((len(request.prompt) - 1) / page)
                self.cache = programs.copy_pages(self.cache, jnp.asarray(self.page_table[source, :count]),
                                                 jnp.asarray(self.page_table[slot, :count]))
                self.stats["copied_prompts"] += 1
        rows = np.asarray([s for s, _ in started], np.int32)
        self.state = programs.admit(
            self.state, jnp.asarray(rows), jnp.asarray([r.prompt[-1] for _, r in started], jnp.int32),
            jnp.asarray([len(r.prompt) - 1 for _, r in started], jnp.int32),
            jnp.asarray([loop.SOLVE if r.plain else loop.THINK for _, r in started], jnp.int32),
            jnp.asarray([r.think_budget or 1 for _, r in started], jnp.int32),
            jnp.asarray([r.solution_budget for _, r in started], jnp.int32), jnp.uint32(self.seed),
            jnp.asarray([r.sample_id for _, r in started], jnp.uint32), jnp.int32(self.ids.pad_id))

    def _prefill(self, slot: int, prompt: tuple[int, ...]) -> None:
        tokens = np.asarray(prompt[:-1], np.int32)
        chunk = self.engine.prefill_chunk
        for start in range(0, len(tokens), chunk):
            part = tokens[start:start + chunk]
            width = prepare.prompt_bucket(len(part))
            padded = np.full((1, width), self.ids.pad_id, np.int32)
            padded[0, :len(part)] = part
            positions = (start + np.arange(width, dtype=np.int32))[None]
            write = (np.arange(width) < len(part))[None]
            end = start + len(part)
            cols = min(self.pages_per_slot, page_bucket(math.ceil(end / self.engine.page_size)))
            self.cache = programs.prefill(self.weights, self.cache, jnp.asarray(padded), jnp.asarray(positions),
                                          jnp.asarray(write), jnp.asarray(self.page_table[slot:slot + 1, :cols]),
                                          jnp.asarray([end], jnp.int32), config=self.config)
            self.stats["prefill_tokens"] += len(part)

    def _reserve(self) -> None:
        """Pages for the next run of steps of every running slot; evict the youngest when short."""
        page, k = self.engine.page_size, self.engine.steps_per_call
        for slot in sorted(self.running, key=lambda s: self.running[s].admitted):
            if slot not in self.running:
                continue
            run = self.running[slot]
            need = min(math.ceil((self.positions[slot] + k) / page), self.pages_per_slot) - len(run.pages)
            while need > 0:
                pages = self._take_pages(need)
                if pages is not None:
                    self.page_table[slot, len(run.pages):len(run.pages) + need] = pages
                    run.pages.extend(pages)
                    break
                youngest = max(self.running, key=lambda s: self.running[s].admitted)
                self._evict(youngest)  # every request fits the pool alone, so the oldest always fits
                if youngest == slot:
                    break

    def _evict(self, slot: int) -> None:
        request = self._release(slot)
        self.queue.appendleft(request)
        self.state = programs.admit(self.state, jnp.asarray([slot], jnp.int32), jnp.zeros(1, jnp.int32),
                                    jnp.zeros(1, jnp.int32), jnp.full(1, loop.DONE, jnp.int32), jnp.ones(1, jnp.int32),
                                    jnp.ones(1, jnp.int32), jnp.uint32(self.seed), jnp.zeros(1, jnp.uint32),
                                    jnp.int32(self.ids.pad_id))
        self.stats["evictions"] += 1

    def _reader(self) -> RaggedReader:
        """The running slots' pages as one flat list, padded to a page bucket."""
        page = self.engine.page_size
        pages, slots, starts = [], [], []
        for slot, run in self.running.items():
            pages += run.pages
            slots += [slot] * len(run.pages)
            starts += range(0, len(run.pages) * page, page)
        pad = page_bucket(len(pages)) - len(pages)
        return RaggedReader(pages=jnp.asarray(pages + [TRASH_PAGE] * pad, jnp.int32),
                            slot=jnp.asarray(slots + [self.engine.slots] * pad, jnp.int32),
                            start=jnp.asarray(starts + [0] * pad, jnp.int32))

    def _decode(self) -> list[Completion]:
        if not self.running:
            return []
        held = max(len(r.pages) for r in self.running.values())
        cols = min(self.pages_per_slot, page_bucket(held))
        steps = self.engine.steps_per_call
        self.cache, self.state, ran = programs.decode(
            self.weights, self.cache, self.state, jnp.asarray(self.page_table[:, :cols]), self._reader(),
            self.settings, config=self.config, steps=steps, eos_forces_close=self.eos_forces_close)
        phase, out_len, position = jax.device_get((self.state.phase, self.state.out_len, self.state.position))
        self.stats["decode_calls"] += 1
        self.stats["decode_steps"] += int(ran)
        self.stats["slot_steps"] += int(ran) * self.engine.slots
        finished = [s for s in self.running if phase[s] == loop.DONE]
        for slot in self.running:
            self.positions[slot] = position[slot]
        if not finished:
            return []
        rows = jnp.asarray(finished, jnp.int32)
        tokens, logprobs, forced, truncated, finish = jax.device_get(
            (self.state.tokens[rows], self.state.logprobs[rows], self.state.forced[rows], self.state.truncated[rows],
             self.state.finish[rows]))
        done = []
        for i, slot in enumerate(finished):
            length = int(out_len[slot])
            done.append(Completion(self._release(slot), tokens[i, :length], logprobs[i, :length], forced[i, :length],
                                   bool(truncated[i]), int(finish[i])))
            self.stats["emitted_tokens"] += length
        return done


def page_bucket(pages: int) -> int:
    """Pages a program reads, rounded up to one of four sizes per octave (one compile each)."""
    pages = max(pages, 1)
    step = 1 << max(pages.bit_length() - 3, 0)
    return -(-pages // step) * step
