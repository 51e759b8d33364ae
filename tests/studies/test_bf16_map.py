"""The learned-attribute tally and Fisher's exact test of studies/bf16_map.py."""

from __future__ import annotations

import pytest

from studies.bf16_map import attributes_learned, fisher_one_sided, sign_test_one_sided


def test_fisher_matches_the_tea_tasting_table() -> None:
    # 3 of 4 against 1 of 4: P(1 or fewer) = (1 + 4 * 4) / C(8, 4) = 17 / 70
    assert fisher_one_sided((3, 4), (1, 4)) == pytest.approx(17 / 70)


def test_fisher_none_of_four_against_three_of_five() -> None:
    # the only table as extreme: C(4, 0) * C(5, 3) / C(9, 3) = 10 / 84
    assert fisher_one_sided((3, 5), (0, 4)) == pytest.approx(10 / 84)


def test_fisher_grows_with_b_and_is_one_when_b_has_every_hit() -> None:
    ps = [fisher_one_sided((4 - k, 5), (k, 4)) for k in range(5)]
    assert ps == sorted(ps) and ps[0] < ps[-1]
    assert ps[-1] == pytest.approx(1.0)


def test_sign_test_three_discordant_seeds_all_one_way() -> None:
    """fp32 alone learned it on 3 seeds, bf16 alone on none: 1/8."""
    assert sign_test_one_sided(3, 0) == pytest.approx(1 / 8)


def test_sign_test_counts_the_tail_and_is_one_without_discordant_seeds() -> None:
    assert sign_test_one_sided(2, 1) == pytest.approx(4 / 8)
    assert sign_test_one_sided(1, 2) == pytest.approx(7 / 8)
    assert sign_test_one_sided(0, 3) == 1.0
    assert sign_test_one_sided(0, 0) == 1.0


def _run(aps: dict[str, float]) -> dict:
    return {"stage1_per_attribute": aps}


def test_attributes_learned_counts_runs_at_the_bar() -> None:
    per_seed = [
        {"fp32": _run({"a": 0.99, "b": 0.3}), "bf16": _run({"a": 0.2, "b": 0.95})},
        {"fp32": _run({"a": 0.90, "b": 0.3}), "bf16": _run({"a": 0.89, "b": 0.3})},
    ]
    tally = attributes_learned(per_seed)
    assert tally["a"]["fp32"] == "2/2" and tally["a"]["bf16"] == "0/2"
    assert tally["a"]["p_bf16_learns_fewer"] == pytest.approx(1 / 6, abs=1e-4)
    assert tally["a"]["seeds_fp32_only"] == 2 and tally["a"]["seeds_bf16_only"] == 0
    assert tally["a"]["p_paired"] == pytest.approx(1 / 4)
    assert tally["b"] == {
        "fp32": "0/2",
        "bf16": "1/2",
        "p_bf16_learns_fewer": 1.0,
        "seeds_fp32_only": 0,
        "seeds_bf16_only": 1,
        "p_paired": 1.0,
    }
    assert "fp32_jitter" not in tally["a"]


def test_figures_have_a_row_per_dataset_and_seed() -> None:
    import argparse

    from benchmarks.harness import figures_document
    from studies.bf16_map import figures

    def seed(fp32: float, bf16: float) -> dict:
        return {
            "fp32": {"stage1_test_map": fp32},
            "bf16": {"stage1_test_map": bf16},
            "stage1_test_map_bf16_minus_fp32": round(bf16 - fp32, 4),
        }

    result = {
        "steps_a_stage": 30,
        "threads": 2,
        "d": {"seed0": seed(0.9, 0.8), "seed3": seed(0.7, 0.75), "stage1_test_map_mean": 0.0},
    }
    args = argparse.Namespace(datasets=["d"], n_train=400)
    doc = figures_document(figures(result, args), source="python -m studies.bf16_map")
    assert doc["columns"][:2] == ["dataset", "seed"]
    assert doc["rows"] == [["d", 0, 0.9, 0.8, -0.1], ["d", 3, 0.7, 0.75, 0.05]]
