"""The one inference function: shapes, norms, attention, batching, stages and backbones."""

import pytest
import torch

from asen import AsenError
from asen.config import load_config
from asen.model.asen import ASENPP
from asen.model.backbones import BACKBONES, create_backbone


@pytest.fixture(scope="module")
def cfg():
    return load_config(["small"]).model


def _inputs(n: int, size: int, attrs: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return image, torch.randint(0, attrs, (n,), generator=g)


@pytest.mark.parametrize("stage", [1, 2])
def test_forward_shapes_and_norms(cfg, stage: int) -> None:
    torch.manual_seed(0)
    model = ASENPP(cfg, 5, stage).eval()
    image, attr = _inputs(4, cfg.source_size, 5)
    emb = model(image, attr)
    assert emb.shape == (4, model.embedding_dim) and emb.dtype == torch.float32
    # stage 1: unit vectors; stage 2: sqrt(beta) and sqrt(1-beta) parts, unit overall
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    if stage == 2:
        d = cfg.embed_dim
        torch.testing.assert_close(emb[:, :d].norm(dim=1) ** 2, torch.full((4,), cfg.beta))


def test_attention_maps_sum_to_one_and_depend_on_attribute(cfg) -> None:
    torch.manual_seed(0)
    model = ASENPP(cfg, 4, 2).eval()
    image, _ = _inputs(1, cfg.source_size, 4)
    with torch.no_grad():
        outs = [model.branches(image, torch.tensor([a])) for a in range(4)]
    for out in outs:
        torch.testing.assert_close(out.global_attention.sum(dim=(1, 2)), torch.ones(1))
        torch.testing.assert_close(out.local_attention.sum(dim=(1, 2)), torch.ones(1))
        assert (out.global_attention >= 0).all()
    assert not torch.allclose(outs[0].global_attention, outs[1].global_attention)


def test_batched_equals_per_sample(cfg) -> None:
    torch.manual_seed(0)
    model = ASENPP(cfg, 3, 2).eval()
    image, attr = _inputs(6, cfg.source_size, 3, seed=1)
    with torch.no_grad():
        batched = model(image, attr)
        single = torch.cat([model(image[i : i + 1], attr[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_stage1_weights_load_into_stage2(cfg) -> None:
    stage1 = ASENPP(cfg, 3, 1)
    stage2 = ASENPP(cfg, 3, 2)
    missing, unexpected = stage2.load_state_dict(stage1.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("local_branch.") for k in missing)


def test_crop_gets_no_gradient_but_both_branches_train(cfg) -> None:
    model = ASENPP(cfg, 3, 2).train()
    image, attr = _inputs(4, cfg.source_size, 3)
    out = model.branches(image, attr)
    assert not out.boxes.requires_grad
    (out.global_embedding.sum() + out.local_embedding.sum()).backward()
    assert model.global_branch.backbone[0].weight.grad is not None
    assert model.local_branch.backbone[0].weight.grad is not None


@pytest.mark.parametrize(
    "name,channels",
    [("resnet18", 256), ("resnet34", 256), ("resnet50", 1024), ("resnet_tiny", 128)],
)
def test_backbone_registry_channels_and_stride(name: str, channels: int) -> None:
    net, c = create_backbone(name, None)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 64))
    stride = 8 if name == "resnet_tiny" else 16
    assert c == channels and out.shape == (1, channels, 64 // stride, 64 // stride)


def test_backbone_weights_from_local_file(tmp_path) -> None:
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    net, _ = create_backbone("resnet18", str(path))
    torch.testing.assert_close(net[0].weight, full.conv1.weight)
    with pytest.raises(AsenError, match="not resnet50 weights"):
        create_backbone("resnet50", str(path))
    with pytest.raises(AsenError, match="weights file not found"):
        create_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_unknown_backbone_lists_valid() -> None:
    with pytest.raises(AsenError, match="valid: " + ", ".join(BACKBONES)):
        create_backbone("vgg", None)


def test_imagenet_download_failure_is_one_line(monkeypatch) -> None:
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network\nsecond line")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    from asen.model import backbones

    monkeypatch.setitem(backbones._TORCHVISION, "resnet18", (offline, "ResNet18_Weights", 256))
    with pytest.raises(AsenError) as err:
        backbones._torchvision_resnet("resnet18")("imagenet")
    assert "cannot download ImageNet weights for resnet18" in str(err.value)
    assert "\n" not in str(err.value)
