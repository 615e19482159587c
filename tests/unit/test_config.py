import re

import pytest

from arinv.config import (
    AblationConfig,
    AnomalyConfig,
    AttackConfig,
    ConfigError,
    EncoderTrainConfig,
    GeneratorTrainConfig,
    ScaleConfig,
    SweepConfig,
    build,
    config_class,
    flatten,
    list_presets,
    load_config,
    migrate,
    to_dict,
)


@pytest.mark.parametrize("preset", [p for p in list_presets()])
def test_every_preset_loads_and_validates(preset, tmp_path, monkeypatch):
    # Presets that point at /data/... are validated with the data check pointed elsewhere.
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    overrides = [] if "sample" in preset else [f"data.source={tmp_path}"]
    if config_class(preset) is SweepConfig:  # a sweep: every trial's configs are checked too
        from pipelines.sweep import plan

        sw = load_config(SweepConfig, preset, [f"encoder_set={overrides}",
                                               f"generator_set={overrides}"])
        assert sw.name and plan(sw)
        return
    if config_class(preset) is AnomalyConfig:  # Table A1: every column's generator is checked
        from arinv.experiments import table_a1

        an = load_config(AnomalyConfig, preset, [f"shards={tmp_path}"])
        cfgs = [table_a1.generator_config(an, c, 0, None) for c in table_a1.columns(an)]
        assert cfgs and all(g.data.classes == [0] and g.loss.gan == 0 for g in cfgs)
        return
    if config_class(preset) is AblationConfig:  # Fig. A2: every criterion's generator checked
        from arinv.experiments import fig_a2

        ab = load_config(AblationConfig, preset)
        ab = load_config(AblationConfig, preset, [f"generator_set={ab.generator_set + overrides}"])
        cfgs = [fig_a2.generator_config(ab, c["criterion"], c["column"], None)
                for c in fig_a2.cells(ab) if c["criterion"] in fig_a2.TRAINED]
        assert sorted({g.loss.gan > 0 for g in cfgs}) == [False, True]
        return
    if config_class(preset) is ScaleConfig:  # Table A2: names two autoencoders, no training
        sc = load_config(ScaleConfig, preset, [f"data={tmp_path}"])
        assert sc.standard and sc.robust and sc.factors
        return
    cfg = load_config(config_class(preset), preset, overrides)
    assert cfg.name


