"""Fall detection from accelerometer windows, and a labelled synthetic data set to measure it.

Method (the classic three-stage detector for a worn tri-axial accelerometer, units of g):

1. **Impact**: the peak of the signal-vector magnitude ``|a| = sqrt(x²+y²+z²)`` reaches
   ``impact_g``. Walking peaks around 1.3-1.8 g; a fall onto a floor gives 2.5-6 g.
2. **Orientation change**: the mean acceleration vector (mostly gravity) shortly before the
   impact and shortly after it differ by at least ``min_angle_deg``: upright became lying.
   Sitting down hard gives an impact but little change of orientation.
3. **Stillness**: after the impact the magnitude varies little (standard deviation at most
   ``max_still_std_g``): someone who stumbled and walks on is moving again.

A dropped device passes all three (a hard landing, a new orientation, perfectly still), so a
fourth test rejects it: a device in true free fall reads close to 0 g for as long as it falls
(0.3-0.5 s from hand or chest height), while a falling body is never in free fall for long
(it rotates about the feet and is slowed by reaching out).

Everything works on a stack of windows ``(n, samples, 3)`` at once. The data set generator
is for measuring the detector and for tests; it is synthetic and shaped by the same ideas as
the detector, so its precision and recall say the method is wired correctly, not how well it
does on real people. Validate on recorded data (e.g. SisFall, FallAllD) before relying on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

Windows = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FallParams:
    """Detector thresholds. Defaults suit a pendant or wrist device sampling at 50 Hz."""

    sample_rate_hz: float = 50.0
    impact_g: float = 2.2
    min_angle_deg: float = 45.0
    max_still_std_g: float = 0.15
    # Below this magnitude the device itself is falling freely (a body hardly ever is).
    freefall_g: float = 0.3
    # More free fall than this in the second before the impact means a dropped device.
    max_freefall_s: float = 0.15
    # Orientation before: the ``pre_s`` seconds ending ``pre_gap_s`` before the impact (the
    # gap skips the descent, during which orientation is already changing).
    pre_s: float = 1.0
    pre_gap_s: float = 0.6
    # Orientation and stillness after: ``post_s`` seconds starting ``post_gap_s`` after the
    # impact (the gap skips the bounce and the settling of the body).
    post_gap_s: float = 0.8
    post_s: float = 1.5


@dataclass(frozen=True, slots=True)
class FallVerdicts:
    """Per window: the verdict and the features it was based on."""

    is_fall: npt.NDArray[np.bool_]
    # False where the window ends too soon after the impact to judge stillness.
    complete: npt.NDArray[np.bool_]
    impact_index: npt.NDArray[np.intp]
    peak_g: npt.NDArray[np.float64]
    angle_deg: npt.NDArray[np.float64]
    still_std_g: npt.NDArray[np.float64]
    freefall_s: npt.NDArray[np.float64]


def magnitude(windows: Windows) -> npt.NDArray[np.float64]:
    """Signal-vector magnitude of each sample, shape ``(n, samples)``."""
    squares: npt.NDArray[np.float64] = np.einsum("nmk,nmk->nm", windows, windows)
    return np.sqrt(squares)


def _masked_mean(
    windows: Windows, lo: npt.NDArray[np.intp], hi: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    col = np.arange(windows.shape[1])
    mask = (col[None, :] >= lo[:, None]) & (col[None, :] < hi[:, None])
    count: npt.NDArray[np.int64] = np.maximum(mask.sum(axis=1), 1)
    total: npt.NDArray[np.float64] = np.einsum("nm,nmk->nk", mask.astype(np.float64), windows)
    return total / count[:, None]


def detect(windows: Windows, params: FallParams | None = None) -> FallVerdicts:
    """Judge each window of a stack ``(n, samples, 3)`` (in g) as fall or not."""
    p = params or FallParams()
    if windows.ndim != 3 or windows.shape[2] != 3:
        raise ValueError(f"windows must have shape (n, samples, 3), got {windows.shape}")
    n, m, _ = windows.shape
    rate = p.sample_rate_hz
    mag = magnitude(windows)
    rows = np.arange(n)
    peak_at = np.argmax(mag, axis=1).astype(np.intp) if m else np.zeros(n, dtype=np.intp)
    peak = mag[rows, peak_at] if m else np.zeros(n)

    pre_hi = np.maximum(peak_at - round(p.pre_gap_s * rate), 1)
    pre_lo = np.maximum(pre_hi - round(p.pre_s * rate), 0)
    post_lo = peak_at + round(p.post_gap_s * rate)
    post_hi = post_lo + round(p.post_s * rate)
    complete = post_hi <= m

    before = _masked_mean(windows, pre_lo, pre_hi)
    after = _masked_mean(windows, post_lo, np.minimum(post_hi, m))
    cos = np.einsum("nk,nk->n", before, after) / np.maximum(
        np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1), 1e-9
    )
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))

    col = np.arange(m)
    post = (col[None, :] >= post_lo[:, None]) & (col[None, :] < post_hi[:, None])
    count = np.maximum(post.sum(axis=1), 1)
    mean_after = np.where(post, mag, 0.0).sum(axis=1) / count
    still = np.sqrt(np.where(post, (mag - mean_after[:, None]) ** 2, 0.0).sum(axis=1) / count)

    lead = (col[None, :] < peak_at[:, None]) & (col[None, :] >= (peak_at - round(rate))[:, None])
    freefall = (lead & (mag < p.freefall_g)).sum(axis=1) / rate

    is_fall = (
        complete
        & (peak >= p.impact_g)
        & (angle >= p.min_angle_deg)
        & (still <= p.max_still_std_g)
        & (freefall <= p.max_freefall_s)
    )
    return FallVerdicts(is_fall, complete, peak_at, peak, angle, still, freefall)


# -- synthetic data set ----------------------------------------------------------------------


class Activity(StrEnum):
    """What a generated window shows."""

    FALL = "fall"
    WALKING = "walking"
    SITTING_DOWN_HARD = "sitting_down_hard"
    LYING_DOWN = "lying_down"
    STUMBLE = "stumble"
    DEVICE_DROP = "device_drop"


# Falls are over-represented compared with real life so that recall is measured on enough
# falls; precision is then pessimistic relative to a real day, which is mostly walking.
ACTIVITY_WEIGHTS: dict[Activity, float] = {
    Activity.FALL: 0.3,
    Activity.WALKING: 0.14,
    Activity.SITTING_DOWN_HARD: 0.14,
    Activity.LYING_DOWN: 0.14,
    Activity.STUMBLE: 0.14,
    Activity.DEVICE_DROP: 0.14,
}


@dataclass(frozen=True, slots=True)
class FallDataset:
    """Labelled windows: ``windows[i]`` shows ``activities[i]``; ``is_fall`` is the label."""

    windows: Windows
    is_fall: npt.NDArray[np.bool_]
    activities: tuple[Activity, ...]
    sample_rate_hz: float


def _unit(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norm: npt.NDArray[np.float64] = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-12)


def _tilted(rng: np.random.Generator, degrees: float) -> npt.NDArray[np.float64]:
    """Upright gravity reading (0, 0, 1) tilted by ``degrees`` about a random level axis."""
    phi = rng.uniform(0, 2 * np.pi)
    theta = np.radians(degrees)
    return np.array([np.sin(phi) * np.sin(theta), -np.cos(phi) * np.sin(theta), np.cos(theta)])


def _blend(
    t: npt.NDArray[np.float64],
    start: float,
    end: float,
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Orientation moving smoothly from ``a`` to ``b`` between ``start`` and ``end``."""
    u = np.clip((t - start) / max(end - start, 1e-6), 0.0, 1.0)
    u = u * u * (3 - 2 * u)
    return _unit((1 - u)[:, None] * a[None, :] + u[:, None] * b[None, :])


