import pytest
import torch
import torchvision

from arinv.models import create_encoder, list_encoders

EXPECTED_TAPS = {
    "alexnet": {"conv1": (64, 27, 27), "conv2": (192, 13, 13), "conv5": (256, 6, 6)},
    "alexnet_small": {"conv1": (16, 15, 15), "conv2": (48, 7, 7), "conv5": (64, 3, 3)},
    "resnet18_cifar": {"layer1": (64, 32, 32), "layer2": (128, 16, 16),
                       "layer3": (256, 8, 8), "layer4": (512, 4, 4)},
    "resnet18_cifar_small": {"layer1": (16, 32, 32), "layer2": (32, 16, 16),
                             "layer3": (64, 8, 8), "layer4": (128, 4, 4)},
}


def test_every_registered_encoder_has_expected_taps():
    assert set(list_encoders()) == set(EXPECTED_TAPS), "add the new encoder's taps here"


@pytest.mark.parametrize("name", sorted(EXPECTED_TAPS))
def test_tap_shapes_and_logits(name):
    m = create_encoder(name, num_classes=7).eval()
    r = m.input_size
    x = torch.rand(2, 3, r, r)
    assert m(x).shape == (2, 7)
    assert tuple(m.taps) == tuple(EXPECTED_TAPS[name])
    for tap, shape in EXPECTED_TAPS[name].items():
        assert m.features(x, tap).shape == (2, *shape), tap
        assert m.feature_shape(tap) == shape


@pytest.mark.parametrize("name", sorted(EXPECTED_TAPS))
def test_last_tap_feeds_the_head(name):
    m = create_encoder(name, num_classes=5).eval()
    x = torch.rand(2, 3, m.input_size, m.input_size)
    last = m.features(x, m.taps[-1])
    assert torch.allclose(m.head(last), m(x), atol=1e-5)


def test_alexnet_loads_torchvision_weights_and_matches_its_output():
    ours = create_encoder("alexnet").eval()
    ref = torchvision.models.alexnet(weights=None).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())  # strict
    x = torch.rand(2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(ours(x), ref((x - mean) / std), rtol=1e-4, atol=1e-5)


def test_normalisation_is_inside_the_model_and_not_in_the_state_dict():
    m = create_encoder("resnet18_cifar_small")
    assert not any(k.startswith("normalize") for k in m.state_dict())
    m.eval()
    x = torch.rand(1, 3, 32, 32)
    m.normalize.mean.fill_(0.0)
    m.normalize.std.fill_(1.0)
    y_identity = m(x)
    m2 = create_encoder("resnet18_cifar_small").eval()
    m2.load_state_dict(m.state_dict())
    assert not torch.allclose(m2(x), y_identity)  # m2 still normalises


def test_features_are_fully_convolutional_on_larger_inputs():
    m = create_encoder("alexnet").eval()
    assert m.feature_shape("conv5", 448) == (256, 13, 13)
    assert create_encoder("resnet18_cifar").feature_shape("layer4", 64) == (512, 8, 8)


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="unknown encoder 'alexnt'.*alexnet"):
        create_encoder("alexnt")
    with pytest.raises(ValueError, match="unknown tap 'conv3'.*conv1"):
        create_encoder("alexnet_small").features(torch.rand(1, 3, 128, 128), "conv3")


def test_arch_identifies_shape_changing_arguments():
    a = create_encoder("alexnet_small", num_classes=8).arch
    b = create_encoder("alexnet_small", num_classes=8, width=0.5).arch
    assert a != b and a["name"] == "alexnet_small"
