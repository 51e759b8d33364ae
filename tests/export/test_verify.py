"""Verification figures (Polygraphy's: max / mean / p99 abs difference, min / mean cosine,
mAP drop) and the per-precision tolerances with the user's overrides."""

from __future__ import annotations

import numpy as np
import pytest
from asen.export.verify import ONNX_TOLERANCE, Parity, compare, require, tolerance_for

from asen import AsenError


def test_compare_figures():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16)).astype(np.float32)
    cand = ref.copy()
    cand[3] = -cand[3]  # one row pointing the other way
    cand[7, 0] += 0.5
    parity = compare(ref, cand)
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    assert parity.rows == 200
    assert parity.max_abs_diff == pytest.approx(diff.max())
    assert parity.mean_abs_diff == pytest.approx(diff.mean())
    assert parity.p99_abs_diff == pytest.approx(np.percentile(diff, 99))
    assert parity.min_cosine == pytest.approx(-1.0)
    assert parity.mean_cosine < 0.99 and parity.mean_cosine > 0.98


def test_tolerances_and_overrides():
    assert tolerance_for("fp32") == ONNX_TOLERANCE
    fp16, int8 = tolerance_for("fp16"), tolerance_for("int8")
    assert (fp16.min_cosine, fp16.max_map_drop) == (0.999, 0.005)
    assert (int8.max_map_drop, int8.min_mean_cosine) == (0.01, 0.999)
    loose = tolerance_for("int8", max_map_drop=0.02, min_cosine=0.9)
    assert (loose.max_map_drop, loose.min_cosine, loose.min_mean_cosine) == (0.02, 0.9, 0.9)


def test_map_drop_and_mean_cosine_decide():
    tol = tolerance_for("int8")
    good = Parity(10, 0.05, 0.97, mean_cosine=0.9995, map_reference=0.8, map_candidate=0.795)
    assert good.within(tol) and good.map_drop == pytest.approx(0.005)
    assert "mAP 0.7950 vs PyTorch 0.8000 (drop +0.0050)" in str(good)
    worse_map = Parity(10, 0.05, 0.97, mean_cosine=0.9995, map_reference=0.8, map_candidate=0.78)
    low_mean = Parity(10, 0.05, 0.97, mean_cosine=0.99, map_reference=0.8, map_candidate=0.8)
    higher_map = Parity(10, 0.05, 0.97, mean_cosine=0.9995, map_reference=0.8, map_candidate=0.9)
    assert not worse_map.within(tol) and not low_mean.within(tol) and higher_map.within(tol)
    with pytest.raises(AsenError, match=r"int8 vs PyTorch parity check failed: .*drop \+0\.0200"):
        require(worse_map, tol, "int8")
    assert Parity(4, 0.0, 1.0).figures()["parity_rows"] == "4"
    assert "map" in good.figures() and "map" not in Parity(4, 0.0, 1.0).figures()
