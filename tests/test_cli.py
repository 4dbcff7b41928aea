"""The CLI: every YAML in configs/ parses; each domain's embedded default runs a fast_dev_run step."""

import warnings
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
def test_domain_default_fast_dev_run(domain, tmp_path, monkeypatch, capsys):
    rel = DEFAULTS[domain]
    if not (ROOT / rel).is_file():
        pytest.fail(f"{rel} missing")
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", rel, "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.enable_progress_bar=false"])
    assert any(tmp_path.rglob("model.safetensors")), "fit did not export the model"
    # the summary names the smoke export and no log folder (a fast_dev_run has no logger; it named the cwd)
    out = capsys.readouterr().out
    assert f"exported model: {tmp_path / 'lightning_logs' / 'fast_dev_run' / 'export'}" in out
    assert "logs: none (fast_dev_run logs nothing)" in out
    # and saves no checkpoint, as Lightning documents: the configs' save_last wrote checkpoints/last.ckpt (Lightning
    # 2.6's ModelCheckpoint.on_train_end does not check fast_dev_run)
    assert not list(tmp_path.rglob("*.ckpt"))


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
    """With --ckpt_path, top_k / top_p / temperature / max_new_tokens the user gives (null too) beat the
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
    main(["fit", *common, "--model.init_args.top_k=7", "--model.init_args.temperature=0.3", "--model.init_args.top_p=0.9",
          "--model.init_args.max_new_tokens=3", "--trainer.max_steps=1", "--trainer.val_check_interval=1",
          "--trainer.limit_val_batches=1",
          "--export.enabled=false", f"--trainer.default_root_dir={tmp_path / 'fit'}"])
    ckpt = next((tmp_path / "fit").rglob("*.ckpt"))
    stored = torch.load(ckpt, weights_only=False)["hyper_parameters"]
    assert (stored["top_k"], stored["temperature"], stored["max_new_tokens"], stored["top_p"]) == (7, 0.3, 3, 0.9)

    seen = []
    monkeypatch.setattr(LanguageModelTask, "predict_step", lambda self, batch, i: seen.append(
        (self.hparams.top_k, self.hparams.temperature, self.hparams.max_new_tokens, self.hparams.top_p)) or [])

    def predict(i, *extra):
        main(["predict", *common, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / str(i)}",
              *extra])
        return seen[-1]

    # the YAML gives max_new_tokens: 200 (a config file counts as given); top_k and temperature it leaves
    assert predict(0, "--model.init_args.top_k=null") == (None, 0.3, 200, 0.9)
    assert predict(1, "--model.init_args.top_k=0", "--model.init_args.temperature=1.5",
                   "--model.init_args.top_p=null") == (0, 1.5, 200, None)
    assert predict(2) == (7, 0.3, 200, 0.9)  # top_k, temperature, top_p not given: the checkpoint's values


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


def test_enable_checkpointing_false_drops_the_configs_model_checkpoint(tmp_path, monkeypatch, capsys):
    """`--trainer.enable_checkpointing false` on a config listing a ModelCheckpoint (the TS, STR and VLM configs) failed
    with Lightning's MisconfigurationException before any step: the run trains (here resuming an earlier run with
    --ckpt_path last, which builds the trainer twice), saves no checkpoint, says once that the config's callback is
    left out, and its summary names the export but no checkpoint."""
    monkeypatch.chdir(ROOT)
    ts = ["fit", "--config", DEFAULTS["ts"], "--data.init_args.n_rows=400", "--data.init_args.lookback=24",
          "--data.init_args.horizon=12", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"]
    main([*ts, "--trainer.max_steps=2", "--export.enabled=false"])
    before = sorted(tmp_path.rglob("*.ckpt"))
    assert before
    capsys.readouterr()
    with pytest.warns(UserWarning, match="enable_checkpointing is false: the config's 1 ModelCheckpoint") as seen:
        main([*ts, "--trainer.max_steps=3", "--trainer.enable_checkpointing=false", "--ckpt_path=last"])
    assert len([w for w in seen if "enable_checkpointing is false" in str(w.message)]) == 1
    assert sorted(tmp_path.rglob("*.ckpt")) == before
    out = capsys.readouterr().out
    export = tmp_path / "lightning_logs" / "version_1" / "export"
    assert (export / "model.safetensors").is_file() and f"exported model: {export}" in out
    summary = out.split("zoo fit summary", 1)[1].splitlines()
    assert [ln for ln in summary if ln.startswith("steps: 3 ")]  # resumed at step 2
    assert not [ln for ln in summary if ln.startswith(("best checkpoint", "latest checkpoint"))]


def test_help_names_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "python -m zoo export CKPT OUT" in out and "python -m zoo convert" in out and "fit,validate,test,predict" in out


@pytest.mark.parametrize("argv", [[], ["exprot", "run.ckpt", "out"]])
def test_a_missing_or_unknown_subcommand_names_export_and_convert_too(argv, capsys):
    # Lightning's own error lists fit / validate / test / predict only
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "python -m zoo export CKPT OUT" in err and "python -m zoo convert HF_FOLDER OUT" in err


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_main_ends_the_process_group_its_run_started(outcome, tmp_path, monkeypatch):
    # Lightning destroys only NCCL groups at exit; a gloo group (CPU DDP) left alive can abort the finished
    # process at interpreter teardown. main() must end the group the run started, also when the run fails.
    import torch.distributed as dist

    import zoo.cli

    class Run:  # stands in for the CLI: the trainer's DDP setup starts the group
        def __init__(self, *args, **kwargs):
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
            if outcome == "failed":
                raise RuntimeError("training failed")

    monkeypatch.setattr(zoo.cli, "ZooCLI", Run)
    try:
        if outcome == "failed":
            with pytest.raises(RuntimeError, match="training failed"):
                zoo.cli.main(["fit"])
        else:
            zoo.cli.main(["fit"])
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_run_stopped_by_sigterm_exits_143_not_0(monkeypatch, capsys):
    # Lightning stops a run on SIGTERM (Slurm / Kubernetes preemption) by raising SIGTERMException, a SystemExit
    # without a code: the process exited 0 and `fit && test` or a restart-on-failure policy took it as finished.
    # A process ended by signal 15 exits 128 + 15 (the shell's convention; Lightning#19916)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import zoo.cli

    class Run:  # stands in for the CLI: the fit loop saw the SIGTERM Lightning's handler recorded
        def __init__(self, *args, **kwargs):
            raise SIGTERMException

    monkeypatch.setattr(zoo.cli, "ZooCLI", Run)
    with pytest.raises(SystemExit) as stopped:
        zoo.cli.main(["fit"])
    assert stopped.value.code == 128 + 15
    assert "SIGTERM" in capsys.readouterr().err

    class Done:  # a run that ends with its own exit status keeps it
        def __init__(self, *args, **kwargs):
            raise SystemExit(2)

    monkeypatch.setattr(zoo.cli, "ZooCLI", Done)
    with pytest.raises(SystemExit) as other:
        zoo.cli.main(["fit"])
    assert other.value.code == 2


def test_main_keeps_a_process_group_its_caller_started(tmp_path, capsys):
    # a script that set up torch.distributed itself and calls main() keeps its group afterwards
    import torch.distributed as dist

    from zoo.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit):
            main(["fit", "--help"])
        assert dist.is_initialized()
    finally:
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


def test_ckpt_path_with_a_tilde_restores_the_checkpoints_hyperparameters(tmp_path, monkeypatch):
    """`--ckpt_path=~/...` (after `=` no shell expands the tilde; a YAML value neither): the model is built with the
    checkpoint's hyperparameters, as with the expanded path. It was built from the config instead (Lightning's
    hparams check read the path literally while its loader expanded it): a state_dict mismatch."""
    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HOME", str(tmp_path))
    main(["fit", *LM_TINY, f"--trainer.default_root_dir={tmp_path / 'my runs'}", "--trainer.max_steps=2"])
    ckpt = next((tmp_path / "my runs").rglob("*.ckpt"))
    seen = []
    monkeypatch.setattr(LanguageModelTask, "test_step", lambda self, batch, i: seen.append(
        (self.model.config.dim, self.model.config.n_layers)))
    # the config's own model_args are dim 64, 2 layers; the checkpoint's (LM_TINY) dim 16, 1 layer
    main(["test", "--config", DEFAULTS["lm"], "--data.init_args.test_size=64", "--trainer.limit_test_batches=1",
          "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
          f"--trainer.default_root_dir={tmp_path / 'test'}", f"--ckpt_path=~/{ckpt.relative_to(tmp_path)}"])
    assert seen and seen[0] == (16, 1)


def test_a_ckpt_path_that_does_not_exist_is_named_before_the_data_is_built(tmp_path, monkeypatch):
    """`test --ckpt_path <typo>`: Lightning named the missing file only after the data and the model were built
    (minutes on a large dataset)."""
    from zoo.data import RetrievalDataModule

    monkeypatch.chdir(ROOT)
    built = []
    monkeypatch.setattr(RetrievalDataModule, "setup", lambda self, stage=None: built.append(stage))
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path .*nope\.ckpt: no such checkpoint file"):
        main(["test", *LM_TINY, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={tmp_path / 'nope.ckpt'}"])
    assert not built


def test_ckpt_path_last_restores_the_checkpoints_hyperparameters_as_a_file_path_does(tmp_path, monkeypatch):
    """`test --ckpt_path last` is the newest checkpoint: the model must be built from its hyperparameters, as
    Lightning does for `--ckpt_path <file>` (the config's own model_args, dim 64 x 2 layers, do not fit a checkpoint
    of dim 16 x 1 layer: it was a state_dict mismatch), and test the same model as the file path does."""
    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    root = f"--trainer.default_root_dir={tmp_path}"
    main(["fit", *LM_TINY, root, "--trainer.max_steps=2"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    seen = []
    monkeypatch.setattr(LanguageModelTask, "test_step", lambda self, batch, i: seen.append(
        (self.model.config.dim, self.model.config.n_layers, float(self.model.embed.weight.sum()))))
    plain = ["test", "--config", DEFAULTS["lm"], "--data.init_args.test_size=64", "--trainer.limit_test_batches=1",
             "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", root]
    main([*plain, f"--ckpt_path={ckpt}"])
    main([*plain, "--ckpt_path=last"])
    assert len(seen) == 2 and seen[0][:2] == (16, 1) and seen[1] == seen[0]


def test_ckpt_path_last_saves_the_hyperparameters_the_model_was_built_with(tmp_path, monkeypatch):
    """`fit --ckpt_path last` builds the model twice (the alias needs the trainer's folders): the second time from the
    checkpoint's hyperparameters, yet Lightning saved the first build's (its config dump is kept once made). The
    resumed run's checkpoints and hparams.yaml held the config's model_args (dim 64 x 2 layers) for weights of
    dim 16 x 1 layer: load_from_checkpoint of them failed with a size mismatch. They hold the model's, as
    `--ckpt_path <file>` saves them."""
    import yaml

    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    root = f"--trainer.default_root_dir={tmp_path}"
    main(["fit", *LM_TINY, root, "--trainer.max_steps=2"])
    # resumed with the plain config: the checkpoint's model_args build the model (Lightning's rule)
    main(["fit", "--config", DEFAULTS["lm"], *LM_TINY[3:], root, "--trainer.max_steps=4", "--ckpt_path=last"])
    run = tmp_path / "lightning_logs" / "version_1"
    resumed = next((run / "checkpoints").glob("*.ckpt"))
    assert LanguageModelTask.load_from_checkpoint(resumed).model.config.dim == 16
    saved = yaml.safe_load((run / "hparams.yaml").read_text())
    assert saved["model_args"]["dim"] == 16 and saved["model_args"]["n_layers"] == 1


def test_ckpt_path_last_of_a_fine_tune_does_not_read_the_pretrained_folder(tmp_path, monkeypatch):
    """A fine-tune's checkpoint holds every weight: `test --ckpt_path <file>` runs after the `pretrained` export is
    gone (README). `--ckpt_path last` first built the model from the config, which read that export: it stopped with
    'gone/export is neither an exported model folder...' and, with the folder there, loaded it for nothing."""
    import shutil

    monkeypatch.chdir(ROOT)
    lm = [a for a in LM_TINY if not a.startswith("--export")]
    main(["fit", *lm, f"--trainer.default_root_dir={tmp_path / 'base'}", "--trainer.max_steps=1"])
    export = tmp_path / "base" / "lightning_logs" / "version_0" / "export"
    ft = [*LM_TINY, f"--model.init_args.pretrained={export}", f"--trainer.default_root_dir={tmp_path / 'ft'}"]
    main(["fit", *ft, "--trainer.max_steps=2"])
    import lightning as L
    import torch

    import zoo
    from zoo.tasks import LanguageModelTask

    # a first `fit --ckpt_path last` (no checkpoint in its folders yet) still starts from the export's weights
    start = []
    monkeypatch.setattr(L.Callback, "on_train_start", lambda self, trainer, module: start.append(
        module.model.embed.weight.detach().clone()), raising=False)
    main(["fit", *ft[:-1], f"--trainer.default_root_dir={tmp_path / 'ft2'}", "--trainer.max_steps=1",
          "--ckpt_path=last"])
    assert start and torch.equal(start[0], zoo.load_pretrained(export).embed.weight)
    shutil.rmtree(export)
    seen = []

    monkeypatch.setattr(LanguageModelTask, "test_step", lambda self, batch, i: seen.append(self.model.config.dim))
    main(["test", *ft, "--trainer.limit_test_batches=1", "--ckpt_path=last"])
    assert seen and seen[0] == 16


def test_first_fit_ckpt_path_last_of_a_model_only_its_export_builds_saves_the_pretrained_it_was_built_with(
        tmp_path, monkeypatch):
    """configs/lm/adapt_difflora.yaml's task builds only from its (vanilla) export: without `pretrained` the
    config's lm-diff-tiny gets a difflora adapter, which refuses diff attention. A first `fit --ckpt_path last` built
    it without `pretrained` (failed), then as configured; Lightning's config dump, made in the failed build, was kept:
    the run saved `pretrained: null` (hparams.yaml, the checkpoint), and its checkpoint could not be loaded."""
    import yaml

    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/lm/tiny_vanilla.yaml", *[a for a in LM_TINY[2:] if not a.startswith("--export")],
          f"--trainer.default_root_dir={tmp_path / 'base'}", "--trainer.max_steps=1"])
    export = tmp_path / "base" / "lightning_logs" / "version_0" / "export"
    main(["fit", *LM_TINY, f"--model.init_args.pretrained={export}", "--model.init_args.adapter={method: difflora}",
          f"--trainer.default_root_dir={tmp_path / 'ft'}", "--trainer.max_steps=2", "--ckpt_path=last"])
    run = tmp_path / "ft" / "lightning_logs" / "version_0"
    assert yaml.safe_load((run / "hparams.yaml").read_text())["pretrained"] == str(export)
    loaded = LanguageModelTask.load_from_checkpoint(next((run / "checkpoints").glob("*.ckpt")))
    assert loaded.model.config.attn_type == "vanilla" and loaded.model.adapter_config["method"] == "difflora"


def test_ckpt_path_names_the_architecture_model_args_it_does_not_use(tmp_path, monkeypatch):
    """With --ckpt_path the checkpoint's architecture wins (Lightning's rule: its weights fix it), so model_args that
    differ from it were dropped silently; now a warning names them. Runtime fields still apply; model_args equal to the
    checkpoint's (written out or left at the architecture's default) say nothing."""
    import warnings

    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    main(["fit", *LM_TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    seen = []
    monkeypatch.setattr(LanguageModelTask, "test_step", lambda self, batch, i: seen.append(
        (self.model.config.dim, self.model.config.n_layers, self.model.config.dropout)))
    plain = ["test", "--config", DEFAULTS["lm"], "--data.init_args.test_size=64", "--trainer.limit_test_batches=1",
             "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
             f"--ckpt_path={ckpt}"]
    with pytest.warns(UserWarning, match=r"model_args \{'dim': 32, 'n_layers': 3\} not used: the checkpoint's weights"):
        main([*plain, "--model.init_args.model_args={dim: 32, n_layers: 3, n_heads: 2, dropout: 0.25}"])
    # the checkpoint's architecture, plus a field it leaves at LMConfig's default written out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([*plain, "--model.init_args.model_args={dim: 16, n_layers: 1, n_heads: 2, max_seq_len: 128, rope_theta: 10000.0}"])
    assert not [w for w in caught if "not used" in str(w.message)]
    assert seen == [(16, 1, 0.25), (16, 1, 0.0)]


def test_ckpt_path_model_args_equal_as_list_and_tuple_say_nothing(tmp_path, monkeypatch):
    """A recognizer built in Python with patch_size (4, 8) keeps the tuple in its checkpoint; the same value in YAML is
    the list [4, 8]. The --ckpt_path warning named it as an architecture field "not used" (a tuple != a list), though
    the model is the one asked for. A value that differs (8 x 8 patches) is still named."""
    import warnings

    import lightning as L

    from zoo.data.str import STRDataModule
    from zoo.tasks import RecognitionTask

    monkeypatch.chdir(ROOT)
    dm = STRDataModule(charset="36", max_length=6, synthetic={"train": 8, "val": 0, "test": 8}, batch_size=8,
                       eval_batch_size=8)
    task = RecognitionTask(arch="str-diff-tiny", model_args={"patch_size": (4, 8)}, data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    ckpt = tmp_path / "python.ckpt"
    trainer.save_checkpoint(ckpt)
    plain = ["test", "--config", DEFAULTS["str"], "--data.init_args.synthetic={train: 8, val: 0, test: 8}",
             "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
             f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={ckpt}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([*plain, "--model.init_args.model_args={patch_size: [4, 8], dropout: 0.0}"])
    assert not [w for w in caught if "not used" in str(w.message)]
    with pytest.warns(UserWarning, match=r"model_args \{'patch_size': \[8, 8\]\} not used"):
        main([*plain, "--model.init_args.model_args={patch_size: [8, 8], dropout: 0.0}"])


def test_ckpt_path_reads_a_checkpoint_saved_from_python(tmp_path, monkeypatch):
    """A task trained in Python (trainer.save_checkpoint) saves its hyperparameters without the CLI's _class_path:
    `--ckpt_path` failed ("Parsing of ckpt_path hyperparameters failed!", data_info not accepted). Its zoo_task_class
    names the class; the model is built from its hyperparameters as for a CLI checkpoint (dim 16 x 1 layer, where the
    config's own model_args are 64 x 2), with its weights."""
    import lightning as L

    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    dm = RetrievalDataModule(task="mqar", seq_len=64, n_pairs=8, n_keys=32, n_values=32, train_size=64, val_size=32,
                             test_size=32, batch_size=16)  # the config's data (its vocabulary)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 128},
                             data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    ckpt = tmp_path / "python.ckpt"
    trainer.save_checkpoint(ckpt)
    seen = []
    monkeypatch.setattr(LanguageModelTask, "test_step", lambda self, batch, i: seen.append(
        (self.model.config.dim, self.model.config.n_layers, float(self.model.embed.weight.sum()))))
    main(["test", "--config", DEFAULTS["lm"], "--data.init_args.test_size=64", "--trainer.limit_test_batches=1",
          "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
          f"--ckpt_path={ckpt}"])
    assert seen and seen[0] == (16, 1, pytest.approx(float(task.model.embed.weight.sum())))


def test_ckpt_of_another_domain_is_refused_by_name(tmp_path, monkeypatch):
    """validate / test with a checkpoint another domain's task wrote: an error naming both classes."""
    monkeypatch.chdir(ROOT)
    main(["fit", *LM_TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    for sub in ("validate", "test"):
        with pytest.raises(ValueError, match=r"LanguageModelTask.*ForecastTask|ForecastTask.*LanguageModelTask"):
            main([sub, "--config", DEFAULTS["ts"], f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.enable_progress_bar=false"])


def test_export_of_a_bf16_true_checkpoint_keeps_its_dtype_as_the_fits_own_export_does(tmp_path, monkeypatch):
    """A `--trainer.precision bf16-true` run trains and saves bfloat16 weights; the fit's export writes them as they
    are (as Hugging Face's save_pretrained keeps a model's dtype), while `python -m zoo export` of its checkpoint
    wrote float32 (load_from_checkpoint builds float32): one run, two exports of other dtypes and sizes."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    lm = [a for a in LM_TINY if not a.startswith("--export")]
    main(["fit", *lm, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2", "--trainer.precision=bf16-true"])
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    main(["export", str(ckpt), str(tmp_path / "again")])
    saved = {k.removeprefix("model."): v for k, v in torch.load(ckpt, weights_only=False)["state_dict"].items()}
    exported = load_file(str(tmp_path / "again" / "model.safetensors"))
    at_fit = load_file(str(run / "export" / "model.safetensors"))
    assert exported and all(v.dtype == saved[k].dtype == torch.bfloat16 and torch.equal(v, saved[k])
                            for k, v in exported.items())
    assert exported.keys() == at_fit.keys()
    assert all(v.dtype == at_fit[k].dtype and torch.equal(v, at_fit[k]) for k, v in exported.items())
    old = tmp_path / "old_format.ckpt"  # torch's older, non-zip format (which cannot be memory-mapped)
    torch.save(torch.load(ckpt, weights_only=False), old, _use_new_zipfile_serialization=False)
    main(["export", str(old), str(tmp_path / "from_old")])
    assert all(torch.equal(v, exported[k]) and v.dtype == exported[k].dtype
               for k, v in load_file(str(tmp_path / "from_old" / "model.safetensors")).items())


def _ckpt(path, age):
    import os
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_ckpt_path_last_stays_in_the_users_checkpoint_folders(tmp_path):
    """`--ckpt_path last` with ModelCheckpoint(dirpath=...) or a fixed logger version resolves within that run's
    folder (as Lightning does), never to a newer checkpoint of another experiment sharing the logger's root."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from zoo.cli import last_checkpoint

    other = _ckpt(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=9-step=900.ckpt", age=10)
    _ckpt(tmp_path / "checkpoints" / "stray.ckpt", age=5)
    mine = _ckpt(tmp_path / "mine" / "last.ckpt", age=100)
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "mine")],
                        logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    assert last_checkpoint(trainer) == str(mine)

    run1 = _ckpt(tmp_path / "lightning_logs" / "run1" / "checkpoints" / "last.ckpt", age=100)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path, version="run1"), accelerator="cpu",
                        enable_progress_bar=False)
    assert last_checkpoint(trainer) == str(run1)
    # an automatic version (a new, empty folder): the newest checkpoint of the earlier versions
    trainer = L.Trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path), accelerator="cpu",
                        enable_progress_bar=False)
    assert last_checkpoint(trainer) == str(other)


