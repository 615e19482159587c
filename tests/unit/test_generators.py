import pytest
import torch

from arinv.models import (
    GENERATOR_TAPS,
    create_discriminator,
    create_encoder,
    create_generator,
    list_discriminators,
    list_generators,
)
from arinv.models.discriminator import TABLE_A5_IMAGE
from arinv.models.generators import TABLE_A4, TABLE_A6, TABLE_A7, TABLE_RESNET18_LAYER4

TABLES = {"alexnet_conv5": TABLE_A4, "alexnet_conv1": TABLE_A6, "alexnet_conv2": TABLE_A7,
          "resnet18_cifar_layer4": TABLE_RESNET18_LAYER4}

# The appendix's tables as printed (layer, output size, output channels), typed in from
# paper-appendix.txt independently of the code's specs.
PRINTED = {
    "alexnet_conv5": [("1a", 6, 256), ("2a", 7, 256), ("2b", 7, 256), ("3a", 14, 256),
                      ("3b", 14, 256), ("4a", 28, 256), ("4b", 28, 128), ("5a", 56, 128),
                      ("5b", 56, 64), ("6a", 112, 64), ("6b", 112, 32), ("7a", 224, 32),
                      ("7b", 224, 3), ("7c", 224, 3)],
    "alexnet_conv1": [("1a", 27, 64), ("2a", 28, 64), ("2b", 28, 64), ("3a", 56, 64),
                      ("3b", 56, 64), ("3c", 56, 32), ("4a", 112, 32), ("4b", 112, 32),
                      ("5a", 224, 32), ("5b", 224, 16), ("5c", 224, 3), ("5d", 224, 3)],
    "alexnet_conv2": [("1a", 13, 192), ("2a", 14, 192), ("2b", 14, 96), ("3a", 28, 96),
                      ("3b", 28, 96), ("3c", 28, 64), ("4a", 56, 64), ("4b", 56, 64),
                      ("5a", 112, 64), ("5b", 112, 64), ("6a", 224, 64), ("6b", 224, 32),
                      ("6c", 224, 3), ("6d", 224, 3)],
}


def _record(model, x, *args):
    sizes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, tuple(o.shape)))
             for n, m in model.layers.items()] if hasattr(model, "layers") else []
    hooks += [m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, tuple(o.shape)))
              for n, m in getattr(model, "image", {}).items()]
    with torch.no_grad():
        out = model(x, *args)
    for h in hooks:
        h.remove()
    return sizes, out


def _tap_input(name, batch=1, scale=1):
    enc, tap = GENERATOR_TAPS[name]
    c, h, w = create_encoder(enc).feature_shape(tap)
    return torch.rand(batch, c, h * scale, w * scale)


@pytest.mark.parametrize("name", sorted(PRINTED))
def test_generator_reproduces_its_printed_table(name):
    sizes, out = _record(create_generator(name).eval(), _tap_input(name))
    got = [(row, s[2], s[1]) for row, s in sizes.items()]
    assert got == PRINTED[name]
    assert out.shape == (1, 3, 224, 224)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_generator_matches_its_spec_rows(name):
    sizes, _ = _record(create_generator(name).eval(), _tap_input(name))
    assert [(r[0], r[6], r[8]) for r in TABLES[name]] == [(n, s[2], s[1]) for n, s in sizes.items()]


@pytest.mark.parametrize("name", list_generators())
def test_every_generator_inverts_its_encoder_tap_into_an_image(name):
    enc_name, tap = GENERATOR_TAPS[name]
    enc = create_encoder(enc_name).eval()
    g = create_generator(name).eval()
    r = enc.input_size
    with torch.no_grad():
        out = g(enc.features(torch.rand(2, 3, r, r), tap))
    assert out.shape == (2, 3, r, r)
    assert out.min() >= 0 and out.max() <= 1


# Output side for an input map of side h: the +1 transposed conv, then the x2 stages.
OUT_SIDE = {"alexnet_small_conv5": lambda h: (h + 1) * 32, "alexnet_small_conv1": lambda h: (h + 1) * 8,
            "alexnet_small_conv2": lambda h: (h + 1) * 16, "resnet18_cifar_small_layer4": lambda h: h * 8}


