"""The soft-prompt sequence hook: one prompt copy per packed segment, metadata kept consistent.

A row of ``t`` embedded tokens holding up to ``S`` segments becomes a row of
``t + P * S`` vectors (``S = 1`` for unpacked batches, i.e. when the batch has no
``<stack>_segment_ids`` feature; else ``max_segments``). Each segment gets its prompt
contiguously at its insertion point, so within a segment the layout is exactly that of the
example alone: segment ids extend over the prompt, positions (RoPE) restart per segment
and count the prompt, prefix flags mark it bidirectional (prefix-LM), ``token_index``
follows the moved tokens, and T5's relative bias (offsets over the row) sees the same
offsets as for the example alone. Unused slots sit at the end of the row as padding
(segment 0). Padding segments (id 0) get no prompt.

Placements, per segment: ``prefix`` (before its first token), ``after_bos`` (after its
first token: the shifted-in BOS of decoder-only rows, the first input token for T5) and
``suffix_of_inputs`` (after the last input token: T5's last encoder token, a prefix-LM's
last prefix token; a causal LM has no inputs and is rejected).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_instruct.errors import UserInputError
from t5x_instruct.layers.sequence import EmbeddedSequence
from t5x_instruct.partitioning import LOGICAL_AXES_KEY, with_logical_constraint

PLACEMENTS = ("prefix", "after_bos", "suffix_of_inputs")
OVERFLOW = ("error", "warn", "skip")

log = logging.getLogger(__name__)


class SoftPrompt(nnx.Module):
    """The learned prompt ``[P, d]`` (or ``[num_tasks, P, d]``) and where it goes."""

    def __init__(
        self,
        value: jax.Array,
        *,
        plugin: str,
        placement: str,
        max_segments: int,
        on_overflow: str,
        task_feature: str,
        default_task_id: int | None,
    ) -> None:
        axes = ("prompt", "embed") if value.ndim == 2 else ("prompt_tasks", "prompt", "embed")
        self.prompt = nnx.Param(value, **{LOGICAL_AXES_KEY: axes})
        self.plugin = plugin
        self.placement = placement
        self.max_segments = max_segments
        self.on_overflow = on_overflow
        self.task_feature = task_feature
        self.default_task_id = default_task_id

    @property
    def num_tasks(self) -> int:
        shape = self.prompt.get_value().shape
        return 1 if len(shape) == 2 else shape[0]

    def __call__(self, seq: EmbeddedSequence) -> EmbeddedSequence:
        prompts = self.prompt.get_value()
        if prompts.ndim == 2:
            prompts = prompts[None]
        packed = f"{seq.stack}_segment_ids" in seq.features
        return insert_prompts(
            seq,
            prompts,
            placement=self.placement,
            max_segments=self.max_segments if packed else 1,
            # Unpacked rows hold one segment: no run-time check unless task ids need one.
            on_overflow=self.on_overflow if packed or self.num_tasks > 1 else "skip",
            task_ids=self._task_ids(seq.features),
            default_task_id=self.default_task_id or 0,
            plugin=self.plugin,
        )

    def _task_ids(self, features: Mapping[str, Any]) -> jax.Array | None:
        if self.num_tasks == 1:
            return None
        if self.task_feature in features:
            return jnp.asarray(features[self.task_feature], jnp.int32)
        if self.default_task_id is None:
            raise UserInputError(
                f"{self.plugin}: the batch has no {self.task_feature!r} feature to pick one of "
                f"the {self.num_tasks} prompts (PromptTuning.task_feature), and "
                "PromptTuning.default_task_id is None. Add the feature or set a default."
            )
        return None  # every segment uses the default (see insert_prompts)


def insert_prompts(
    seq: EmbeddedSequence,
    prompts: jax.Array,
    *,
    placement: str,
    max_segments: int,
    on_overflow: str = "error",
    task_ids: jax.Array | None = None,
    default_task_id: int = 0,
    plugin: str = "prompt_tuning",
) -> EmbeddedSequence:
    """``seq`` with ``prompts[task]`` (``[num_tasks, P, d]``) inserted once per segment.

    ``task_ids``: ``[b]`` (one task per row) or ``[b, t0]`` (per original token, packed like
    the tokens; a segment takes its tokens' id); ``None`` uses ``default_task_id``.
    Rows with more than ``max_segments`` segments leave the later segments without a
    prompt; ``on_overflow`` says whether that (and a task id out of range, then clipped)
    raises (``'error'``, from the device at run time), logs a warning (``'warn'``) or
    passes silently (``'skip'``).
    """
    num_tasks, p, _ = prompts.shape
    b, t, _ = seq.x.shape
    s = max_segments
    seg = seq.segment_ids
    real = seg != 0
    rows = jnp.arange(b)[:, None]
    idx = jnp.arange(t, dtype=jnp.int32)

    prev_seg = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
    next_seg = jnp.pad(seg[:, 1:], ((0, 0), (0, 1)))
    starts = real & (seg != prev_seg)
    zero = jnp.zeros((b, 1), bool)
    if placement == "prefix":  # slot i = before element i; slot t = end of row
        marks = jnp.concatenate([starts, zero], axis=1)
    elif placement == "after_bos":
        marks = jnp.concatenate([zero, starts], axis=1)
    elif placement == "suffix_of_inputs":
        if seq.in_prefix is not None:  # prefix-LM: after the last bidirectional token
            inp = seq.in_prefix & real
            next_inp = jnp.pad(inp[:, 1:], ((0, 0), (0, 1)))
            last = inp & ~(next_inp & (seg == next_seg))
        elif seq.stack == "encoder":  # encoder input: after the segment's last token
            last = real & (seg != next_seg)
        else:
            raise UserInputError(
                f"{plugin}: PromptTuning.placement='suffix_of_inputs' needs inputs, but this "
                "decoder-only batch is plain language modelling (no decoder_causal_attention)."
                " Use train.decoder_objective='prefix_lm' or placement 'prefix' / 'after_bos'."
            )
        marks = jnp.concatenate([zero, last], axis=1)
    else:
        raise UserInputError(
            f"{plugin}: PromptTuning.placement={placement!r}; expected one of {PLACEMENTS}."
        )
    marks = marks.astype(jnp.int32)
    wanted = jnp.cumsum(marks, axis=1)
    marks = marks * (wanted <= s)  # segments past max_segments get no prompt
    count = jnp.cumsum(marks, axis=1)  # [b, t+1]: insertions at slots <= i

    # Insertion slots, in order: [b, s] (t + 1 where a row has fewer).
    # Slot of insertion k = number of slots with fewer than k+1 insertions up to them.
    k = jnp.arange(s, dtype=jnp.int32)
    slots = jnp.sum(count[:, None, :] <= k[None, :, None], axis=2, dtype=jnp.int32)
    valid = slots <= t
    anchor = jnp.clip(slots if placement == "prefix" else slots - 1, 0, t - 1)
    anchor_seg = jnp.take_along_axis(seg, anchor, axis=1)
    anchor_pos = jnp.take_along_axis(seq.positions, anchor, axis=1)
    first_pos = anchor_pos if placement == "prefix" else anchor_pos + 1

    tasks = _segment_tasks(seq, anchor_seg, task_ids, default_task_id, plugin)
    if on_overflow != "skip":
        ok_tasks = ~valid | ((tasks >= 0) & (tasks < num_tasks))
        check = functools.partial(
            _check_rows, plugin=plugin, max_segments=s, num_tasks=num_tasks, mode=on_overflow
        )
        most = jnp.max(wanted[:, -1])
        jax.debug.callback(check, most, most > s, jnp.all(ok_tasks))

    # Original elements move right by P per insertion at or before them.
    new_len = t + p * s
    new_idx = idx + p * count[:, :t]
    seg_start = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    # Insertions inside the element's own segment, before it: at slots (start, i], plus the
    # slot at the segment start for 'prefix' (an 'after' slot there is the previous segment's).
    own = count[:, :t] - jnp.take_along_axis(count, seg_start, axis=1)
    if placement == "prefix":
        own = own + jnp.take_along_axis(marks, seg_start, axis=1)
    positions = seq.positions + p * ((own > 0) & real)

    # Prompt vector j of insertion k lands at slot_k + P*k + j. Every output slot reads one
    # source: an original element (0..t-1), a prompt vector (t..t+sP-1) or nothing (t+sP).
    j = jnp.arange(p, dtype=jnp.int32)
    dest = jnp.where(valid[..., None], (slots + p * k)[..., None] + j, new_len).reshape(b, -1)
    empty = t + s * p
    source = jnp.full((b, new_len), empty, jnp.int32)
    source = source.at[rows, new_idx].set(idx)
    source = source.at[rows, dest].set(t + jnp.arange(s * p, dtype=jnp.int32), mode="drop")

    def place(original: jax.Array, prompt_value: jax.Array) -> jax.Array:
        flat = prompt_value.reshape((b, s * p) + original.shape[2:]).astype(original.dtype)
        pad = jnp.zeros((b, 1) + original.shape[2:], original.dtype)
        every = jnp.concatenate([original, flat, pad], axis=1)
        where = source.reshape(source.shape + (1,) * (original.ndim - 2))
        return jnp.take_along_axis(every, where, axis=1)

    values = jnp.take(prompts, jnp.clip(tasks, 0, num_tasks - 1), axis=0)  # [b, s, P, d]
    x = with_logical_constraint(place(seq.x, values), ("batch", "length", "embed"))
    per_prompt = (b, s, p)
    segment_ids = place(seg, jnp.broadcast_to(anchor_seg[..., None], per_prompt))
    new_positions = place(positions, first_pos[..., None] + j)
    in_prefix = None
    if seq.in_prefix is not None:
        in_prefix = place(seq.in_prefix, jnp.ones(per_prompt, bool))
    token_index = jnp.take_along_axis(new_idx, seq.token_index, axis=1)
    return EmbeddedSequence(
        x=x,
        segment_ids=segment_ids,
        positions=new_positions,
        in_prefix=in_prefix,
        token_index=token_index,
        features=seq.features,
        stack=seq.stack,
    )


def _segment_tasks(
    seq: EmbeddedSequence,
    anchor_seg: jax.Array,
    task_ids: jax.Array | None,
    default_task_id: int,
    plugin: str,
) -> jax.Array:
    """Task id of each insertion's segment, ``[b, s]``."""
    b, s = anchor_seg.shape
    if task_ids is None:
        return jnp.full((b, s), default_task_id, jnp.int32)
    if task_ids.ndim == 1 and task_ids.shape[0] == b:
        return jnp.broadcast_to(task_ids[:, None], (b, s))
    if task_ids.shape != seq.token_index.shape:
        raise UserInputError(
            f"{plugin}: the task id feature (PromptTuning.task_feature) has shape "
            f"{list(task_ids.shape)}; expected [{b}] (one task per row) or "
            f"{list(seq.token_index.shape)} (one per token of the {seq.stack} input)."
        )
    # Per-token ids of the original tokens, moved to where those tokens now are.
    t = seq.x.shape[1]
    per_element = jnp.full((b, t), -1, jnp.int32)
    per_element = per_element.at[jnp.arange(b)[:, None], seq.token_index].set(task_ids)
    same = seq.segment_ids[:, None, :] == anchor_seg[:, :, None]  # [b, s, t]
    return jnp.max(jnp.where(same, per_element[:, None, :], -1), axis=2)


def _check_rows(
    most: np.ndarray,
    overflow: np.ndarray,
    tasks_ok: np.ndarray,
    *,
    plugin: str,
    max_segments: int,
    num_tasks: int,
    mode: str,
) -> None:
    """Host side of the run-time checks (``jax.debug.callback``).

    Raising here fails the step on one device: on a single device that is a clean error;
    on several, the others may wait in a collective until XLA aborts the process (the
    message is logged first). ``on_overflow='warn'`` only logs.
    """
    problems = []
    if bool(overflow):
        problems.append(
            f"{plugin}: a packed row holds {int(most)} segments but "
            f"PromptTuning.max_segments_per_row={max_segments}, so some examples get no "
            f"prompt. Raise max_segments_per_row to at least {int(most)} (each packed row "
            "grows by length x max_segments_per_row vectors), or set PromptTuning.on_overflow "
            "to 'warn' or 'skip'. (A batch without a '<stack>_segment_ids' feature counts as "
            "unpacked: one segment per row; pass the batch as `features` when calling the "
            "model directly.)"
        )
    if not bool(tasks_ok):
        problems.append(
            f"{plugin}: the batch's task ids (PromptTuning.task_feature) fall outside "
            f"[0, {num_tasks}) (PromptTuning.num_tasks={num_tasks})."
        )
    level = logging.ERROR if mode == "error" else logging.WARNING
    for problem in problems:
        log.log(level, problem)
    if problems and mode == "error":
        raise UserInputError(" ".join(problems))
