import pytest
import torch

from fcnn_rgb_gt.model import FCN, ModelConfig, count_parameters, flops_per_pixel


def test_plain_model_is_the_brief_architecture():
    net = FCN()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1)), (32, 16, (3, 3), (1, 1)), (16, 2, (5, 5), (2, 2))]
    assert isinstance(net.pool, torch.nn.MaxPool2d) and net.pool.kernel_size == 2
    # 3*16*9+16 + 16*32*9+32 + 32*16*9+16 + 16*2*25+2
    assert count_parameters(net) == 448 + 4640 + 4624 + 802 == 10514


def test_output_shape_is_input_size_with_two_channels():
    for cfg in (ModelConfig(), ModelConfig(normalize=True, batch_norm=True)):
        net = FCN(cfg).eval()
        assert net(torch.rand(2, 3, 256, 256)).shape == (2, 2, 256, 256)
        assert net(torch.rand(1, 3, 64, 38)).shape == (1, 2, 64, 38)


def test_options_add_no_convolution():
    net = FCN(ModelConfig(normalize=True, batch_norm=True))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 4
    assert count_parameters(net) == 10514 + 2 * (16 + 32 + 16)  # batch-norm scale and shift only


def test_flops_per_pixel():
    assert flops_per_pixel() == 2 * (432 + 4608 + 1152 + 800)


def test_a_stored_model_config_of_an_older_version_loads_at_the_built_in_values():
    old = {"normalize": True, "batch_norm": True, "dropout": 0.0, "upsample": "nearest"}
    assert ModelConfig.from_dict(old) == ModelConfig(normalize=True, batch_norm=True)
    for name, value in (("dropout", 0.1), ("upsample", "bilinear")):
        with pytest.raises(ValueError, match=f"model option {name}="):
            ModelConfig.from_dict({**old, name: value})
