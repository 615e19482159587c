"""Float fields in configs: exponent notation in any usual spelling, finite values only.

PyYAML reads YAML 1.1, where ``2e-6`` (no dot) and ``1.5e3`` (unsigned exponent) are strings;
a float field must still take them, from ``--set`` overrides and from preset files alike, while
a str field keeps such text as written. nan and +-inf are refused for every float field.
"""

from __future__ import annotations

import pytest

from arinv.config import ConfigError, EncoderTrainConfig, GeneratorTrainConfig, load_config

ROBUST, GENERATOR = "tiny-sample-robust", "tiny-sample-generator"


@pytest.mark.parametrize("text, value", [
    ("2e-6", 2e-6), ("2E-6", 2e-6), ("1e3", 1000.0), ("3.5e+2", 350.0), ("1.5e3", 1500.0),
    (".5e-1", 0.05), ("+4e0", 4.0), ("7", 7.0), ("0.25", 0.25),
])
def test_float_overrides_take_exponent_notation(text, value):
    cfg = load_config(GeneratorTrainConfig, GENERATOR, [f"loss.pix={text}"])
    assert cfg.loss.pix == value and type(cfg.loss.pix) is float


def test_exponent_notation_in_float_lists_and_other_float_fields():
    cfg = load_config(EncoderTrainConfig, ROBUST,
                      ["attack.eps=5e-1", "optim.lr=1E-2", "eval.pgd_eps=[2.5e-1, 5E-1, 1e0, 2]"])
    assert cfg.attack.eps == 0.5 and cfg.optim.lr == 0.01
    assert cfg.eval.pgd_eps == [0.25, 0.5, 1.0, 2.0]
    assert all(type(e) is float for e in cfg.eval.pgd_eps)


def test_negative_exponent_numbers_reach_the_range_checks():
    with pytest.raises(ConfigError, match=r"pix: must be >= 0, got -350\.0"):
        load_config(GeneratorTrainConfig, GENERATOR, ["loss.pix=-3.5e+2"])


def test_a_string_field_keeps_exponent_text_as_written():
    cfg = load_config(EncoderTrainConfig, ROBUST, ["name=1e3"])
    assert cfg.name == "1e3"


@pytest.mark.parametrize("field", ["attack.eps", "loss.pix"])
@pytest.mark.parametrize("text, shown", [
    (".nan", "nan"), (".NaN", "nan"), (".inf", "inf"), ("-.inf", "-inf"), ("+.inf", "inf"),
    ("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("Infinity", "inf"), ("'nan'", "nan"),
    ("1e999", "inf"), ("-1e999", "-inf"),
])
def test_non_finite_floats_are_refused_naming_the_field(field, text, shown):
    cls, preset = (EncoderTrainConfig, ROBUST) if field == "attack.eps" else (
        GeneratorTrainConfig, GENERATOR)
    with pytest.raises(ConfigError, match=rf"{field}: must be a finite number, got {shown}\b"):
        load_config(cls, preset, [f"{field}={text}"])


def test_non_finite_list_items_are_refused_naming_the_item():
    with pytest.raises(ConfigError, match=r"eval\.pgd_eps\[1\]: must be a finite number, got inf"):
        load_config(EncoderTrainConfig, ROBUST, ["eval.pgd_eps=[0.5, .inf]"])
    with pytest.raises(ConfigError, match=r"eval\.pgd_eps\[0\]: must be a finite number, got nan"):
        load_config(EncoderTrainConfig, ROBUST, ["eval.pgd_eps=[nan]"])


@pytest.mark.parametrize("text", ["abc", "1e", "e3", "1e3.0", "1e-", "true", "'0.5'"])
def test_other_text_is_still_not_a_number(text):
    with pytest.raises(ConfigError, match=r"attack\.eps: expected a number"):
        load_config(EncoderTrainConfig, ROBUST, [f"attack.eps={text}"])


def test_an_override_that_is_not_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r"override 'eval.pgd_eps=\[1,': .*not valid YAML"):
        load_config(EncoderTrainConfig, ROBUST, ["eval.pgd_eps=[1,"])


def test_preset_files_take_exponent_notation(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(f"extends: {ROBUST}\nattack: {{eps: 5e-1}}\noptim: {{lr: 2E-2}}\n"
                    "eval: {pgd_eps: [1e-1, 2e-1]}\n")
    cfg = load_config(EncoderTrainConfig, str(path))
    assert cfg.attack.eps == 0.5 and cfg.optim.lr == 0.02 and cfg.eval.pgd_eps == [0.1, 0.2]
    assert cfg.attack.steps == load_config(EncoderTrainConfig, ROBUST).attack.steps  # inherited


@pytest.mark.parametrize("text, shown", [(".nan", "nan"), ("-.inf", "-inf"), ("inf", "inf")])
def test_preset_files_refuse_non_finite_floats(tmp_path, text, shown):
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: {ROBUST}\nattack: {{eps: {text}}}\n")
    with pytest.raises(ConfigError, match=rf"bad\.yaml: .*attack\.eps: must be a finite number, "
                                          rf"got {shown}\b"):
        load_config(EncoderTrainConfig, str(path))
