"""The fall detector and its synthetic data set."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms.fall import Activity, FallParams, detect, generate, magnitude, score


@pytest.fixture(scope="module")
def dataset_score() -> tuple[float, float, dict[str, tuple[int, int]]]:
    """Score on a seeded set of 900 windows (about 270 falls)."""
    result = score(generate(900, seed=20240611))
    return result.precision, result.recall, result.flagged


def test_precision_and_recall_reach_ninety_percent(
    dataset_score: tuple[float, float, dict[str, tuple[int, int]]],
) -> None:
    precision, recall, _ = dataset_score
    assert precision >= 0.9
    assert recall >= 0.9


def test_everyday_movements_are_rarely_falls(
    dataset_score: tuple[float, float, dict[str, tuple[int, int]]],
) -> None:
    _, _, flagged = dataset_score
    for activity in (Activity.WALKING, Activity.LYING_DOWN, Activity.STUMBLE):
        assert flagged[activity][0] == 0, activity
    hits, total = flagged[Activity.DEVICE_DROP]
    assert total > 0
    assert hits <= 0.05 * total  # free fall gives a dropped device away
    hits, total = flagged[Activity.SITTING_DOWN_HARD]
    assert hits <= 0.15 * total  # the far-reclining ones are the known hard case


def test_generator_is_deterministic_and_labelled() -> None:
    a = generate(40, seed=1)
    b = generate(40, seed=1)
    c = generate(40, seed=2)
    assert np.array_equal(a.windows, b.windows)
    assert a.activities == b.activities
    assert not np.array_equal(a.windows, c.windows)
    assert a.windows.shape == (40, 300, 3)
    assert a.is_fall.tolist() == [x is Activity.FALL for x in a.activities]
    assert set(generate(200, seed=3).activities) == set(Activity)


def test_each_stage_is_needed() -> None:
    data = generate(300, seed=9)
    verdict = detect(data.windows)
    falls = data.is_fall & verdict.is_fall
    assert falls.any()
    assert (verdict.peak_g[falls] >= 2.2).all()
    assert (verdict.angle_deg[falls] >= 45).all()
    assert (verdict.still_std_g[falls] <= 0.15).all()
    # Raising the impact threshold above every peak silences the detector.
    assert not detect(data.windows, FallParams(impact_g=50.0)).is_fall.any()


def test_window_ending_at_the_impact_is_incomplete_not_a_fall() -> None:
    data = generate(60, seed=4)
    i = next(k for k, a in enumerate(data.activities) if a is Activity.FALL)
    peak = int(np.argmax(magnitude(data.windows[i : i + 1])[0]))
    cut = data.windows[i : i + 1, : peak + 10]
    verdict = detect(cut)
    assert not verdict.complete[0]
    assert not verdict.is_fall[0]


def test_bad_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        detect(np.zeros((2, 100)))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_verdict_does_not_depend_on_how_the_device_is_worn(seed: int) -> None:
    # Magnitudes and angles are invariant under rotation of the device frame, so a pendant
    # worn twisted must get the same verdicts.
    data = generate(24, seed=11)
    rotated = data.windows @ _rotation(np.random.default_rng(seed)).T
    assert np.array_equal(detect(rotated).is_fall, detect(data.windows).is_fall)
