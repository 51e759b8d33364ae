"""Config composition, overrides and the errors a user sees."""

from __future__ import annotations

import pytest
import yaml

from asen import AsenError
from asen.config import PACKAGED, Config, config_from_dict, load_config


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def packaged(name: str) -> dict:
    return yaml.safe_load((PACKAGED / f"{name}.yaml").read_text())


# ------------------------------------------------------------------ composition


def test_defaults_without_files():
    cfg = load_config()
    assert cfg == Config()


def test_packaged_names_compose_in_order():
    small, stage2 = packaged("small"), packaged("stage2")
    cfg = load_config(["stage2", "small"])
    # small's model sizes ...
    for key, value in small["model"].items():
        assert getattr(cfg.model, key) == value, key
    # ... and stage2's schedule (small does not set it)
    assert "lr_step" not in small["train"]
    assert cfg.train.lr_step == stage2["train"]["lr_step"] != Config().train.lr_step
    assert cfg.train.lr_global == stage2["train"]["lr_global"]
    assert cfg.train.epochs == stage2["train"]["epochs"]


def test_stage1_and_small():
    cfg = load_config(["stage1", "small"])
    assert cfg.model.global_backbone == packaged("small")["model"]["global_backbone"]
    assert cfg.model.image_size == packaged("small")["model"]["image_size"]
    assert cfg.train.lr_step == packaged("stage1")["train"]["lr_step"]
    assert cfg.train.epochs == packaged("stage1")["train"]["epochs"]


def test_later_file_overrides_earlier():
    small_lr = packaged("small")["train"]["lr"]
    stage1_lr = packaged("stage1")["train"]["lr"]
    assert small_lr != stage1_lr  # otherwise the test proves nothing
    assert load_config(["stage1", "small"]).train.lr == small_lr
    assert load_config(["small", "stage1"]).train.lr == stage1_lr


def test_yaml_path_and_override_between_user_files(tmp_path):
    a = write_yaml(
        tmp_path / "a.yaml", {"train": {"epochs": 7, "margin": 0.5}, "data": {"name": "x"}}
    )
    b = write_yaml(tmp_path / "b.yml", {"train": {"epochs": 9}})
    cfg = load_config([a, b])
    assert cfg.train.epochs == 9
    assert cfg.train.margin == 0.5  # untouched by b
    assert cfg.data.name == "x"
    assert load_config([b, a]).train.epochs == 7


def test_yaml_path_combined_with_packaged(tmp_path):
    mine = write_yaml(tmp_path / "mine.yaml", {"model": {"embed_dim": 32}})
    cfg = load_config(["FashionAI", "small", mine])
    assert cfg.model.embed_dim == 32
    assert cfg.model.global_backbone == packaged("small")["model"]["global_backbone"]
    assert cfg.data.name == "FashionAI"