@pytest.mark.parametrize("name", sorted(OUT_SIDE))
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_generators_are_fully_convolutional(name, scale):
    f = _tap_input(name, scale=scale)
    with torch.no_grad():
        out = create_generator(name).eval()(f)
    side = OUT_SIDE[name](f.shape[-1])
    assert out.shape == (1, 3, side, side)


def test_conv5_generator_scales_with_upscaled_inputs():
    # L = 2 in Table A2: a 448 px image gives a 13 x 13 conv5 map; the generator answers 448 px.
    enc = create_encoder("alexnet").eval()
    f = enc.features(torch.rand(1, 3, 448, 448), "conv5")
    assert f.shape[-1] == 13
    with torch.no_grad():
        assert create_generator("alexnet_conv5").eval()(f).shape[-1] == (13 + 1) * 32


def test_spectral_norm_wraps_every_conv_and_can_be_switched_off():
    def count(m):
        return sum(1 for mod in m.modules() if hasattr(mod, "parametrizations"))
    convs = lambda m: sum(1 for mod in m.modules()  # noqa: E731
                          if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
    g = create_generator("alexnet_small_conv5")
    assert count(g) == convs(g) == len(TABLE_A4)
    assert count(create_generator("alexnet_small_conv5", spectral_norm=False)) == 0
    d = create_discriminator("alexnet_small_conv5")
    assert count(d) == convs(d) == len(TABLE_A5_IMAGE)


def test_discriminator_branches_follow_table_a5():
    d = create_discriminator("alexnet_conv5").eval()
    sizes, out = _record(d, torch.rand(2, 3, 224, 224), torch.rand(2, 256, 6, 6))
    assert [(n, s[1], s[2]) for n, s in sizes.items()] == [(r[0], r[7], r[5]) for r in TABLE_A5_IMAGE]
    # As printed: channels 32, 64, 128, 256, 256; 56 and 52 px for 1a / 2a (see module docstring).
    assert [s[1] for s in sizes.values()] == [32, 64, 128, 256, 256]
    assert sizes["1a"][2] == 56 and sizes["2a"][2] == 52
    linears = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9216, 1024), (1024, 512),
                                                                  (768, 512), (512, 1)]
    assert out.shape == (2,)


@pytest.mark.parametrize("name", list_discriminators())
def test_discriminators_score_image_feature_pairs(name):
    enc, tap = GENERATOR_TAPS[name]
    e = create_encoder(enc).eval()
    r = e.input_size
    x = torch.rand(3, 3, r, r)
    out = create_discriminator(name)(x, e.features(x, tap))
    assert out.shape == (3,) and torch.isfinite(out).all()


def test_a_gray_generator_ties_its_channels_and_reloads_as_gray(tmp_path):
    from dataclasses import asdict

    from arinv.checkpoint import save_checkpoint
    from arinv.config import GeneratorTrainConfig
    from arinv.models.load import load_generator

    f = torch.randn(2, 64, 3, 3)
    colour = create_generator("alexnet_small_conv5").eval()
    assert "gray" not in colour.arch  # colour generators' archs (and checkpoints) unchanged
    with torch.no_grad():
        assert not torch.equal(colour(f)[:, 0], colour(f)[:, 1])
    g = create_generator("alexnet_small_conv5", gray=True).eval()
    with torch.no_grad():
        x = g(f)
    assert x.shape == (2, 3, 128, 128) and torch.equal(x[:, 0], x[:, 1])
    assert torch.equal(x[:, 1], x[:, 2]) and 0 <= x.min() and x.max() <= 1
    enc = create_encoder("alexnet_small", num_classes=4)
    path = save_checkpoint(tmp_path / "g.pt", kind="generator",
                           arch={"generator": g.arch, "discriminator": None, "encoder": enc.arch},
                           modules={"generator": g}, progress={"epoch": 1},
                           config=asdict(GeneratorTrainConfig()))
    back, _ = load_generator(path)
    with torch.no_grad():
        assert back.gray and torch.equal(back(f), x)
