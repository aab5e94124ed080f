import pytest
import torch
import torch.nn.functional as F

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
    assert flops_per_pixel((1, 2)) == int(2 * (432 + 4608 + 1152 + 800) * 1.25)


def _brief_convs(net) -> list[tuple]:
    return [(c.in_channels, c.out_channels, c.kernel_size, c.padding)
            for c in net.modules() if isinstance(c, torch.nn.Conv2d)]


def test_the_pyramid_runs_the_same_four_convolutions_at_each_scale():
    torch.manual_seed(0)
    net = FCN(ModelConfig(normalize=True, batch_norm=True, scales=(1, 2, 4))).eval()
    assert _brief_convs(net) == _brief_convs(FCN())  # four convolutions, the brief's shapes, no more weights
    assert count_parameters(net) == 10514 + 2 * (16 + 32 + 16)
    assert net(torch.rand(2, 3, 256, 256)).shape == (2, 2, 256, 256)
    assert net(torch.rand(1, 3, 64, 38)).shape == (1, 2, 64, 38)  # 38: padded to 40 for the x4 copy
    # the mean of the full-size logits and those of the 2x average-pooled copy, resized back
    two = FCN(ModelConfig(scales=(1, 2))).eval()
    x = torch.rand(1, 3, 32, 48)
    half = F.interpolate(two.convs(F.avg_pool2d(x, 2)), size=(32, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(two(x), (two.convs(x) + half) / 2)
    one = FCN().eval()
    one.load_state_dict(two.state_dict())  # same weights: one scale is the plain pass
    torch.testing.assert_close(one(x), two.convs(x))


def test_a_stored_model_config_of_an_older_version_loads_at_the_built_in_values():
    old = {"normalize": True, "batch_norm": True, "dropout": 0.0, "upsample": "nearest"}
    assert ModelConfig.from_dict(old) == ModelConfig(normalize=True, batch_norm=True)  # no scales: one
    assert ModelConfig.from_dict({"scales": [1, 2]}).scales == (1, 2)  # as a checkpoint's JSON copy holds it
    for name, value in (("dropout", 0.1), ("upsample", "bilinear")):
        with pytest.raises(ValueError, match=f"model option {name}="):
            ModelConfig.from_dict({**old, name: value})


def test_prediction_computes_upsample_and_conv4_as_one_convolution_with_the_same_output():
    import copy

    from fcnn_rgb_gt.infer import fold_upsample, fuse_batch_norm

    torch.manual_seed(0)
    net = FCN(ModelConfig(normalize=True, batch_norm=True, scales=(1, 2))).eval()
    for bn in (net.bn1, net.bn2, net.bn3):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 64, 38)
    with torch.no_grad():
        fast = fold_upsample(fuse_batch_norm(copy.deepcopy(net)))
        assert sum(isinstance(m, torch.nn.Upsample) for m in fast.modules()) == 0
        torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=1e-5)  # float rounding only


@pytest.mark.parametrize("normalize", [True, False])
def test_prediction_model_gives_the_networks_probabilities_from_raw_pixels(normalize):
    """What predict_probs runs: batch norm folded, conv4 reduced to the building-minus-background logit and folded
    with the upsampling, the input standardisation as one multiply-add on 0-255 pixels."""
    import copy

    import numpy as np

    from fcnn_rgb_gt.infer import building_logit, fold_difference, fold_upsample, fuse_batch_norm, input_affine

    torch.manual_seed(0)
    net = FCN(ModelConfig(normalize=normalize, batch_norm=True, scales=(1, 2))).eval()
    net.set_input_stats([0.4, 0.5, 0.3], [0.2, 0.25, 0.1])
    for bn in (net.bn1, net.bn2, net.bn3):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 64, 38), dtype=np.uint8))
    with torch.no_grad():
        fast = fold_upsample(fold_difference(fuse_batch_norm(copy.deepcopy(net))))
        assert fast.conv4.conv.out_channels == 4  # the 2x2 phases of one logit
        scale, shift = input_affine(fast)
        got = torch.sigmoid(building_logit(fast.pyramid(torch.addcmul(shift, pixels, scale))))
        want = torch.softmax(net(pixels.float() / 255), 1)[:, 1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
