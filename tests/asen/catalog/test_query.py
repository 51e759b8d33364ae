"""The index search parameters every catalog query sends to Milvus (asen.catalog.query)."""

from __future__ import annotations

from asen.catalog.query import SEARCH_PARAMS, index_search_params


def test_hnsw_ef_is_the_default_or_the_limit_whichever_is_larger():
    default = SEARCH_PARAMS["hnsw"]["ef"]
    assert index_search_params("hnsw", limit=19)["params"]["ef"] == default
    assert index_search_params("hnsw", limit=default + 500)["params"]["ef"] == default + 500


def test_tuning_overrides_the_defaults_and_is_raised_to_the_limit_too():
    assert index_search_params("hnsw", limit=19, tuning={"ef": 64})["params"] == {"ef": 64}
    assert index_search_params("hnsw", limit=100, tuning={"ef": 64})["params"] == {"ef": 100}
    assert index_search_params("ivf", limit=19, tuning={"nprobe": 8})["params"] == {"nprobe": 8}


def test_other_indexes_keep_their_parameters_and_all_rank_by_inner_product():
    for index in ("flat", "ivf"):
        params = index_search_params(index, limit=5000)
        assert params == {"metric_type": "IP", "params": SEARCH_PARAMS[index]}
