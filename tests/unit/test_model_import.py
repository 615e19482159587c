"""Importing published classifiers (MadryLab robustness library, torchvision layouts) as arinv
encoders: the same logits as the network they came from, and every refusal names the file."""

import argparse

import pytest
import torch

from arinv.checkpoint import CheckpointError
from arinv.config import AttackConfig
from arinv.models import create_encoder
from arinv.models.imports import import_state_dict, write_encoder_checkpoint
from arinv.models.load import load_encoder

RES = {"alexnet_small": 128, "resnet18_cifar_small": 32}


def _model(name: str, num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    m = create_encoder(name, num_classes=num_classes)
    for mod in m.modules():  # non-trivial batch-norm statistics, so they must load too
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _madry(model, key: str = "model", mean=None, std=None, head: str = "last_layer.") -> dict:
    """The robustness library's checkpoint layout: network, attacker copy, two normalisers.
    Its AlexNet calls torchvision's classifier.6 ``last_layer`` (``head``)."""
    mean = model.normalize.mean.view(3, 1, 1) if mean is None else torch.tensor(mean).view(3, 1, 1)
    std = model.normalize.std.view(3, 1, 1) if std is None else torch.tensor(std).view(3, 1, 1)
    sd = {}
    for k, v in model.state_dict().items():
        k = head + k[len("classifier.6."):] if k.startswith("classifier.6.") else k
        sd["module.model." + k] = v.clone()
        sd["module.attacker.model." + k] = v.clone()
    for p in ("module.normalizer.", "module.attacker.normalize."):
        sd[p + "new_mean"], sd[p + "new_std"] = mean.clone(), std.clone()
    return {key: sd, "epoch": 89}


def _logits(model, name: str) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.rand(2, 3, RES[name], RES[name]))


@pytest.mark.parametrize("name,key,head", [("alexnet_small", "model", "last_layer."),
                                           ("resnet18_cifar_small", "model", "last_layer."),
                                           ("alexnet_small", "state_dict", "classifier.6.")])
def test_a_robustness_checkpoint_imports_with_the_same_logits(tmp_path, name, key, head):
    src = _model(name, num_classes=7)
    torch.save(_madry(src, key, head=head), tmp_path / "madry.pt")
    model, info = import_state_dict(tmp_path / "madry.pt", name)
    assert info["layout"] == "robustness" and info["num_classes"] == 7 and info["epoch"] == 89
    renamed = name == "alexnet_small" and head == "last_layer."
    assert info.get("renamed") == ({"last_layer.": "classifier.6."} if renamed else None)
    assert info["attacker_copy"] == "identical" and len(info["sha256"]) == 64
    torch.testing.assert_close(_logits(model, name), _logits(src, name))

    out = write_encoder_checkpoint(model, tmp_path / "enc.pt", name="import-madry",
                                   attack=AttackConfig(eps=3.0, norm="l2"), source=info)
    loaded, cfg = load_encoder(out)
    torch.testing.assert_close(_logits(loaded, name), _logits(src, name))
    assert cfg.encoder.name == name and cfg.encoder.num_classes == 7
    assert cfg.attack is not None and (cfg.attack.eps, cfg.attack.norm) == (3.0, "l2")


def test_a_torchvision_state_dict_imports_as_a_standard_encoder(tmp_path):
    src = _model("alexnet_small", num_classes=5)
    torch.save(src.state_dict(), tmp_path / "tv.pt")
    model, info = import_state_dict(tmp_path / "tv.pt", "alexnet_small", layout="torchvision")
    assert info["layout"] == "torchvision" and info["num_classes"] == 5 and "epoch" not in info
    torch.testing.assert_close(_logits(model, "alexnet_small"), _logits(src, "alexnet_small"))
    loaded, cfg = load_encoder(write_encoder_checkpoint(model, tmp_path / "e.pt", name="tv"))
    assert cfg.attack is None
    torch.testing.assert_close(_logits(loaded, "alexnet_small"), _logits(src, "alexnet_small"))


def test_wrong_architecture_names_file_encoder_keys_and_a_guess(tmp_path):
    torch.save(_madry(_model("resnet18_cifar_small", 10)), tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError) as e:
        import_state_dict(tmp_path / "resnet.pt", "alexnet_small")
    msg = str(e.value)
    assert str(tmp_path / "resnet.pt") in msg and "wrong architecture" in msg
    assert "expected alexnet_small" in msg.lower() and "'features.0.weight'" in msg
    assert "look like resnet18_cifar_small" in msg and "\n" not in msg


def test_same_keys_other_shapes_is_refused(tmp_path):
    small = create_encoder("resnet18_cifar_small", num_classes=4)
    torch.save(small.state_dict(), tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*conv1\.weight \(16, 3, 3, 3\) "
                       r"vs \(64, 3, 3, 3\).*look like resnet18_cifar_small"):
        import_state_dict(tmp_path / "s.pt", "resnet18_cifar")  # same keys, 4x the width
    with pytest.raises(CheckpointError, match="num_classes 9 given, but the head"):
        import_state_dict(tmp_path / "s.pt", "resnet18_cifar_small", num_classes=9)


def test_a_different_normaliser_is_refused(tmp_path):
    src = _model("alexnet_small", 4)
    torch.save(_madry(src, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match=r"n\.pt: its input normaliser .*0\.5000.*"
                       r"differs from alexnet_small's own \(mean \[0\.4850, 0\.4560"):
        import_state_dict(tmp_path / "n.pt", "alexnet_small")


def test_an_unknown_layout_lists_the_layouts_understood(tmp_path):
    sd = _model("alexnet_small", 4).state_dict()
    torch.save({"net": {"module." + k: v for k, v in sd.items()}}, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match=r"u\.pt: unknown checkpoint layout.*'net' "
                       r"holds keys like 'module\.features.*understood layouts: torchvision "
                       r".*robustness"):
        import_state_dict(tmp_path / "u.pt", "alexnet_small")
    with pytest.raises(CheckpointError, match="not a robustness checkpoint: it looks like the "
                       "torchvision layout"):
        torch.save(sd, tmp_path / "tv.pt")
        import_state_dict(tmp_path / "tv.pt", "alexnet_small", layout="robustness")


def test_pickled_objects_are_refused_with_how_to_resave(tmp_path):
    ckpt = _madry(_model("alexnet_small", 4))
    ckpt["args"] = argparse.Namespace(arch="alexnet", eps=3.0)  # as some published files carry
    torch.save(ckpt, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError) as e:
        import_state_dict(tmp_path / "pickled.pt", "alexnet_small")
    msg = str(e.value)
    assert str(tmp_path / "pickled.pt") in msg and "argparse.Namespace" in msg
    assert "torch.save({'model': ckpt['model']}" in msg


def test_a_truncated_file_is_refused(tmp_path):
    torch.save(_madry(_model("alexnet_small", 4)), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot be read as a PyTorch file"):
        import_state_dict(tmp_path / "cut.pt", "alexnet_small")
    with pytest.raises(CheckpointError, match="no such file"):
        import_state_dict(tmp_path / "missing.pt", "alexnet_small")


def test_models_import_help_shows_an_example(capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as e:
        main(["models", "import", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for word in ("--encoder", "--alias", "--robust-eps", "--layout", "arinv models import"):
        assert word in out
