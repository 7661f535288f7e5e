"""The Markov removal-effect model (CONTRACT.md section 8): hand-worked chains, the edge cases, and a
cross-check against ChannelAttribution on the same paths."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.attribution import Touchpoint, credits
from streams.core.markov import (
    CONVERSION,
    NULL,
    START,
    PathCounts,
    conversion_probability,
    counts_of,
    markov_credits,
    markov_messages,
    path_transitions,
    removal_effects,
    shares,
)

HALF_LIFE = 7 * 86_400_000


def effects_of(*paths: tuple[str, bool]) -> dict[str, float]:
    """Paths written as 'a>b' with whether they converted."""
    return removal_effects(counts_of((p.split(">"), converted, 0.0) for p, converted in paths).transitions)


def test_a_path_adds_start_each_consecutive_pair_and_its_end() -> None:
    assert path_transitions(["a", "a", "b"], True) == [(START, "a"), ("a", "a"), ("a", "b"), ("b", CONVERSION)]
    assert path_transitions(["c"], False) == [(START, "c"), ("c", NULL)]
    assert path_transitions([], True) == []


def test_one_converting_and_one_null_channel() -> None:
    # start -> a 1/2 -> conversion; start -> b 1/2 -> null. P = 1/2, P_a = 0, P_b = 1/2.
    effects = effects_of(("a", True), ("b", False))
    assert effects == pytest.approx({"a": 1.0, "b": 0.0})
    assert shares(effects) == pytest.approx({"a": 1.0, "b": 0.0})


def test_a_hand_worked_chain_of_two_channels() -> None:
    # start -> a 2/3, start -> b 1/3; a -> b 1/2, a -> null 1/2; b -> conversion 1.
    # P = 2/3 * 1/2 + 1/3 = 2/3; without a: 1/3, RE(a) = 1/2; without b: 0, RE(b) = 1.
    counts = counts_of([(["a", "b"], True, 0.0), (["a"], False, 0.0), (["b"], True, 0.0)])
    assert conversion_probability(counts.transitions, ["a", "b"]) == pytest.approx(2 / 3)
    assert conversion_probability(counts.transitions, ["a", "b"], removed="a") == pytest.approx(1 / 3)
    effects = removal_effects(counts.transitions)
    assert effects == pytest.approx({"a": 0.5, "b": 1.0})
    assert shares(effects) == pytest.approx({"a": 1 / 3, "b": 2 / 3})


def test_a_channel_to_itself_is_a_transition_of_the_chain() -> None:
    # a -> a 1/3, a -> conversion 1/3, a -> null 1/3: P = (1/3) / (1 - 1/3) = 1/2.
    counts = counts_of([(["a", "a"], True, 0.0), (["a"], False, 0.0)])
    assert counts.transitions[("a", "a")] == 1
    assert conversion_probability(counts.transitions, ["a"]) == pytest.approx(0.5)


def test_a_loop_between_channels_is_solved_exactly() -> None:
    # start -> a; a -> b 2/3, a -> conversion 1/3; b -> a 1/2, b -> null 1/2.
    # x_a = 1/3 + 2/3 x_b, x_b = x_a / 2  =>  x_a = 1/2; without b: 1/3.
    counts = counts_of([(["a", "b", "a"], True, 0.0), (["a", "b"], False, 0.0)])
    assert counts.transitions == Counter({(START, "a"): 2, ("a", "b"): 2, ("b", "a"): 1, ("a", CONVERSION): 1,
                                          ("b", NULL): 1})
    assert conversion_probability(counts.transitions, ["a", "b"]) == pytest.approx(1 / 2)
    assert removal_effects(counts.transitions) == pytest.approx({"a": 1.0, "b": 1 - (1 / 3) / (1 / 2)})


def test_a_channel_that_never_leads_to_a_conversion_gets_zero() -> None:
    effects = effects_of(("a>c", False), ("c", False), ("a", True), ("b>a", True), ("c>c", False))
    assert effects["c"] == 0.0
    assert shares(effects)["c"] == 0.0


def test_a_channel_that_ends_every_converting_path_gets_one() -> None:
    effects = effects_of(("a>c", True), ("c", True), ("b>a>c", True), ("a", False), ("b", False), ("c>b", False))
    assert effects["c"] == pytest.approx(1.0)
    assert effects["a"] < 1.0 and effects["b"] < 1.0


def test_nothing_converting_gives_every_channel_zero() -> None:
    assert effects_of(("a", False), ("b>a", False)) == {"a": 0.0, "b": 0.0}
    assert shares({"a": 0.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}


def test_no_paths_no_channels() -> None:
    assert removal_effects(Counter()) == {}
    assert markov_messages(PathCounts(), 1) == []


def test_counts_take_a_path_away_exactly() -> None:
    counts = counts_of([(["a", "b"], True, 10.0), (["b"], False, 0.0), (["c"], True, 5.0)])
    counts.add_path(["b"], False, sign=-1)
    counts.add_path(["c"], True, 5.0, sign=-1)
    assert counts == counts_of([(["a", "b"], True, 10.0)])
    assert PathCounts.from_json(counts.to_json()) == counts


def test_messages_carry_the_contract_figures() -> None:
    counts = counts_of([(["a", "b"], True, 30.0), (["a"], False, 0.0), (["b"], True, 60.0)])
    messages = {m["channel"]: m for m in markov_messages(counts, 1763800000000)}
    assert set(messages) == {"a", "b"}
    b = messages["b"]
    assert (b["paths"], b["converting_paths"], b["null_paths"]) == (3, 2, 1)
    assert b["share"] == pytest.approx(2 / 3) and b["removal_effect"] == pytest.approx(1.0)
    assert b["conversions"] == pytest.approx(2 * 2 / 3) and b["revenue"] == pytest.approx(90 * 2 / 3)
    assert b["computed_at"] == 1763800000000
    assert b["last_click_share"] == pytest.approx(1.0) and messages["a"]["last_click_share"] == 0.0


# -- the per-conversion credit -------------------------------------------------------------------------
def touch(ts: int, channel: str, campaign: str = "(none)") -> Touchpoint:
    return Touchpoint(ts, "c", channel, campaign, None, f"e{ts}")


def test_a_conversion_is_credited_by_removal_effect_split_over_its_touchpoints() -> None:
    journey = [touch(1, "a", "x"), touch(2, "b"), touch(3, "a", "y")]
    got = {(c.channel, c.campaign): c.weight for c in markov_credits(journey, {"a": 0.6, "b": 0.2, "z": 0.9}, 3,
                                                                    HALF_LIFE)}
    assert got == pytest.approx({("a", "x"): 0.375, ("a", "y"): 0.375, ("b", "(none)"): 0.25})


def test_with_no_removal_effect_known_or_all_zero_the_credit_is_linear() -> None:
    journey = [touch(1, "a"), touch(2, "b"), touch(3, "b")]
    linear = credits("linear", journey, 3, HALF_LIFE)
    assert markov_credits(journey, {}, 3, HALF_LIFE) == linear
    assert markov_credits(journey, {"a": 0.0, "b": 0.0, "c": 0.5}, 3, HALF_LIFE) == linear


def test_a_conversion_without_touchpoints_is_direct() -> None:
    assert [c.channel for c in markov_credits([], {"a": 1.0}, 3, HALF_LIFE)] == ["(direct)"]


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(["x", "y"])), min_size=1, max_size=8),
       st.dictionaries(st.sampled_from("abcd"), st.floats(0, 1)))
def test_markov_credits_sum_to_one(path: list[tuple[str, str]], effects: dict[str, float]) -> None:
    journey = [touch(i, channel, campaign) for i, (channel, campaign) in enumerate(path)]
    assert sum(c.weight for c in markov_credits(journey, effects, len(path), HALF_LIFE)) == pytest.approx(1.0)


# -- the cross-check with ChannelAttribution ------------------------------------------------------------
def seeded_paths(seed: int, n: int) -> list[tuple[list[str], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        channels = [rng.choice(["search", "social", "email", "display", "video"]) for _ in range(rng.randint(1, 5))]
        odds = 0.05 + 0.35 * ("email" in channels) + 0.2 * (channels[-1] == "search") - 0.04 * ("display" in channels)
        out.append((channels, rng.random() < odds))
    return out


def channel_attribution_frame(paths: list[tuple[list[str], bool]]):  # noqa: ANN201 - a pandas DataFrame
    pandas = pytest.importorskip("pandas")
    by_path: dict[str, list[int]] = {}
    for channels, converted in paths:
        by_path.setdefault(">".join(channels), [0, 0])[0 if converted else 1] += 1
    return pandas.DataFrame([{"path": p, "conv": c, "null": n} for p, (c, n) in by_path.items()])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shares_agree_with_channel_attribution_markov_model_within_0_01(seed: int) -> None:
    ca = pytest.importorskip("ChannelAttribution")
    paths = seeded_paths(seed, 3000)
    ours = shares(removal_effects(counts_of((c, converted, 0.0) for c, converted in paths).transitions))
    out = ca.markov_model(channel_attribution_frame(paths), "path", "conv", var_null="null", order=1,
                          out_more=True, nsim_start=1e6, seed=seed, verbose=False, flg_pro=False)
    re = dict(zip(out["removal_effects"]["channel_name"], out["removal_effects"]["removal_effect"], strict=True))
    theirs = shares(re)
    assert set(theirs) == set(ours)
    for channel in ours:
        assert ours[channel] == pytest.approx(theirs[channel], abs=0.01), channel
    conversions = sum(converted for _, converted in paths)
    attributed = dict(zip(out["result"]["channel_name"], out["result"]["total_conversions"], strict=True))
    for channel in ours:
        assert ours[channel] * conversions == pytest.approx(attributed[channel], abs=0.01 * conversions)


@pytest.mark.parametrize("seed", [4, 5])
def test_first_last_and_linear_sums_equal_channel_attribution_heuristics(seed: int) -> None:
    ca = pytest.importorskip("ChannelAttribution")
    paths = seeded_paths(seed, 2000)
    sums: dict[str, Counter[str]] = {model: Counter() for model in ("first_click", "last_click", "linear")}
    for channels, converted in paths:
        if not converted:
            continue
        journey = [touch(i, channel) for i, channel in enumerate(channels)]
        for model, total in sums.items():
            for credit in credits(model, journey, len(channels), HALF_LIFE):  # type: ignore[arg-type]
                total[credit.channel] += credit.weight
    heuristics = ca.heuristic_models(channel_attribution_frame(paths), "path", "conv", flg_pro=False)
    for model, column in (("first_click", "first_touch"), ("last_click", "last_touch"), ("linear", "linear_touch")):
        theirs = dict(zip(heuristics["channel_name"], heuristics[column], strict=True))
        assert set(theirs) == set(sums[model]) | {c for c, v in theirs.items() if v == 0}
        for channel, value in theirs.items():
            assert sums[model][channel] == pytest.approx(value, rel=1e-12, abs=1e-9), (model, channel)
