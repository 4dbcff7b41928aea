"""The CLI: every YAML in configs/ parses; each domain's embedded default runs a fast_dev_run step."""

from pathlib import Path

import pytest

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# The embedded default of each domain: runs with no downloads and no ../shared data.
DEFAULTS = {
    "lm": "configs/lm/tiny.yaml",
    "ts": "configs/ts/synthetic.yaml",
    "vlm": "configs/vlm/synthetic.yaml",
    "str": "configs/str/synthetic.yaml",
}


def test_configs_exist():
    assert CONFIGS, "no YAML under configs/"
    for domain, rel in DEFAULTS.items():
        if (ROOT / "configs" / domain).is_dir():
            assert (ROOT / rel).is_file(), f"domain {domain} has no embedded default {rel}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_every_config_parses(cfg, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg), "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path" in out and "trainer:" in out


@pytest.mark.parametrize("domain", sorted(DEFAULTS))
def test_domain_default_fast_dev_run(domain, tmp_path, monkeypatch):
    rel = DEFAULTS[domain]
    if not (ROOT / rel).is_file():
        pytest.fail(f"{rel} missing")
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", rel, "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.enable_progress_bar=false"])
    assert any(tmp_path.rglob("model.safetensors")), "fit did not export the model"