def test_ckpt_path_last_takes_the_runs_end_state_over_its_best_epoch(tmp_path):
    """Configs that keep the best checkpoint by a metric also save last.ckpt, and `--ckpt_path last` takes it
    over a best-epoch checkpoint of the same folder written about the same time: resuming from the best epoch
    silently rewound the run (STR / VLM / TS configs saved only the best one)."""
    import lightning as L
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    from zoo.cli import last_checkpoint

    ckdir = tmp_path / "lightning_logs" / "version_1" / "checkpoints"
    _ckpt(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", age=500)  # an older run
    last = _ckpt(ckdir / "last.ckpt", age=11)
    _ckpt(ckdir / "epoch=3-step=40.ckpt", age=10)  # the best epoch, its file a moment newer
    trainer = L.Trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    assert last_checkpoint(trainer) == str(last)

    monitored = []
    for cfg in sorted((ROOT / "configs").rglob("*.yaml")):
        for cb in (yaml.safe_load(cfg.read_text()).get("trainer") or {}).get("callbacks") or []:
            if cb["class_path"].endswith("ModelCheckpoint") and cb.get("init_args", {}).get("monitor"):
                monitored.append(cfg.name)
                assert cb["init_args"].get("save_last") is True, f"{cfg} keeps only the best checkpoint"
    assert len(monitored) >= 10


def test_ckpt_path_last_skips_an_earlier_runs_last_ckpt_in_a_shared_folder(tmp_path):
    """A ModelCheckpoint(dirpath=...) folder shared by two runs: the first saved last.ckpt (save_last), the second
    only best-k files. `--ckpt_path last` resumes the newer run's newest checkpoint, not the first run's last.ckpt
    of an hour ago (last.ckpt wins only against a checkpoint of the same save, seconds apart)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.cli import last_checkpoint

    shared = tmp_path / "ckpts"
    _ckpt(shared / "last.ckpt", age=3600)  # the first run's end state
    _ckpt(shared / "epoch=9-step=90.ckpt", age=3600)
    newer = _ckpt(shared / "epoch=2-step=30.ckpt", age=10)  # the second run, without save_last
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu", enable_progress_bar=False,
                        callbacks=[ModelCheckpoint(dirpath=shared)])
    assert last_checkpoint(trainer) == str(newer)


def _cut_checkpoint(path, keep=0.5, age=0):
    """A checkpoint as torch.save writes it (a zip archive), cut to ``keep`` of its bytes as a process killed while
    saving or copying it leaves it (keep=1: whole)."""
    import os
    import time

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.arange(4096.0)}, "global_step": 7}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_ckpt_path_last_skips_a_checkpoint_cut_short_and_says_so(tmp_path):
    """A run killed while saving its newest checkpoint (SIGKILL, the OOM killer) leaves that file cut short; `--ckpt_path
    last` took it and failed with torch's 'failed finding central directory', naming no file. It resumes from the
    newest whole checkpoint instead, and a warning names the damaged file."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from zoo.cli import last_checkpoint

    ckdir = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    whole = _cut_checkpoint(ckdir / "step=10.ckpt", keep=1, age=60)
    cut = _cut_checkpoint(ckdir / "step=20.ckpt", keep=0.6, age=1)
    with pytest.raises((RuntimeError, OSError)):  # what torch (and Lightning's resume) make of the cut file
        torch.load(cut, weights_only=True)
    assert torch.load(whole, weights_only=True)["global_step"] == 7
    trainer = L.Trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    with pytest.warns(UserWarning, match="step=20.ckpt .cut short") as said:
        assert last_checkpoint(trainer) == str(whole)
    assert str(whole) in str(said[0].message)


def test_ckpt_path_of_a_checkpoint_cut_short_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cut = _cut_checkpoint(tmp_path / "run" / "epoch=0-step=4.ckpt", keep=0.9)
    with pytest.raises(ValueError, match=r"epoch=0-step=4\.ckpt is not a whole checkpoint: cut short"):
        main(["test", *LM_TINY, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={cut}"])


def test_interpolation_of_a_key_left_at_its_default_runs(tmp_path, monkeypatch):
    """README: OmegaConf interpolation works in configs, e.g. `${fit.data.init_args.seq_len}`. The CLI's second
    parse (without defaults, to learn which keys the user gave) failed on it with InterpolationKeyError when the
    key it names is left at its default. Reference: the datamodule's default seq_len, from its signature."""
    import inspect
    import json

    from zoo.data import RetrievalDataModule

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "interp.yaml"
    cfg.write_text(
        "model:\n  class_path: zoo.tasks.LanguageModelTask\n  init_args:\n"
        "    model_args: {dim: 16, n_layers: 1, n_heads: 2, max_seq_len: '${fit.data.init_args.seq_len}'}\n"
        "data:\n  class_path: zoo.data.RetrievalDataModule\n"
        "  init_args: {n_pairs: 2, n_keys: 8, n_values: 8, train_size: 8, val_size: 4, batch_size: 4}\n")
    main(["fit", "--config", str(cfg), "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    exported = next(tmp_path.rglob("config.json"))
    seq_len = inspect.signature(RetrievalDataModule).parameters["seq_len"].default
    assert json.loads(exported.read_text())["config"]["max_seq_len"] == seq_len


def test_a_logger_save_dir_with_a_tilde_keeps_zoos_files_in_the_run_folder(tmp_path, monkeypatch):
    """`--trainer.logger.save_dir=~/runs` (no shell expands a tilde after `=`; a YAML value neither): Lightning writes
    the run (metrics.csv, checkpoints) under $HOME/runs, but its `trainer.log_dir` keeps the `~`. `test --ckpt_path
    last` found no checkpoint there and tested random weights, and test_metrics.json went to a folder named `~` in the
    working directory."""
    from zoo.tasks import LanguageModelTask

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    logger = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=~/runs"]
    cfg = [a.replace("configs/", str(ROOT / "configs") + "/") for a in LM_TINY]
    monkeypatch.chdir(work)
    main(["fit", *cfg, *logger, "--trainer.max_steps=2"])
    ckpt = next((home / "runs").rglob("*.ckpt"))  # where Lightning put it
    seen = []
    monkeypatch.setattr(LanguageModelTask, "on_test_start", lambda self: seen.append(self.trainer.ckpt_path))
    main(["test", *cfg, *logger, "--trainer.limit_test_batches=1", "--ckpt_path=last"])
    assert seen == [str(ckpt)]
    run = home / "runs" / "lightning_logs" / "version_1"
    assert (run / "metrics.csv").is_file() and (run / "test_metrics.json").is_file()
    assert not (work / "~").exists()


def test_ckpt_path_best_is_the_best_checkpoint_of_the_previous_run(tmp_path, monkeypatch):
    """`test --ckpt_path best` in a new process: the best checkpoint the earlier fit's ModelCheckpoint kept (here by
    its monitored value, the smallest step: the first save), as `best` means within one Lightning session. Lightning
    knows no best in a new process and said "`ModelCheckpoint` is not configured to save the best model" although the
    config's ModelCheckpoint monitors a metric; without any run it names what it looked for."""
    from zoo.tasks import LanguageModelTask

    monkeypatch.chdir(ROOT)
    root = f"--trainer.default_root_dir={tmp_path}"
    ckpt_cb = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=step",
               "--trainer.callbacks.mode=min", "--trainer.callbacks.save_last=true"]
    # the config's own model_args (dim 64) do not fit the checkpoint's (LM_TINY: dim 16): built from the file's
    test = ["test", "--config", DEFAULTS["lm"], "--data.init_args.test_size=64", "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", root, *ckpt_cb, "--ckpt_path=best"]
    with pytest.raises(ValueError, match="--ckpt_path best: no earlier run's checkpoint was found"):
        main(test)  # no run yet
    main(["fit", *LM_TINY, root, *ckpt_cb, "--trainer.max_steps=4"])
    run = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in run.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    seen = []
    monkeypatch.setattr(LanguageModelTask, "on_test_start", lambda self: seen.append(
        (self.trainer.ckpt_path, self.model.config.dim)))
    main(test)
    assert seen == [(str(run / "epoch=0-step=2.ckpt"), 16)]


@pytest.mark.parametrize("sub", ["validate", "test"])
def test_ckpt_path_last_without_a_checkpoint_is_refused_outside_fit(sub, tmp_path, monkeypatch):
    """`test --ckpt_path last` where no run left a checkpoint (a mistyped --trainer.default_root_dir): Lightning
    warned and evaluated the randomly initialized model, writing its metrics (test_metrics.json) as the run's. Outside
    fit (where `last` before any run means "start afresh", Lightning's rule) it is an error naming where it looked."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="--ckpt_path last: no checkpoint"):
        main([sub, *LM_TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.limit_test_batches=1",
              "--ckpt_path=last"])
    assert not list(tmp_path.rglob("*.json"))


def test_an_arch_or_attention_type_other_than_the_checkpoints_is_named(tmp_path, monkeypatch):
    """`test --config tiny.yaml --model.init_args.attn_type vanilla --ckpt_path <diff run>`: the checkpoint's model is
    built (its weights fix it, Lightning's rule) and the setting given otherwise is named, as model_args' architecture
    fields are; it was replaced silently (a tiny_vanilla.yaml test of a diff checkpoint tested the diff model)."""
    monkeypatch.chdir(ROOT)
    main(["fit", *LM_TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    plain = ["test", *LM_TINY, f"--trainer.default_root_dir={tmp_path / 't'}", "--trainer.limit_test_batches=1",
             f"--ckpt_path={ckpt}"]
    with pytest.warns(UserWarning, match="attn_type 'vanilla' not used, the checkpoint's 'diff' is"):
        main([*plain, "--model.init_args.attn_type=vanilla"])
    with pytest.warns(UserWarning, match="arch 'lm-vanilla-tiny' not used, the checkpoint's 'lm-diff-tiny' is"):
        main([*plain, "--model.init_args.arch=lm-vanilla-tiny"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(plain)  # the config's own arch is the checkpoint's: nothing to say
    assert not [w for w in caught if "not used, the checkpoint's" in str(w.message)]


@pytest.mark.parametrize("recorded", [r"C:\Users\me\runs\lightning_logs\version_0\checkpoints\epoch=0-step=2.ckpt",
                                      "/home/me/runs/lightning_logs/version_0/checkpoints/epoch=0-step=2.ckpt"])
def test_ckpt_path_best_finds_the_file_beside_the_checkpoint_that_names_it_after_a_move(recorded, tmp_path):
    # a run folder copied from another machine (Windows included: its path has no "/") names its best file by the old
    # path; the file sits beside last.ckpt
    import os
    from types import SimpleNamespace

    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.cli import best_checkpoint

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    cb = ModelCheckpoint(monitor="val/loss", mode="min")
    torch.save({"state_dict": {}}, ck / "epoch=0-step=2.ckpt")
    torch.save({"callbacks": {cb.state_key: {"best_model_path": recorded}}}, ck / "last.ckpt")
    os.utime(ck / "epoch=0-step=2.ckpt", (1, 1))  # last.ckpt is the newest
    trainer = SimpleNamespace(checkpoint_callback=cb, checkpoint_callbacks=[cb], logger=None,
                              default_root_dir=str(tmp_path))
    assert best_checkpoint(trainer) == str(ck / "epoch=0-step=2.ckpt")


@pytest.mark.parametrize("domain", ["str", "ts", "vlm"])
def test_predict_fast_dev_run_writes_no_file(domain, tmp_path, monkeypatch, capsys):
    """Lightning's fast_dev_run smoke test has no logger, hence no run folder: predict wrote predictions.jsonl and the
    domain's own file (predictions.csv holding one batch's rows, retrieval.jsonl ranked within one batch,
    forecast.csv / .png) into the working directory, and the next smoke run was refused over them. A smoke run
    writes no metrics file and no logs: no predictions file either (its rows are printed)."""
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        Image.new("RGB", (100, 32), (255, 255, 255)).save(inputs / f"{i}.png")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default_root_dir: the working directory
    extra = {
        "str": ["--data.init_args.predict_dir", str(inputs), "--data.init_args.eval_batch_size", "2",
                "--data.init_args.synthetic", '{"train": 8, "val": 4, "test": 4}'],
        "ts": ["--data.init_args.n_rows", "1500"],
        "vlm": ["--model.init_args.pretrained=vlm-fda-tiny", "--data.init_args.n_train=16", "--data.init_args.n_val=8",
                "--data.init_args.n_test=12", "--data.init_args.eval_batch_size=4"],
    }[domain]
    for echo in (True, False):  # the second smoke run was refused over the first one's files
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # randomly initialized weights (str, ts)
            main(["predict", "--config", str(ROOT / DEFAULTS[domain]), "--trainer.fast_dev_run=1",
                  "--trainer.enable_progress_bar=false", f"--predict_writer.echo={str(echo).lower()}", *extra])
        out = capsys.readouterr().out
        assert "fast_dev_run" in out  # and it says why there is no file
        # the rows are the smoke run's only output: printed even with echo off (they were computed and dropped);
        # VLM's predict rows are its retrieval, ranked at the end (said above)
        assert domain == "vlm" or [ln for ln in out.splitlines() if ln.startswith("{")], out[-2000:]
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == []


def test_testing_a_fine_tune_with_its_own_config_names_no_arch(tmp_path, monkeypatch):
    """A fine-tune of an export under a config whose arch only sizes the build (pretrained given): its checkpoint
    carries the export's name, and `test --ckpt_path last` with that same config warned "arch '<config's>' not used,
    the checkpoint's '<export's>' is" on correct use. A config without `pretrained` is still told
    (test_an_arch_or_attention_type_other_than_the_checkpoints_is_named)."""
    monkeypatch.chdir(ROOT)
    args = ["--config", "configs/ts/synthetic.yaml", "--model.init_args.pretrained=ts-itransformer-diff-etth1",
            "--data.init_args.n_rows=1200", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--export.enabled=false",
            f"--trainer.default_root_dir={tmp_path}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["fit", *args])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["test", *args, "--ckpt_path=last"])
    said = [str(w.message) for w in caught if "not used, the checkpoint's" in str(w.message)]
    assert not said, said


def test_export_reads_the_checkpoint_once_and_maps_it(tmp_path, monkeypatch):
    """`python -m zoo export` read the checkpoint four times: its task class, load_from_checkpoint's own peek, the load
    (all of it into memory: weights and AdamW's two moments, three times the model) and the dtypes again; a multi-GB
    checkpoint in torch's older format was read whole four times. Now one read, memory-mapped where torch can map it
    (the optimizer state is never read). Reference: the checkpoint's own tensors."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    lm = [a for a in LM_TINY if not a.startswith("--export")]
    main(["fit", *lm, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=False)
    old = tmp_path / "old_format.ckpt"  # torch's older, non-zip format (which cannot be memory-mapped)
    torch.save(saved, old, _use_new_zipfile_serialization=False)
    load = torch.load
    reads = []

    def counted(f, *args, **kwargs):
        out = load(f, *args, **kwargs)  # a call that raises (a mapping torch refuses) reads no tensor
        reads.append(kwargs.get("mmap"))
        return out

    monkeypatch.setattr(torch, "load", counted)
    for path, mapped in ((ckpt, [True]), (old, [None])):
        reads.clear()
        main(["export", str(path), str(tmp_path / path.stem)])
        assert reads == mapped, path
        exported = load_file(str(tmp_path / path.stem / "model.safetensors"))
        assert exported and all(torch.equal(v, saved["state_dict"][f"model.{k}"]) for k, v in exported.items())
    # a Lightning without the internals the single read uses: its public load, the same export
    import zoo.hub

    monkeypatch.setattr(zoo.hub, "_lightning_loader", lambda: None)
    reads.clear()
    main(["export", str(ckpt), str(tmp_path / "public_load")])
    assert len(reads) > 1  # the public call reads the file again
    exported = load_file(str(tmp_path / "public_load" / "model.safetensors"))
    assert exported and all(torch.equal(v, saved["state_dict"][f"model.{k}"]) for k, v in exported.items())


def test_a_task_or_datamodule_error_reaches_the_user_as_raised(tmp_path, monkeypatch):
    """An error raised by the task's or the datamodule's __init__ came wrapped by jsonargparse: "Does not validate
    against any of the Union subtypes", the class's message beside a NoneType alternative's, and the whole Namespace
    of arguments (a TS task's data_info with its scaler statistics) printed last, where the user reads. Reference:
    the exception the class raises when built directly."""
    from zoo.data.retrieval import RetrievalDataModule
    from zoo.tasks.lm import LanguageModelTask

    monkeypatch.chdir(ROOT)
    for arg, build in (("--model.init_args.top_k=-1", lambda: LanguageModelTask(top_k=-1)),
                       ("--data.init_args.batch_size=0", lambda: RetrievalDataModule(batch_size=0))):
        with pytest.raises(ValueError) as direct:
            build()
        with pytest.raises(type(direct.value)) as err:
            main(["fit", *LM_TINY, arg, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1"])
        assert str(err.value) == str(direct.value) and "Union subtypes" not in str(err.value)


def test_a_single_callbacks_error_is_not_replaced_by_jsonargparses_list_check(tmp_path, monkeypatch):
    """jsonargparse chains the Union error to its first subtype's error: for one trainer callback given as a mapping
    (not a list) that is its own "Expected a <class 'list'>. Got value: Namespace(...)", which the CLI raised in place
    of the whole message, hiding the callback's. Reference: the message EarlyStopping raises when built directly.
    And an error a task raises `from` another keeps that cause (it was dropped with the wrapping)."""
    from lightning.pytorch.callbacks import EarlyStopping

    import zoo.tasks.lm

    monkeypatch.chdir(ROOT)
    with pytest.raises(Exception) as direct:
        EarlyStopping(monitor="val/loss", mode="bad")
    callback = "{class_path: lightning.pytorch.callbacks.EarlyStopping, init_args: {monitor: val/loss, mode: bad}}"
    with pytest.raises(Exception) as err:
        main(["fit", *LM_TINY, f"--trainer.callbacks={callback}", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.max_steps=1"])
    assert str(direct.value) in str(err.value), str(err.value)[:300]

    inner = KeyError("the underlying reason")

    def refuse(top_k):
        raise ValueError("top_k refused") from inner

    monkeypatch.setattr(zoo.tasks.lm, "check_top_k", refuse)
    with pytest.raises(ValueError, match="^top_k refused$") as err:
        main(["fit", *LM_TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1"])
    assert err.value.__cause__ is inner
