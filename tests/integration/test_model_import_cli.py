"""'arinv models import' end to end on a local sqlite MLflow store: a MadryLab-layout file is
registered, fetched back by alias with the same logits, not registered twice (nor under other
settings), and a file of another architecture is refused in one line."""

import torch
from mlflow.tracking import MlflowClient

from arinv.models import create_encoder
from arinv.models.load import load_encoder
from pipelines.cli import main
from pipelines.registry import fetch_checkpoint


def _madry_file(path, name: str, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_encoder(name, num_classes=num_classes).eval()
    sd = {}
    for k, v in model.state_dict().items():
        sd["module.model." + k] = sd["module.attacker.model." + k] = v
    for p in ("module.normalizer.", "module.attacker.normalize."):
        sd[p + "new_mean"] = model.normalize.mean.view(3, 1, 1)
        sd[p + "new_std"] = model.normalize.std.view(3, 1, 1)
    torch.save({"model": sd, "epoch": 150}, path)
    return model


def test_models_import_registers_once_and_refuses_a_wrong_architecture(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.chdir(tmp_path)  # nothing MLflow defaults to may land elsewhere
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    src = _madry_file(tmp_path / "cifar_l2_0_5.pt", "resnet18_cifar_small", 10)
    argv = ["models", "import", str(tmp_path / "cifar_l2_0_5.pt"), "--encoder",
            "resnet18_cifar_small", "--alias", "madry-l2-05", "--robust-eps", "0.5",
            "--tracking-uri", uri]

    assert main(argv) == 0
    out = capsys.readouterr().out
    model_uri = "models:/arinv-resnet18_cifar_small@madry-l2-05"
    assert f"registered: {model_uri} (version 1)" in out and "epoch 150" in out
    assert f"encoder.checkpoint={model_uri}" in out

    model, cfg = load_encoder(fetch_checkpoint(model_uri, uri, cache_dir=tmp_path / "cache"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    assert cfg.attack is not None and (cfg.attack.eps, cfg.attack.norm) == (0.5, "l2")

    client = MlflowClient(uri, registry_uri=uri)
    mv = client.get_model_version_by_alias("arinv-resnet18_cifar_small", "madry-l2-05")
    run = client.get_run(mv.run_id)
    assert run.data.tags["arinv.kind"] == "import" and run.info.status == "FINISHED"
    assert run.data.params["source.file"] == "cifar_l2_0_5.pt"  # the name, not the path
    assert run.data.params["robust.eps"] == "0.5" and len(run.data.params["source.sha256"]) == 64

    assert main(argv) == 0  # a rerun: the same run, no second version
    assert "already registered" in capsys.readouterr().out
    versions = client.search_model_versions("name = 'arinv-resnet18_cifar_small'")
    assert [str(v.version) for v in versions] == ["1"]
    assert main([*argv[:-4], "--robust-eps", "1.0", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "robust.eps: 0.5 then, 1.0 now" in err and "choose another alias" in err

    _madry_file(tmp_path / "alexnet.pt", "alexnet_small", 10)
    code = main(["models", "import", str(tmp_path / "alexnet.pt"), "--encoder",
                 "resnet18_cifar_small", "--alias", "other", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "alexnet.pt: wrong architecture for encoder resnet18_cifar_small" in err
    assert "look like alexnet_small" in err
    assert not (tmp_path / "mlruns").exists()

