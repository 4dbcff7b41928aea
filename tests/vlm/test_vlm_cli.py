"""The VLM configs parse; the embedded default runs a fast_dev_run step and exports a loadable model."""

from pathlib import Path

import pytest
import torch

import zoo
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "vlm").glob("*.yaml"))


def test_default_and_nofda_twin_exist():
    names = {c.name for c in CONFIGS}
    assert {"synthetic.yaml", "synthetic_nofda.yaml"} <= names


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses(cfg, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg), "--print_config"])
    assert exc.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_one_step_fit_exports_and_ckpt_converts(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/vlm/synthetic.yaml", "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
          "--data.init_args.n_train=64", "--data.init_args.n_val=16", "--data.init_args.batch_size=8"])
    exports = list(tmp_path.rglob("export/model.safetensors"))
    assert exports, "fit did not export the model"
    m = zoo.load_pretrained(exports[0].parent)
    assert m.config.fda and m.tokenizer is not None
    sim = m.similarity(torch.rand(2, 3, 64, 64), ["a red circle above the blue square", "two green squares"])
    assert sim.shape == (2, 2) and torch.isfinite(sim).all()
    ckpt = next(tmp_path.rglob("*.ckpt"))
    main(["export", str(ckpt), str(tmp_path / "from_ckpt")])
    back = zoo.load_pretrained(tmp_path / "from_ckpt")
    imgs = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(back.similarity(imgs, ["a red circle"]), m.similarity(imgs, ["a red circle"]))
