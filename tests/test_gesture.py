"""Gesture recognition, by properties over random press timings (hypothesis).

The properties are stated from the configuration, not from the detector's algorithm:
- every valid gesture fires, exactly once, at the right moment;
- anything that fires was a valid gesture (soundness);
- bounces shorter than the debounce time change nothing;
- presses or gaps too short to be human never fire.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sosbeacon.device.gesture import (
    Detected,
    Edge,
    Gesture,
    GestureConfig,
    GestureDetector,
    Press,
)

C = GestureConfig()  # 3 s long press; 5 presses, gaps < 0.6 s; debounce 30 ms


def run(
    edges: list[Edge], config: GestureConfig = C, *, timers: bool = True
) -> tuple[list[Detected], int]:
    """Feed edges in order, firing the detector's timers when they fall due (or, with
    ``timers=False``, only at the very end, as a loop that woke late would)."""
    d = GestureDetector(config)
    fired: list[Detected] = []
    presses = 0

    def take(events: list[Detected | Press]) -> None:
        nonlocal presses
        for e in events:
            if isinstance(e, Detected):
                fired.append(e)
            else:
                presses += 1

    for edge in edges:
        while timers and (dl := d.deadline()) is not None and dl <= edge.t:
            take(d.on_timer(dl))
        take(d.on_edge(edge))
    while (dl := d.deadline()) is not None:
        take(d.on_timer(dl))
    return fired, presses


def edges_of(presses: list[tuple[float, float]]) -> list[Edge]:
    out = []
    for down, up in presses:
        out += [Edge(down, True), Edge(up, False)]
    return out


def presses_from(start: float, spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(held, gap-after) pairs → absolute (down, up) times."""
    out, t = [], start
    for held, gap in spans:
        out.append((t, t + held))
        t += held + gap
    return out


human_press = st.floats(min_value=C.min_press + 0.01, max_value=C.long_press - 0.1)
human_gap = st.floats(min_value=C.min_gap + 0.01, max_value=C.max_gap - 0.01)
#: exactly one valid rapid multi-press, as (hold, gap-after) pairs
valid_gesture = st.lists(st.tuples(human_press, human_gap), min_size=C.presses, max_size=C.presses)


@settings(max_examples=300)
@given(valid_gesture)
def test_every_valid_multi_press_fires_once_on_the_last_release(
    spans: list[tuple[float, float]],
) -> None:
    presses = presses_from(10.0, spans)
    fired, _ = run(edges_of(presses))
    assert fired == [Detected(Gesture.MULTI_PRESS, presses[-1][1])]


@settings(max_examples=300)
@given(valid_gesture)
def test_multi_press_does_not_depend_on_timers_firing_between_edges(
    spans: list[tuple[float, float]],
) -> None:
    presses = presses_from(10.0, spans)
    assert run(edges_of(presses), timers=False) == run(edges_of(presses))


@settings(max_examples=200)
@given(st.floats(min_value=C.long_press, max_value=30), st.floats(min_value=0, max_value=100))
def test_every_long_press_fires_once_while_held(held: float, start: float) -> None:
    fired, _ = run(edges_of([(start, start + held)]))
    assert fired == [Detected(Gesture.LONG_PRESS, start + C.long_press)]


@settings(max_examples=300)
@given(
    st.integers(min_value=1, max_value=C.presses - 1),
    valid_gesture,
)
def test_too_few_presses_never_fire(n: int, spans: list[tuple[float, float]]) -> None:
    fired, _ = run(edges_of(presses_from(0.0, spans[:n])))
    assert fired == []


@settings(max_examples=300)
@given(
    valid_gesture,
    st.integers(min_value=1, max_value=C.presses - 1),
    st.floats(min_value=C.max_gap + 1e-6, max_value=5.0),  # clear of float rounding
)
def test_a_long_pause_in_the_middle_splits_the_gesture(
    spans: list[tuple[float, float]], where: int, pause: float
) -> None:
    spans = list(spans)
    held, _ = spans[where - 1]
    spans[where - 1] = (held, pause)
    fired, _ = run(edges_of(presses_from(0.0, spans)))
    assert fired == []


