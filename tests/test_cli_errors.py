"""User mistakes through the CLI: one line, exit code 1, never a traceback."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from asen.cli import app

runner = CliRunner()


def run_error(args: list[str]) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    out = result.output
    assert result.exit_code == 1, (result.exit_code, out, result.exception)
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("error:"), out
    return lines[0]


def make_root(tmp_path, labels: str):
    """A tiny dataset root in the split format with the given label_train.txt."""
    root = tmp_path / "data"
    for split, n in (("train", 4), ("valid", 3), ("test", 3)):
        (root / split).mkdir(parents=True)
        names = []
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 60, 20, 90)).save(root / split / f"{i}.png")
            names.append(f"{split}/{i}.png")
        (root / f"filenames_{split}.txt").write_text("\n".join(names) + "\n")
        if split != "train":
            (root / f"query_{split}.txt").write_text("0 0 0\n1 1 1\n")
            (root / f"candidate_{split}.txt").write_text("1 0 0\n2 0 1\n2 1 1\n")
    (root / "label_train.txt").write_text(labels)
    meta = {"attributes": [{"name": "collar", "values": 2}, {"name": "sleeve", "values": 3}]}
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root


def train_args(tmp_path, root, *extra) -> list:
    return [
        "train",
        "--data",
        root,
        "-c",
        "small",
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    ]


# ------------------------------------------------------------------ eval / embed


def test_eval_missing_checkpoint(tmp_path):
    line = run_error(["eval", "/nonexistent.pt", "--data", tmp_path])
    assert "checkpoint not found" in line
    assert "/nonexistent.pt" in line


def test_embed_missing_checkpoint(tmp_path):
    line = run_error(["embed", "/nonexistent.pt", "--data", tmp_path, "--out", tmp_path / "e.npz"])
    assert "checkpoint not found" in line
    assert not (tmp_path / "e.npz").exists()


def test_eval_foreign_file_as_checkpoint(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a checkpoint\n")
    line = run_error(["eval", bogus, "--data", tmp_path])
    assert str(bogus) in line


def test_eval_unknown_backend_lists_the_valid_ones(tmp_path):
    line = run_error(["eval", "/nonexistent.pt", "--data", tmp_path, "--backend", "tpu"])
    assert "tpu" in line and all(f"'{b}'" in line for b in ("torch", "onnx", "trt", "triton"))


@pytest.mark.parametrize(
    "backend, extra, option",
    [
        ("torch", ["--send-bytes"], "--send-bytes"),
        ("tpu", ["--send-bytes"], "--backend"),  # the backend name is checked first
        ("torch", ["--url", "127.0.0.1:8001"], "--url"),
        ("onnx", ["--protocol", "http"], "--protocol"),
        ("triton", ["--device", "cpu"], "--device"),
    ],
)
def test_an_option_the_backend_cannot_honour_is_one_line(tmp_path, backend, extra, option):
    args = ["eval", "/nonexistent.pt", "--data", tmp_path, "--backend", backend, *extra]
    line = run_error(args)
    assert option in line and backend in line


def test_trt_refuses_the_cpu(tmp_path):
    line = run_error(
        ["embed", tmp_path, "--data", tmp_path, "--out", tmp_path / "e.npz"]
        + ["--backend", "trt", "--device", "cpu"]
    )
    assert "--backend trt" in line and "--device cpu" in line
    assert not (tmp_path / "e.npz").exists()


def test_version():
    import asen

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"asen {asen.__version__}"


# ------------------------------------------------------------------ train


def test_train_bad_split_line_names_file_and_line(tmp_path):
    root = make_root(tmp_path, labels="0 0 1 1 2\n1 0 0\n2 1 x\n3 0 1\n")
    line = run_error(train_args(tmp_path, root))
    assert f"{root / 'label_train.txt'}:3" in line
    assert "not an integer" in line


def test_train_value_out_of_range(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n1 1 3\n")
    line = run_error(train_args(tmp_path, root))
    assert f"{root / 'label_train.txt'}:2" in line
    assert "sleeve" in line


def test_train_missing_images(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n1 0 0\n")
    (root / "train" / "1.png").unlink()
    (root / "train" / "3.png").unlink()
    line = run_error(train_args(tmp_path, root))
    assert "2 image files missing" in line
    assert str(root / "train" / "1.png") in line


def test_train_missing_data_root(tmp_path):
    line = run_error(train_args(tmp_path, tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in line


def test_train_unknown_config(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n")
    line = run_error(["train", "--data", root, "-c", "nosuchconfig", "--out", tmp_path / "run"])
    assert "nosuchconfig" in line
    assert "FashionAI" in line and "small" in line  # lists the packaged configs


def test_train_unknown_key_in_config_file(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n")
    bad = tmp_path / "mine.yaml"
    bad.write_text("model:\n  backbon: resnet18\n")
    line = run_error(train_args(tmp_path, root, "-c", bad))
    assert "model.backbon" in line and str(bad) in line


def test_train_set_unknown_key(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n")
    line = run_error(train_args(tmp_path, root, "--set", "model.nope=1"))
    assert "model.nope" in line


def test_train_set_wrong_type(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n")
    line = run_error(train_args(tmp_path, root, "--set", "train.batch_size=big"))
    assert "train.batch_size" in line


def test_train_resume_without_run(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n")
    line = run_error(train_args(tmp_path, root, "--resume"))
    assert "last.pt" in line


# ------------------------------------------------------------------ data synth


@pytest.mark.parametrize(
    "attributes, word",
    [
        ("3,x,4", "comma-separated integers"),
        ("3,,4", "comma-separated integers"),
        ("1,3", "attr0"),  # one value cannot be an attribute
        ("3,99", "attr1"),
        (",".join(["3"] * 20), "attributes"),
    ],
)
def test_synth_bad_attributes(tmp_path, attributes, word):
    out = tmp_path / "synth"
    line = run_error(
        ["data", "synth", out, "--train", "10", "--eval", "5", "--attributes", attributes]
    )
    assert word in line
    assert not (out / "label_train.txt").exists()


def test_synth_too_few_images(tmp_path):
    line = run_error(["data", "synth", tmp_path / "s", "--train", "2"])
    assert "--train" in line and "10" in line


def test_train_stage_out_of_range(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n")
    line = run_error(train_args(tmp_path, root, "--stage", "3"))
    assert "stage" in line


def test_error_text_is_not_read_as_markup(tmp_path):
    """A message quoting user text with square brackets prints as it is."""
    root = make_root(tmp_path, labels="0 0 1\n1 [/x] [bold]1\n")
    line = run_error(train_args(tmp_path, root))
    assert f"{root / 'label_train.txt'}:2" in line
    assert "[/x] [bold]1" in line


# ------------------------------------------------------------------ bad paths and values


def test_output_paths_are_checked_before_the_work(tmp_path):
    """A folder given for an output file is refused before the model is even opened (a
    full evaluation used to run and then fail to write its result)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    root = make_root(tmp_path, labels="0 0 1\n")
    image = root / "test" / "0.png"
    for args, option in [
        (["eval", "/nonexistent.pt", "--data", root, "--json", folder], "--json"),
        (["embed", "/nonexistent.pt", "--data", root, "--out", folder], "--out"),
        (["explain", image, "--model", "/nonexistent.pt", "--out", folder], "--out"),
        (["eval", "/nonexistent.pt", "--data", root, "--json", image / "x.json"], "--json"),
    ]:
        line = run_error(args)
        assert f"'{option}'" in line and "checkpoint" not in line, line


