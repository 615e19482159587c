import pytest
import torch

from arinv.data.sample import sample_set
from arinv.losses import feature_loss, gan_loss, pixel_loss
from arinv.models import create_discriminator, create_encoder, create_generator
from arinv.config import LossConfig
from arinv.train.gan import build_gan_optimizers, freeze, gan_step


def _images(n=4, size=128):
    s = sample_set("train", per_class=1, size=size)
    return torch.from_numpy(s.images[:n]).permute(0, 3, 1, 2).float() / 255


def _setup(gan=True):
    enc = freeze(create_encoder("alexnet_small", num_classes=8))
    g = create_generator("alexnet_small_conv5")
    d = create_discriminator("alexnet_small_conv5") if gan else None
    opt_g, opt_d = build_gan_optimizers(g, d)
    return enc, g, d, opt_g, opt_d


def test_losses_are_per_image_sums_averaged_over_the_batch():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    b[1] = 0.5
    assert pixel_loss(a, b).item() == pytest.approx((48 + 24) / 2)
    assert feature_loss(a, b).item() == pytest.approx((48 + 12) / 2)
    logits = torch.tensor([0.0, 0.0])
    assert gan_loss(logits, True).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_gan_step_updates_generator_and_discriminator_but_never_the_encoder():
    enc, g, d, opt_g, opt_d = _setup()
    enc_before = {k: v.clone() for k, v in enc.state_dict().items()}
    g_before = {n: p.detach().clone() for n, p in g.named_parameters()}
    d_before = {n: p.detach().clone() for n, p in d.named_parameters()}
    out = gan_step(g, enc, _images(), layer="conv5", opt_g=opt_g, weights=LossConfig(),
                   discriminator=d, opt_d=opt_d)
    assert set(out) == {"loss_g", "pix", "feat", "gan", "loss_d", "d_real", "d_fake"}
    assert all(torch.isfinite(v) for v in out.values())
    for k, v in enc.state_dict().items():
        assert torch.equal(v, enc_before[k]), k
    assert all(p.grad is None for p in enc.parameters()) and not enc.training
    unchanged_g = [n for n, p in g.named_parameters() if torch.equal(p, g_before[n])]
    assert unchanged_g == []
    assert any(not torch.equal(p, d_before[n]) for n, p in d.named_parameters())


def test_gradients_reach_every_generator_parameter_and_none_the_encoder():
    enc, g, _, _, _ = _setup(gan=False)
    x = _images()
    f = enc.features(x, "conv5")
    x_hat = g(f)
    loss = 2e-6 * pixel_loss(x_hat, x) + 1e-2 * feature_loss(enc.features(x_hat, "conv5"), f)
    loss.backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(p.grad is None for p in enc.parameters())


def test_a_few_hundred_steps_drive_the_pixel_loss_down():
    torch.manual_seed(0)
    enc, g, d, opt_g, opt_d = _setup()
    x = _images(2)
    weights = LossConfig(pix=1.0, feat=1e-2, gan=1e-2, disc=1.0)  # the full G + D step
    pix = [float(gan_step(g, enc, x, layer="conv5", opt_g=opt_g, weights=weights,
                          discriminator=d, opt_d=opt_d)["pix"]) for _ in range(200)]
    assert sum(pix[-10:]) / 10 < 0.5 * sum(pix[:10]) / 10


def test_gan_step_refuses_a_training_encoder_and_a_missing_discriminator():
    enc, g, d, opt_g, opt_d = _setup()
    with pytest.raises(ValueError, match="needs a discriminator"):
        gan_step(g, enc, _images(2), layer="conv5", opt_g=opt_g, weights=LossConfig())
    enc.train()
    with pytest.raises(ValueError, match="must be frozen"):
        gan_step(g, enc, _images(2), layer="conv5", opt_g=opt_g, weights=LossConfig(gan=0.0))


def test_optimisation_based_inversion_reduces_the_feature_distance():
    from arinv.inversion import invert_by_optimisation

    enc = freeze(create_encoder("alexnet_small", num_classes=8))
    x = _images(2)
    target = enc.features(x, "conv5")
    start = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    before = feature_loss(enc.features(start, "conv5"), target).item()
    out = invert_by_optimisation(enc, target, "conv5", size=128, steps=30, step_size=2.0,
                                 init=start)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert feature_loss(enc.features(out, "conv5"), target).item() < 0.5 * before
    assert not enc.training and all(p.grad is None for p in enc.parameters())
