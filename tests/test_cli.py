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


def test_occupied_export_folder_is_refused_before_training(tmp_path, monkeypatch):
    """--export.folder that holds files fails when fit starts: no step runs, the files stay."""
    from zoo.tasks import ForecastTask

    monkeypatch.chdir(ROOT)
    occupied = tmp_path / "exp"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    steps = []
    monkeypatch.setattr(ForecastTask, "training_step", lambda self, batch, i: steps.append(i))
    with pytest.raises(FileExistsError, match=r"export folder .*exp exists and is not empty"):
        main(["fit", "--config", DEFAULTS["ts"], "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.enable_progress_bar=false", f"--export.folder={occupied}"])
    assert steps == [] and (occupied / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]


def test_inference_settings_given_with_ckpt_path_win_null_included(tmp_path, monkeypatch):
    """With --ckpt_path, top_k / temperature / max_new_tokens the user gives (null too) beat the
    checkpoint's; the ones left at their defaults take the checkpoint's stored values."""
    import torch

    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the king speaks to a fool and his horse\n" * 60)
    common = ["--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
              "--data.init_args.block_size=16", "--data.init_args.batch_size=4",
              "--model.init_args.model_args={dim: 16, n_layers: 1, n_heads: 2, max_seq_len: 256}",
              "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]
    main(["fit", *common, "--model.init_args.top_k=7", "--model.init_args.temperature=0.3",
          "--model.init_args.max_new_tokens=3", "--trainer.max_steps=1", "--trainer.val_check_interval=1",
          "--trainer.limit_val_batches=1",
          "--export.enabled=false", f"--trainer.default_root_dir={tmp_path / 'fit'}"])
    ckpt = next((tmp_path / "fit").rglob("*.ckpt"))
    stored = torch.load(ckpt, weights_only=False)["hyper_parameters"]
    assert (stored["top_k"], stored["temperature"], stored["max_new_tokens"]) == (7, 0.3, 3)

    seen = []
    monkeypatch.setattr(LanguageModelTask, "predict_step", lambda self, batch, i: seen.append(
        (self.hparams.top_k, self.hparams.temperature, self.hparams.max_new_tokens)) or [])

    def predict(i, *extra):
        main(["predict", *common, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / str(i)}",
              *extra])
        return seen[-1]

    # the YAML gives max_new_tokens: 200 (a config file counts as given); top_k and temperature it leaves
    assert predict(0, "--model.init_args.top_k=null") == (None, 0.3, 200)
    assert predict(1, "--model.init_args.top_k=0", "--model.init_args.temperature=1.5") == (0, 1.5, 200)
    assert predict(2) == (7, 0.3, 200)  # top_k, temperature not given: the checkpoint's values


def test_fit_summary_names_the_export_folder(tmp_path, monkeypatch, capsys):
    """README: the end-of-fit summary tells where the exported model is (the export runs first)."""
    monkeypatch.chdir(ROOT)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the king speaks to a fool and his horse\n" * 60)
    main(["fit", "--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
          "--data.init_args.block_size=16", "--data.init_args.batch_size=4",
          "--model.init_args.model_args={dim: 16, n_layers: 1, n_heads: 2, max_seq_len: 32}",
          "--trainer.max_steps=1", "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1",
          "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path / 'runs'}"])
    out = capsys.readouterr().out
    exported = [p.parent for p in (tmp_path / "runs").rglob("model.safetensors")]
    assert len(exported) == 1
    assert "zoo fit summary" in out
    assert f"exported model: {exported[0]}" in out
    assert f"zoo.load_pretrained({str(exported[0])!r})" in out


def test_help_names_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "python -m zoo export CKPT OUT" in out and "python -m zoo convert" in out and "fit,validate,test,predict" in out


@pytest.mark.parametrize("argv", [["fit", "--help"], ["fit", "--config", "no-such-config.yaml"]])
def test_main_leaves_no_process_group_behind(argv, tmp_path, capsys):
    # Lightning destroys only NCCL groups at exit; a gloo group (CPU DDP) left alive can abort the finished
    # process at interpreter teardown. main() must end it, also when the CLI stops early (help, bad config).
    import torch.distributed as dist

    from zoo.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit):
            main(argv)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


LM_TINY = ["--config", DEFAULTS["lm"], "--model.init_args.model_args={dim: 16, n_layers: 1, n_heads: 2, max_seq_len: 128}",
           "--data.init_args.train_size=256", "--data.init_args.val_size=64", "--data.init_args.test_size=64",
           "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
           "--trainer.enable_progress_bar=false", "--export.enabled=false"]


def test_ckpt_path_last_resumes_the_previous_run(tmp_path, monkeypatch):
    """`fit --ckpt_path last` continues the newest checkpoint of the earlier runs (a new run gets a new
    version folder, and zoo runs save no last.ckpt): it must not silently start again from step 0."""
    import lightning as L

    monkeypatch.chdir(ROOT)
    root = f"--trainer.default_root_dir={tmp_path}"
    main(["fit", *LM_TINY, root, "--trainer.max_steps=2"])
    first = next(tmp_path.rglob("*.ckpt"))
    seen = []
    monkeypatch.setattr(L.Callback, "on_train_start", lambda self, trainer, module: seen.append(trainer.global_step),
                        raising=False)
    main(["fit", *LM_TINY, root, "--trainer.max_steps=3", "--ckpt_path=last"])
    assert seen and seen[0] == 2, f"resumed at step {seen} from {first}"


def test_ckpt_of_another_domain_is_refused_by_name(tmp_path, monkeypatch):
    """validate / test with a checkpoint another domain's task wrote: an error naming both classes."""
    monkeypatch.chdir(ROOT)
    main(["fit", *LM_TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    for sub in ("validate", "test"):
        with pytest.raises(ValueError, match=r"LanguageModelTask.*ForecastTask|ForecastTask.*LanguageModelTask"):
            main([sub, "--config", DEFAULTS["ts"], f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.enable_progress_bar=false"])