@pytest.mark.parametrize(
    "args, option",
    [
        (["eval", "m.pt", "--data", ".", "--batch-size", "0"], "--batch-size"),
        (["eval", "m.pt", "--data", ".", "--workers", "-1"], "--workers"),
        (["serve", "--http-port", "-1"], "--http-port"),
        (["serve", "--grpc-port", "70000"], "--grpc-port"),
        (["data", "synth", "out", "--seed", "-1"], "--seed"),
    ],
)
def test_out_of_range_options_are_one_line(tmp_path, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    line = run_error(args)
    assert f"'{option}'" in line


def test_synth_into_a_file_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    line = run_error(["data", "synth", afile, "--train", "10", "--eval", "5"])
    assert f"{afile}: exists and is not a folder" in line
    assert afile.read_text() == "mine\n"


def test_train_config_values_are_checked(tmp_path):
    root = make_root(tmp_path, labels="0 0 1\n")
    for override, words in [
        ("train.lr_step=0", "train.lr_step must be at least 1"),
        ("model.embed_dim=-5", "model.embed_dim must be at least 1"),
        ("train.eval_batch_size=0", "train.eval_batch_size must be at least 1"),
    ]:
        line = run_error(train_args(tmp_path, root, "--set", override))
        assert words in line
    assert not (tmp_path / "run").exists()


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    import torch

    root = make_root(tmp_path, labels="0 0 1\n1 0 1\n2 0 0\n3 1 2\n")
    weights = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(3)}, weights)
    line = run_error(train_args(tmp_path, root, "--weights", weights))
    assert f"{weights}: not resnet_tiny weights" in line