def test_seed_recipe_presets(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    src = [f"data.source={tmp_path}"]
    robust = load_config(EncoderTrainConfig, "alexnet-imagenet-robust", src)
    assert (robust.attack.norm, robust.attack.eps, robust.attack.steps) == ("l2", 3.0, 7)
    assert robust.attack.effective_step_size == 0.5
    assert (robust.optim.lr, robust.optim.momentum, robust.optim.epochs) == (0.1, 0.9, 90)
    assert (robust.optim.lr_step_epochs, robust.optim.lr_gamma, robust.optim.batch_size) == (30, 0.1, 256)
    assert load_config(EncoderTrainConfig, "alexnet-imagenet-standard", src).attack is None
    cifar = load_config(EncoderTrainConfig, "resnet18-cifar10-robust", src + ["attack.eps=1.5"])
    assert cifar.attack.steps == 7 and cifar.attack.effective_step_size == pytest.approx(0.3)


@pytest.mark.parametrize("override, field", [
    ("attack.eps=-1", "attack.eps"),
    ("attack.norm=l3", "attack.norm"),
    ("attack.steps=0", "attack.steps"),
    ("attack.warmup_epochs=-1", "attack.warmup_epochs"),
    ("optim.lr=0", "optim.lr"),
    ("optim.batch_size=0", "optim.batch_size"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("encoder.name=vgg", "encoder.name"),
    ("encoder.num_classes=1", "encoder.num_classes"),
    ("runtime.device=tpu", "runtime.device"),
    ("data.source=/nonexistent/imagenet", "data.source"),
    ("eval.pgd_eps=[-0.5]", "eval.pgd_eps"),
])
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(EncoderTrainConfig, "tiny-sample-robust", [override])
    assert field in str(e.value) and "tiny-sample-robust" in str(e.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(EncoderTrainConfig, "tiny-sample-robust", ["attack.eps=-1", "optim.lr=-2"])
    assert "attack.eps" in str(e.value) and "optim.lr" in str(e.value)


def test_unknown_field_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"attack\.epss: unknown field; did you mean 'eps'"):
        load_config(EncoderTrainConfig, "tiny-sample-robust", ["attack.epss=1"])


def test_wrong_types_are_refused():
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected an integer, got 'ten'"):
        load_config(EncoderTrainConfig, "tiny-sample-robust", ["optim.epochs=ten"])
    with pytest.raises(ConfigError, match=r"runtime\.amp: expected true or false"):
        load_config(EncoderTrainConfig, "tiny-sample-robust", ["runtime.amp=3"])


def test_unknown_preset_suggests_a_close_name():
    with pytest.raises(ConfigError, match="did you mean 'tiny-sample-robust'"):
        load_config(EncoderTrainConfig, "tiny-sample-robst")


def test_yaml_file_with_extends_and_bad_yaml(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("extends: tiny-sample-robust\nname: mine\nattack: {eps: 0.25}\n")
    cfg = load_config(EncoderTrainConfig, str(good))
    assert cfg.name == "mine" and cfg.attack.eps == 0.25 and cfg.attack.steps == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(EncoderTrainConfig, str(bad))


def test_null_attack_means_standard_training_and_flatten_round_trip():
    cfg = load_config(EncoderTrainConfig, "tiny-sample-robust", ["attack=null"])
    assert cfg.attack is None
    flat = flatten(cfg)
    assert flat["attack"] is None and flat["optim.lr"] == 0.01
    assert flatten(to_dict(cfg)) == flat


def test_step_size_defaults_to_a_fifth_of_eps():
    assert AttackConfig(eps=2.0).effective_step_size == pytest.approx(0.4)
    assert AttackConfig(eps=2.0, step_size=0.1).effective_step_size == 0.1


def test_an_attack_warm_up_ramps_eps_and_step_size_linearly():
    a = AttackConfig(eps=1.0, steps=2, step_size=0.75, warmup_epochs=4)
    assert [a.at_epoch(e).eps for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert a.at_epoch(1).effective_step_size == pytest.approx(0.375)
    assert a.at_epoch(0).steps == 2 and a.at_epoch(3) is a
    default = AttackConfig(eps=2.0)  # no warm-up; step size eps / 5 scales with eps
    assert default.at_epoch(0) is default
    assert AttackConfig(eps=2.0, warmup_epochs=2).at_epoch(0).effective_step_size == \
        pytest.approx(0.2)


def test_generator_presets_follow_the_paper():
    gan = load_config(GeneratorTrainConfig, "alexnet-conv5-gan", ["data.source=sample"])
    assert (gan.loss.pix, gan.loss.feat, gan.loss.gan, gan.loss.disc) == (2e-6, 1e-2, 100.0, 2e-6)
    assert (gan.optim.lr_g, gan.optim.lr_d, gan.optim.beta1, gan.optim.beta2) == (3e-4, 1.2e-3, 0.0, 0.9)
    assert (gan.optim.epochs, gan.optim.lr_step_epochs, gan.optim.batch_size) == (90, 30, 128)
    assert gan.generator.spectral_norm and gan.generator.discriminator == "alexnet_conv5"
    pix = load_config(GeneratorTrainConfig, "alexnet-conv5-pixel", ["data.source=sample"])
    assert (pix.loss.feat, pix.loss.gan, pix.generator.discriminator) == (0.0, 0.0, None)
    pf = load_config(GeneratorTrainConfig, "alexnet-conv5-pixel-feat", ["data.source=sample"])
    assert (pf.loss.pix, pf.loss.feat, pf.loss.gan) == (2e-6, 1e-2, 0.0)
    assert config_class("alexnet-conv5-gan") is GeneratorTrainConfig
    assert config_class("alexnet-imagenet-robust") is EncoderTrainConfig


@pytest.mark.parametrize("override, message", [
    ("generator.name=alexnet_conv1", "generator.name: alexnet_conv1 inverts alexnet.conv1"),
    ("encoder.layer=conv9", "encoder.layer: alexnet_small has no tap 'conv9'"),
    ("loss.gan=1", "generator.discriminator: loss.gan > 0 needs a discriminator"),
    ("encoder.checkpoint=/nope/last.pt", "encoder.checkpoint: no file at '/nope/last.pt'"),
    ("loss.pix=-1", "loss.pix: must be >= 0"),
    ("optim.lr_g=2", "optim.lr_g: must be in (0, 1)"),
])
def test_generator_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(GeneratorTrainConfig, "tiny-sample-generator", [override])
    assert message in str(e.value)


@pytest.mark.parametrize("cls, preset, override, message", [
    (EncoderTrainConfig, "tiny-sample-robust", "model.name=alexnet", "model: renamed to encoder"),
    (EncoderTrainConfig, "tiny-sample-robust", "eval.max_images=9",
     "eval.max_images: renamed to eval.images"),
    (EncoderTrainConfig, "tiny-sample-robust", "data.num_workers=4",
     "data.num_workers: removed"),
    (GeneratorTrainConfig, "tiny-sample-generator", "eval_images=9",
     "eval_images: renamed to eval.images"),
    (GeneratorTrainConfig, "tiny-sample-generator", "eval_every=2",
     "eval_every: renamed to eval.every"),
    (GeneratorTrainConfig, "tiny-sample-generator", "ri_steps=2",
     "ri_steps: renamed to eval.ri_steps"),
])
def test_an_old_field_name_is_refused_with_the_new_one(cls, preset, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(cls, preset, [override])


def test_an_old_yaml_file_is_refused_with_the_new_name(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("extends: tiny-sample-robust\nmodel: {name: alexnet_small, num_classes: 8}\n")
    with pytest.raises(ConfigError, match="old.yaml: model: renamed to encoder"):
        load_config(EncoderTrainConfig, str(old))


def test_a_config_stored_under_old_names_is_migrated():
    old = to_dict(load_config(EncoderTrainConfig, "tiny-sample-robust"))
    old["model"] = old.pop("encoder")
    old["eval"]["max_images"] = old["eval"].pop("images")
    old["data"]["num_workers"] = 0
    cfg = build(EncoderTrainConfig, migrate(EncoderTrainConfig, old))
    assert cfg == load_config(EncoderTrainConfig, "tiny-sample-robust")


@pytest.mark.parametrize("override", ["attack.norm=l3", "eval.norm=L2", "data.loader=torch",
                                      "runtime.device=tpu"])
def test_enumerations_list_their_choices(override):
    with pytest.raises(ConfigError, match=rf"{re.escape(override.split('=')[0])}: must be one "
                                          r"of '"):
        load_config(EncoderTrainConfig, "tiny-sample-robust", [override])


def test_both_run_kinds_name_evaluation_and_encoder_fields_alike():
    enc = load_config(EncoderTrainConfig, "tiny-sample-robust")
    gen = load_config(GeneratorTrainConfig, "tiny-sample-generator")
    assert enc.encoder.name == gen.encoder.name == "alexnet_small"
    for field in ("every", "images", "epoch_images"):
        assert hasattr(enc.eval, field) and hasattr(gen.eval, field)
    assert not hasattr(enc.data, "num_workers")