def test_empty_yaml_file_is_fine(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_config([str(empty)]) == Config()


def test_set_overrides_files_and_parses_types():
    cfg = load_config(
        ["small"],
        [
            "train.epochs=3",
            "train.lr=0.5",
            "train.margin=1e-2",  # YAML 1.1 reads this as a string; the float field takes it
            "data.skip_bad_images=true",
            "model.weights=null",
            "data.name=my shop",
            "model.beta=1",  # int into a float field
        ],
    )
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.lr == 0.5 and type(cfg.train.lr) is float
    assert cfg.train.margin == pytest.approx(0.01) and type(cfg.train.margin) is float
    assert cfg.data.skip_bad_images is True
    assert cfg.model.weights is None
    assert cfg.data.name == "my shop"
    assert cfg.model.beta == 1.0 and type(cfg.model.beta) is float


def test_set_string_value_and_later_set_wins():
    cfg = load_config([], ["model.weights=imagenet", "train.epochs=2", "train.epochs=5"])
    assert cfg.model.weights == "imagenet"
    assert cfg.train.epochs == 5


def test_set_attributes_list():
    cfg = load_config(
        ["FashionAI"], ["data.attributes=[{name: a, values: 3}, {name: b, values: 4}]"]
    )
    assert [(a.name, a.values) for a in cfg.data.attributes] == [("a", 3), ("b", 4)]


# ------------------------------------------------------------------ errors


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    bad = write_yaml(tmp_path / "typo.yaml", {"model": {"backbon": "resnet18"}})
    with pytest.raises(AsenError) as e:
        load_config(["small", bad])
    msg = str(e.value)
    assert "model.backbon" in msg
    assert bad in msg


def test_unknown_section_in_file(tmp_path):
    bad = write_yaml(tmp_path / "sec.yaml", {"trian": {"epochs": 1}})
    with pytest.raises(AsenError, match="trian") as e:
        load_config([bad])
    assert bad in str(e.value)


def test_section_that_is_not_a_mapping(tmp_path):
    bad = write_yaml(tmp_path / "m.yaml", {"model": [1, 2]})
    with pytest.raises(AsenError, match="model") as e:
        load_config([bad])
    assert bad in str(e.value)


def test_invalid_yaml_names_file_in_one_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(AsenError) as e:
        load_config([str(bad)])
    assert str(bad) in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_set_names_it():
    with pytest.raises(AsenError, match=r"model\.nope"):
        load_config(["small"], ["model.nope=1"])
    with pytest.raises(AsenError, match="nosection"):
        load_config([], ["nosection.x=1"])


def test_set_without_equals_is_an_error():
    with pytest.raises(AsenError, match="key=value"):
        load_config([], ["train.epochs"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epochs=many", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.epochs=true", "train.epochs"),  # a bool is not an int
        ("train.lr=fast", "train.lr"),
        ("data.skip_bad_images=3", "data.skip_bad_images"),
        ("data.workers=null", "data.workers"),
        ("data.attributes=5", "data.attributes"),
    ],
)
def test_wrong_type_in_set_names_field(override, field):
    with pytest.raises(AsenError) as e:
        load_config([], [override])
    assert field in str(e.value)


def test_wrong_type_in_file_names_field_and_that_file(tmp_path):
    bad = write_yaml(tmp_path / "types.yaml", {"train": {"lr": "fast"}})
    good = write_yaml(tmp_path / "good.yaml", {"train": {"epochs": 2}})
    with pytest.raises(AsenError) as e:
        load_config([bad, good], ["train.seed=1"])
    msg = str(e.value)
    assert "train.lr" in msg
    assert bad in msg  # the file that holds the mistake, not the last one read
    assert good not in msg


def test_missing_yaml_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(AsenError, match="not found") as e:
        load_config([missing])
    assert missing in str(e.value)


def test_unknown_packaged_name_lists_packaged_configs():
    with pytest.raises(AsenError) as e:
        load_config(["nosuchconfig"])
    msg = str(e.value)
    assert "nosuchconfig" in msg
    for name in ("FashionAI", "DARN", "DeepFashion", "small", "stage1", "stage2"):
        assert name in msg


# ------------------------------------------------------------------ packaged datasets

# the published attribute lists of the three benchmarks (docs/data.md, "Configs")
FASHIONAI = [
    ("skirt_length", 6),
    ("sleeve_length", 9),
    ("coat_length", 8),
    ("pant_length", 6),
    ("collar_design", 5),
    ("lapel_design", 5),
    ("neckline_design", 10),
    ("neck_design", 5),
]
DARN = [20, 13, 55, 7, 28, 11, 26, 8, 17]
DEEPFASHION = [156, 218, 180, 216, 230]


def test_fashionai_attributes():
    cfg = load_config(["FashionAI"])
    assert cfg.data.name == "FashionAI"
    assert [(a.name, a.values) for a in cfg.data.attributes] == FASHIONAI