@settings(max_examples=300)
@given(
    valid_gesture,
    st.integers(min_value=0, max_value=C.presses - 1),
    st.floats(min_value=C.debounce + 0.001, max_value=C.min_press - 0.001),
)
def test_a_twitch_too_short_to_be_human_spoils_the_gesture(
    spans: list[tuple[float, float]], which: int, short: float
) -> None:
    spans = list(spans)
    spans[which] = (short, spans[which][1])
    fired, _ = run(edges_of(presses_from(0.0, spans)))
    assert fired == []


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=C.debounce + 0.001, max_value=C.min_press - 0.001),
            st.floats(min_value=C.debounce + 0.001, max_value=C.min_gap - 0.001),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_bursts_faster_than_a_finger_never_fire(spans: list[tuple[float, float]]) -> None:
    fired, _ = run(edges_of(presses_from(0.0, spans)))
    assert fired == []


@st.composite
def bouncy(draw: st.DrawFn, presses: list[tuple[float, float]]) -> list[Edge]:
    """Each edge followed by up to 4 bounces, all within the debounce time."""
    out: list[Edge] = []
    for down, up in presses:
        for t, level in ((down, True), (up, False)):
            out.append(Edge(t, level))
            n = draw(st.integers(min_value=0, max_value=4))
            offs = sorted(
                draw(
                    st.lists(
                        st.floats(min_value=0.0005, max_value=C.debounce * 0.9),
                        min_size=n,
                        max_size=n,
                        unique=True,
                    )
                )
            )
            lvl = level
            for o in offs:
                lvl = not lvl
                out.append(Edge(t + o, lvl))
            if lvl != level:  # the contact settles at the level of the edge
                out.append(Edge(t + C.debounce * 0.95, level))
    return out


@settings(max_examples=300)
@given(st.data(), valid_gesture)
def test_bounces_within_the_debounce_time_change_nothing(
    data: st.DataObject, spans: list[tuple[float, float]]
) -> None:
    presses = presses_from(1.0, spans)
    clean, n_clean = run(edges_of(presses))
    noisy, n_noisy = run(data.draw(bouncy(presses)))
    assert [d.gesture for d in noisy] == [d.gesture for d in clean] == [Gesture.MULTI_PRESS]
    assert abs(noisy[0].t - clean[0].t) <= C.debounce
    assert n_noisy == n_clean == C.presses


@settings(max_examples=500)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.001, max_value=4.0), st.floats(min_value=0.001, max_value=2.0)
        ),
        max_size=25,
    )
)
def test_whatever_fires_was_a_valid_gesture(spans: list[tuple[float, float]]) -> None:
    """Soundness over arbitrary timings (no bounces, so edges are the presses)."""
    spans = [(h, g) for h, g in spans if h > C.debounce and g > C.debounce]
    presses = presses_from(0.0, spans)
    fired, _ = run(edges_of(presses))
    for det in fired:
        if det.gesture is Gesture.LONG_PRESS:
            assert any(down + C.long_press == det.t and up >= det.t for down, up in presses)
        else:
            i = next(k for k, (_, up) in enumerate(presses) if up == det.t)
            assert i + 1 >= C.presses
            group = presses[i + 1 - C.presses : i + 1]
            for down, up in group:
                assert C.min_press <= up - down < C.long_press
            for (_, up), (down, _) in itertools.pairwise(group):
                assert C.min_gap <= down - up < C.max_gap


def test_six_presses_fire_once_and_ten_fire_twice() -> None:
    spans = [(0.15, 0.3)] * 10
    fired, _ = run(edges_of(presses_from(0, spans[:6])))
    assert len(fired) == 1
    fired, _ = run(edges_of(presses_from(0, spans)))
    assert [d.gesture for d in fired] == [Gesture.MULTI_PRESS] * 2


def test_configurable() -> None:
    cfg = GestureConfig(long_press=1.5, presses=3, max_gap=0.4)
    fired, _ = run(edges_of([(0, 1.6)]), cfg)
    assert fired == [Detected(Gesture.LONG_PRESS, 1.5)]
    fired, _ = run(edges_of(presses_from(0, [(0.1, 0.3)] * 3)), cfg)
    assert [d.gesture for d in fired] == [Gesture.MULTI_PRESS]


def test_invalid_config_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="presses"):
        GestureDetector(GestureConfig(presses=1))
    with pytest.raises(ValueError, match="debounce"):
        GestureDetector(GestureConfig(debounce=0.2))
