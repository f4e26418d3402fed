"""The episode kernel: condition-with-duration rules over a batch, without a per-sample loop.

An *episode* is a continuous run of samples for which a condition holds (bed empty, door
open, temperature below the limit). With hysteresis the condition is entered on one test
(``value < low``) and left only on another (``value >= low + h``); samples that pass neither
keep the previous state. An episode is *eligible* if its first sample passed the gate (for
instance "it is night"), and it *fires* once, at its first sample (or tick) at which it has
lasted ``duration``. It re-arms only when the condition is left.

State carried between batches, per stream: in an episode?, since when, eligible?, fired?

The batch is sorted by (stream, time). Everything below is whole-array numpy: the "last
decisive sample" and the "last episode start" per position are running maxima of index
arrays, with each stream's segment start acting as a floor so state never leaks from one
stream into the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(slots=True)
class EpisodeState:
    """Per-stream episode state, indexed by stream number. Grows with the stream table."""

    active: npt.NDArray[np.bool_]
    start_ms: npt.NDArray[np.int64]
    eligible: npt.NDArray[np.bool_]
    fired: npt.NDArray[np.bool_]

    @classmethod
    def empty(cls, capacity: int) -> EpisodeState:
        """No stream in an episode."""
        return cls(
            np.zeros(capacity, dtype=np.bool_),
            np.zeros(capacity, dtype=np.int64),
            np.zeros(capacity, dtype=np.bool_),
            np.zeros(capacity, dtype=np.bool_),
        )

    def grow(self, capacity: int) -> None:
        """Make room for streams up to ``capacity`` (new streams start outside an episode)."""
        extra = capacity - self.active.size
        if extra > 0:
            self.active = np.concatenate([self.active, np.zeros(extra, dtype=np.bool_)])
            self.start_ms = np.concatenate([self.start_ms, np.zeros(extra, dtype=np.int64)])
            self.eligible = np.concatenate([self.eligible, np.zeros(extra, dtype=np.bool_)])
            self.fired = np.concatenate([self.fired, np.zeros(extra, dtype=np.bool_)])


@dataclass(frozen=True, slots=True)
class Due:
    """Episodes that became due in a batch: the sample at which each did, and its start."""

    index: npt.NDArray[np.intp]
    episode_ms: npt.NDArray[np.int64]


def segment_starts(stream: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
    """True at the first sample of each stream's run in a (stream, time)-sorted batch."""
    first = np.ones(stream.size, dtype=np.bool_)
    first[1:] = stream[1:] != stream[:-1]
    return first


def run(
    state: EpisodeState,
    stream: npt.NDArray[np.intp],
    ts_ms: npt.NDArray[np.int64],
    enter: npt.NDArray[np.bool_],
    leave: npt.NDArray[np.bool_],
    gate: npt.NDArray[np.bool_],
    duration_ms: npt.NDArray[np.int64],
) -> Due:
    """Advance ``state`` over one sorted batch and return the episodes that became due.

    ``enter`` and ``leave`` must not both be true for a sample. ``gate`` is read only at an
    episode's first sample. ``duration_ms`` is per sample (the stream's configured duration).
    """
    n = stream.size
    if n == 0:
        return Due(np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64))
    pos = np.arange(n, dtype=np.intp)
    first = segment_starts(stream)
    floor = np.maximum.accumulate(np.where(first, pos, 0))

    # The condition state after each sample: set by the last decisive sample of this stream
    # in the batch, or carried over from the previous batch if there is none yet.
    last_decisive = np.maximum.accumulate(np.where(enter | leave, pos, -1))
    decided_here = last_decisive >= floor
    carried_active = state.active[stream]
    cond = np.where(decided_here, enter[np.maximum(last_decisive, 0)], carried_active)

    prev = np.empty(n, dtype=np.bool_)
    prev[0] = False
    prev[1:] = cond[:-1]
    prev = np.where(first, carried_active, prev)
    rise = cond & ~prev

    # The episode each sample belongs to: the last rise in this stream's segment, else the
    # episode carried over from the previous batch.
    last_rise = np.maximum.accumulate(np.where(rise, pos, -1))
    new_here = last_rise >= floor
    anchor = np.maximum(last_rise, 0)
    ep_start = np.where(new_here, ts_ms[anchor], state.start_ms[stream])
    ep_eligible = np.where(new_here, gate[anchor], state.eligible[stream])
    fired_before = np.where(new_here, False, state.fired[stream])

    # Within one episode the condition holds throughout and time only grows, so once a
    # sample is due every later sample of the episode is too; the first due sample fires.
    due = cond & ep_eligible & ~fired_before & (ts_ms - ep_start >= duration_ms)
    due_prev = np.empty(n, dtype=np.bool_)
    due_prev[0] = False
    due_prev[1:] = due[:-1]
    fires = due & (~due_prev | first)

    last = np.flatnonzero(np.append(first[1:], True))
    s_last = stream[last]
    state.active[s_last] = cond[last]
    state.start_ms[s_last] = np.where(cond[last], ep_start[last], 0)
    state.eligible[s_last] = cond[last] & ep_eligible[last]
    state.fired[s_last] = cond[last] & (fired_before[last] | due[last])

    idx = np.flatnonzero(fires)
    return Due(idx, ep_start[idx])


def due_on_tick(
    state: EpisodeState,
    enabled: npt.NDArray[np.bool_],
    duration_ms: npt.NDArray[np.int64],
    now_ms: int,
) -> npt.NDArray[np.intp]:
    """Streams whose open, eligible episode has lasted ``duration`` by ``now``; marks them fired.

    This is how "not back in bed within 20 minutes" fires when the bed sensor only reports
    changes: no sample arrives, time passes.
    """
    size = enabled.size
    due = (
        state.active[:size]
        & state.eligible[:size]
        & ~state.fired[:size]
        & enabled
        & (now_ms - state.start_ms[:size] >= duration_ms)
    )
    streams = np.flatnonzero(due)
    state.fired[streams] = True
    return streams