def test_darn_attributes():
    attrs = load_config(["DARN"]).data.attributes
    assert [a.values for a in attrs] == DARN
    assert len({a.name for a in attrs}) == 9


def test_deepfashion_attributes():
    attrs = load_config(["DeepFashion"]).data.attributes
    assert [a.values for a in attrs] == DEEPFASHION
    assert [a.name.split("_")[0] for a in attrs] == ["texture", "fabric", "shape", "part", "style"]


def test_stage_configs_have_reference_hyperparameters():
    s1, s2 = load_config(["stage1"]).train, load_config(["stage2"]).train
    assert (s1.lr, s1.lr_step, s1.lr_gamma, s1.epochs) == (1e-4, 3, 0.9, 50)
    assert (s2.lr, s2.lr_global, s2.lr_step, s2.lr_gamma, s2.epochs) == (1e-4, 1e-5, 1, 0.9, 20)
    assert (s1.margin, s1.batch_size, s1.triplets_per_epoch) == (0.2, 16, 100_000)


def test_dataset_config_composes_with_model_config():
    cfg = load_config(["DARN", "small"])
    assert [a.values for a in cfg.data.attributes] == DARN
    assert cfg.model.embed_dim == packaged("small")["model"]["embed_dim"]


# ------------------------------------------------------------------ round trip


def test_config_from_dict_round_trips():
    cfg = load_config(["FashionAI", "stage2", "small"], ["train.seed=7", "model.weights=imagenet"])
    back = config_from_dict(cfg.to_dict())
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()


def test_config_from_dict_partial_and_unknown():
    assert config_from_dict({"train": {"epochs": 4}}).train.epochs == 4
    with pytest.raises(AsenError, match="train.bogus"):
        config_from_dict({"train": {"bogus": 1}})


# ------------------------------------------------------------------ value ranges


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr_step=0", "train.lr_step must be at least 1, got 0"),
        ("model.embed_dim=-5", "model.embed_dim must be at least 1, got -5"),
        ("train.eval_batch_size=0", "train.eval_batch_size must be at least 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
        ("data.workers=-1", "data.workers must be at least 0, got -1"),
        ("train.lr=0", "train.lr must be greater than 0.0, got 0.0"),
        ("train.lr=.nan", "train.lr must be greater than 0.0, got nan"),
        ("model.beta=1.5", "model.beta must be at most 1.0, got 1.5"),
        ("train.seed=-1", "train.seed must be at least 0, got -1"),
    ],
)
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(AsenError) as e:
        load_config(["small"], [override])
    assert str(e.value) == f"--set {override.split('=')[0]}: {message}"


def test_out_of_range_value_in_a_file_names_the_file(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"model": {"local_size": 4}})
    with pytest.raises(AsenError, match=f"{path}: model.local_size must be at least 16, got 4"):
        load_config(["small", path])


def test_every_packaged_config_is_in_range():
    for path in sorted(PACKAGED.glob("*.yaml")):
        load_config([path.stem])


@pytest.mark.parametrize(
    "attrs, word",
    [
        ([{"name": "a,b", "values": 3}], "contain no comma"),
        ([{"name": "", "values": 3}], "non-empty"),
        ([{"name": "a", "values": 3}, {"name": "a", "values": 4}], "appears twice"),
        ([{"name": "a", "values": 0}], "at least 2 values"),
    ],
)
def test_attribute_names_are_checked_where_defined(tmp_path, attrs, word):
    path = write_yaml(tmp_path / "data.yaml", {"data": {"attributes": attrs}})
    with pytest.raises(AsenError, match=word) as e:
        load_config([path])
    assert str(e.value).startswith(f"{path}: data.attributes: attribute")


def test_set_value_that_is_not_yaml_is_text():
    assert load_config([], ["model.weights=[x].pt"]).model.weights == "[x].pt"
    with pytest.raises(AsenError, match="train.epochs must be int, got '\\[x'"):
        load_config([], ["train.epochs=[x"])