def _pulse(
    t: npt.NDArray[np.float64], at: float, width: float, height: float
) -> npt.NDArray[np.float64]:
    """A half-sine shock of ``height`` g centred on ``at``."""
    phase = (t - at + width / 2) / width
    return np.where((phase >= 0) & (phase <= 1), height * np.sin(np.pi * phase), 0.0)


def _gait(
    rng: np.random.Generator, t: npt.NDArray[np.float64], up: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Dynamic acceleration of walking: a step bounce along ``up`` plus a sway."""
    f = rng.uniform(1.6, 2.2)
    bounce = rng.uniform(0.12, 0.3) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    bounce += rng.uniform(0.03, 0.1) * np.sin(4 * np.pi * f * t)
    sway = rng.uniform(0.04, 0.1) * np.sin(np.pi * f * t)
    side = _unit(np.cross(up, rng.normal(size=3)))
    return bounce[:, None] * up[None, :] + sway[:, None] * side[None, :]


def _window(
    rng: np.random.Generator, activity: Activity, t: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    m = t.size
    upright = _tilted(rng, rng.uniform(0, 15))
    at = rng.uniform(2.0, 2.8)  # when the event happens; leaves > 3 s to observe after it
    noise = rng.uniform(0.008, 0.02)
    jolt_dir = _unit(rng.normal(size=3))

    if activity is Activity.WALKING:
        orient = np.repeat(upright[None, :], m, axis=0)
        dyn = _gait(rng, t, upright)
        for step in rng.uniform(0.5, t[-1], size=rng.integers(0, 3)):
            # Heel strikes on a hard floor, now and then strong enough to look like impacts.
            dyn += _pulse(t, step, 0.06, rng.uniform(0.4, 1.5))[:, None] * upright[None, :]
        return orient + dyn + rng.normal(0, noise, (m, 3))

    if activity is Activity.SITTING_DOWN_HARD:
        # One in ten reclines far into the chair: the hard case that costs precision.
        recline = rng.uniform(35, 60) if rng.random() < 0.1 else rng.uniform(5, 25)
        seated = _tilted(rng, recline)
        orient = _blend(t, at - 0.5, at + 0.2, upright, seated)
        dyn = np.where(t < at - 0.6, 1.0, 0.0)[:, None] * _gait(rng, t, upright)
        dyn += (
            _pulse(t, at, rng.uniform(0.08, 0.15), rng.uniform(0.8, 2.5))[:, None]
            * (_unit(seated + 0.3 * jolt_dir)[None, :])
        )
        sway = rng.uniform(0.005, 0.03) * np.sin(2 * np.pi * 0.25 * t)  # breathing
        dyn += np.where(t > at + 0.3, sway, 0.0)[:, None] * seated[None, :]
        return orient + dyn + rng.normal(0, noise, (m, 3))

    if activity is Activity.LYING_DOWN:
        lying = _tilted(rng, rng.uniform(70, 100))
        start = at - rng.uniform(1.0, 2.0)
        orient = _blend(t, start, at, upright, lying)
        dyn = _pulse(t, at, rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.8))[:, None] * lying[None, :]
        return orient + dyn + rng.normal(0, noise, (m, 3))

    if activity is Activity.STUMBLE:
        lean = _tilted(rng, rng.uniform(10, 35))
        back = rng.uniform(0.4, 1.0)
        orient = np.where(
            (t < at)[:, None],
            _blend(t, at - 0.3, at, upright, lean),
            _blend(t, at, at + back, lean, upright),
        )
        dyn = _gait(rng, t, upright)
        dyn += (
            _pulse(t, at, rng.uniform(0.06, 0.12), rng.uniform(0.8, 2.2))[:, None]
            * (_unit(upright + 0.5 * jolt_dir)[None, :])
        )
        return orient + dyn + rng.normal(0, noise, (m, 3))

    if activity is Activity.DEVICE_DROP:
        held = _unit(upright + 0.3 * rng.normal(size=3))
        floor = _unit(rng.normal(size=3))
        fall_s = rng.uniform(0.22, 0.5)
        # In free fall the accelerometer reads (almost) nothing; then the floor.
        gravity = np.where((t >= at - fall_s) & (t < at), rng.uniform(0.0, 0.12), 1.0)
        orient = np.where((t < at)[:, None], held[None, :], floor[None, :]) * gravity[:, None]
        dyn = _pulse(t, at, rng.uniform(0.02, 0.05), rng.uniform(3.0, 9.0))[:, None] * floor
        for k in range(int(rng.integers(1, 3))):
            bounce_at = at + 0.1 * (k + 1) + rng.uniform(0, 0.05)
            dyn += _pulse(t, bounce_at, 0.03, rng.uniform(0.5, 2.0))[:, None] * floor
        hand = np.where(t < at - fall_s, 1.0, 0.0)[:, None] * rng.normal(0, 0.05, (m, 3))
        return orient + dyn + hand + rng.normal(0, noise * 0.5, (m, 3))

    # A fall: walking, a descent in which the body tips over and is partly unloaded, the
    # impact, then lying with small movements (breathing, trying to move).
    lying = _tilted(rng, rng.uniform(60, 110))
    descent = rng.uniform(0.4, 0.8)
    hard = rng.random()
    # 3 % slide down softly (no real impact), 3 % keep moving a lot: both are missed.
    peak = rng.uniform(0.5, 1.0) if hard < 0.03 else rng.uniform(1.6, 5.0)
    moving = rng.uniform(0.15, 0.35) if 0.03 <= hard < 0.06 else rng.uniform(0.01, 0.06)
    orient = _blend(t, at - descent, at, upright, lying)
    unload = 1.0 - rng.uniform(0.3, 0.65) * _pulse(t, at - descent / 2, descent, 1.0)
    dyn = np.where(t < at - descent, 1.0, 0.0)[:, None] * _gait(rng, t, upright)
    dyn += _pulse(t, at, rng.uniform(0.06, 0.15), peak)[:, None] * _unit(lying + 0.4 * jolt_dir)
    wriggle = moving * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * t + rng.uniform(0, 6.3))
    dyn += np.where(t > at + 0.3, wriggle, 0.0)[:, None] * _unit(rng.normal(size=3))[None, :]
    return orient * unload[:, None] + dyn + rng.normal(0, noise, (m, 3))


def generate(
    n: int, *, seed: int, sample_rate_hz: float = 50.0, window_s: float = 6.0
) -> FallDataset:
    """``n`` labelled windows, the same for the same seed and arguments."""
    rng = np.random.default_rng(seed)
    m = round(window_s * sample_rate_hz)
    t = np.arange(m) / sample_rate_hz
    kinds = list(ACTIVITY_WEIGHTS)
    weights = np.array([ACTIVITY_WEIGHTS[k] for k in kinds])
    picks = rng.choice(len(kinds), size=n, p=weights / weights.sum())
    activities = tuple(kinds[i] for i in picks)
    windows = np.stack([_window(rng, a, t) for a in activities]) if n else np.zeros((0, m, 3))
    labels = np.array([a is Activity.FALL for a in activities], dtype=np.bool_)
    return FallDataset(windows, labels, activities, sample_rate_hz)


@dataclass(frozen=True, slots=True)
class Score:
    """Detector quality on a labelled set."""

    precision: float
    recall: float
    true_pos: int
    false_pos: int
    false_neg: int
    true_neg: int
    # Per activity: how many windows were judged falls, of how many.
    flagged: dict[str, tuple[int, int]]


def score(dataset: FallDataset, params: FallParams | None = None) -> Score:
    """Run the detector over a data set and count."""
    p = params or FallParams(sample_rate_hz=dataset.sample_rate_hz)
    pred = detect(dataset.windows, p).is_fall
    truth = dataset.is_fall
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    tn = int(np.sum(~pred & ~truth))
    kinds = np.array([str(a) for a in dataset.activities])
    flagged = {
        str(a): (int(np.sum(pred[kinds == str(a)])), int(np.sum(kinds == str(a)))) for a in Activity
    }
    return Score(
        precision=tp / (tp + fp) if tp + fp else 1.0,
        recall=tp / (tp + fn) if tp + fn else 1.0,
        true_pos=tp,
        false_pos=fp,
        false_neg=fn,
        true_neg=tn,
        flagged=flagged,
    )
