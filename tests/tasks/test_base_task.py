"""ZooTask (zoo/tasks/base.py): weight-decay groups follow modules' no_weight_decay() (timm's convention)."""

import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from zoo.tasks.base import ZooTask


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(4, 3))
        self.lin = nn.Linear(3, 2)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}

    def forward(self, x):
        return self.lin(x + self.pos.sum(0))


class Task(ZooTask):
    def __init__(self) -> None:
        super().__init__(lr=1e-2, weight_decay=0.1, warmup_steps=0, scheduler="constant")
        self.model = Tiny()

    def training_step(self, batch, batch_idx):
        return self.model(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.model(batch).pow(2).mean())


class OldTask(Task):
    """Groups as before no_weight_decay() was honoured: every matrix decayed."""

    def no_weight_decay_names(self) -> set[str]:
        return set()


def _decayed(trainer, task):
    ids = {id(p) for g in trainer.optimizers[0].param_groups if g["weight_decay"] > 0 for p in g["params"]}
    return {n for n, p in task.named_parameters() if id(p) in ids}


def _fit(task, steps, ckpt=None):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None), ckpt_path=ckpt)
    return trainer


def test_no_weight_decay_names_are_joined_to_their_module_path():
    task = Task()
    assert task.no_weight_decay_names() == {"model.pos"}
    opt = task.configure_optimizers()["optimizer"]
    decay = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert [id(p) for p in decay] == [id(task.model.lin.weight)]  # not pos (listed), not the bias (1-D)


def test_a_run_saved_with_the_old_grouping_resumes_with_it(tmp_path):
    trainer = _fit(OldTask(), 1)
    trainer.save_checkpoint(tmp_path / "old.ckpt")
    task = Task()
    with pytest.warns(UserWarning, match="keeps that grouping"):
        trainer = _fit(task, 2, tmp_path / "old.ckpt")
    assert trainer.global_step == 2 and _decayed(trainer, task) == {"model.pos", "model.lin.weight"}
    # a run saved with today's grouping resumes with it, silently
    fresh = _fit(Task(), 1)
    fresh.save_checkpoint(tmp_path / "new.ckpt")
    task = Task()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*keeps that grouping")
        trainer = _fit(task, 2, tmp_path / "new.ckpt")
    assert _decayed(trainer, task) == {"model.lin.weight"}


def test_a_run_resumed_with_other_decay_settings_is_named(tmp_path):
    """Saved with today's grouping (pos exempt) and resumed by a task that decays it: a message naming both
    groupings, not the optimizer's own group-size error."""
    trainer = _fit(Task(), 1)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    with pytest.raises(ValueError, match=r"groups of sizes \[1, 2\] .*OldTask \[2, 1\].*settings it was trained with"):
        _fit(OldTask(), 2, tmp_path / "new.ckpt")
    # evaluating the checkpoint reads its weights only: the optimizer's grouping does not matter there
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        OldTask(), dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None), ckpt_path=tmp_path / "new.ckpt")


def test_test_summary_names_the_checkpoint_it_evaluated_not_the_fits_best(tmp_path, capsys):
    """`zoo test --ckpt_path last.ckpt` restores the fit's ModelCheckpoint state, whose best is another file: the
    summary printed that one as "best checkpoint" beside numbers that came from last.ckpt."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.tasks.callbacks import RunSummary

    class Scored(Task):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.current_epoch))  # epoch 0 is the best

        def test_step(self, batch, batch_idx):
            self.log("test/w", self.model.lin.weight.detach().abs().sum())

    data = DataLoader([torch.randn(5, 3)], batch_size=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True)
    L.Trainer(accelerator="cpu", max_epochs=2, callbacks=[ckpt], logger=False, enable_progress_bar=False,
              enable_model_summary=False).fit(Scored(), data, data)
    assert ckpt.best_model_path != ckpt.last_model_path
    capsys.readouterr()
    again = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True)
    L.Trainer(accelerator="cpu", callbacks=[again, RunSummary()], logger=False, enable_progress_bar=False,
              enable_model_summary=False).test(Scored(), data, ckpt_path=ckpt.last_model_path, verbose=False)
    out = capsys.readouterr().out
    assert f"evaluated checkpoint: {ckpt.last_model_path}" in out
    assert ckpt.best_model_path not in out
    # the evaluated weights' training progress, as the file records it, not the test trainer's own 0 steps
    saved = torch.load(ckpt.last_model_path, weights_only=False)
    assert saved["global_step"] > 0
    assert f"checkpoint saved at step {saved['global_step']} (epoch {saved['epoch']}, 0-based)  time:" in out
    assert "steps: 0  epochs: 0" not in out


def test_fit_summary_calls_only_a_monitored_checkpoint_best(tmp_path, capsys):
    """A ModelCheckpoint without a monitor (Lightning's default one, or coco_minilm.yaml's latest-{step} beside the
    val/r1 one) keeps the latest state, which Lightning still calls best_model_path: the summary printed it as a second
    "best checkpoint" beside the one the metric chose."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.tasks.callbacks import RunSummary

    class Scored(Task):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.current_epoch))  # epoch 0 is the best

    data = DataLoader([torch.randn(5, 3)], batch_size=None)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_top_k=1)
    latest = ModelCheckpoint(dirpath=tmp_path, filename="latest-{step}", every_n_train_steps=1, save_top_k=1)
    L.Trainer(accelerator="cpu", max_epochs=3, callbacks=[best, latest, RunSummary()], logger=False,
              enable_progress_bar=False, enable_model_summary=False).fit(Scored(), data, data)
    assert best.best_model_path.endswith("epoch=0-step=1.ckpt") and latest.best_model_path.endswith("latest-step=3.ckpt")
    lines = capsys.readouterr().out.splitlines()
    assert [ln for ln in lines if "best checkpoint" in ln] == [
        f"best checkpoint (val/loss, min): {best.best_model_path} (resume with --ckpt_path)"]
    assert [ln for ln in lines if latest.best_model_path in ln] == [
        f"latest checkpoint: {latest.best_model_path} (resume with --ckpt_path)"]


def test_fit_summary_says_when_the_latest_checkpoint_misses_the_last_steps(tmp_path, capsys):
    """A run that stops between two saves (max_steps 7, a save every 5 steps): "latest checkpoint: ...step=5.ckpt
    (resume with --ckpt_path)" read as the run's end, and a resume quietly trained steps 6 and 7 again. Reference:
    the step the file records and the trainer's step count."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.tasks.callbacks import ExportOnFitEnd, RunSummary

    data = DataLoader([torch.randn(5, 3)] * 10, batch_size=None)
    every5 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=7, callbacks=[every5, RunSummary()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Task(), data)
    saved = torch.load(every5.best_model_path, weights_only=False)["global_step"]
    assert (saved, trainer.global_step) == (5, 7)
    assert (f"latest checkpoint: {every5.best_model_path} (step 5 of 7: the last 2 step(s) were saved nowhere; "
            "--ckpt_path resumes from step 5)") in capsys.readouterr().out
    # with the fit's export (this toy model has no export format: the callback's record of one stands in), the last
    # steps are there

    class Exported(ExportOnFitEnd):
        def on_fit_end(self, trainer, module):
            self.exported = tmp_path / "export"

    every5 = ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=5, save_top_k=1)
    L.Trainer(accelerator="cpu", max_steps=7, callbacks=[every5, Exported(), RunSummary()], logger=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              default_root_dir=tmp_path / "b").fit(Task(), data)
    assert "(step 5 of 7: the last 2 step(s) are in the export only;" in capsys.readouterr().out


def test_fit_summary_does_not_call_steps_unsaved_that_another_checkpoint_holds(tmp_path, capsys):
    """coco_minilm.yaml's layout: a latest-{step} checkpoint every 5 steps beside a monitored one with save_last. The
    run's last validation (step 7) saved the monitored checkpoint and last.ckpt, yet the latest-{step} line said "the
    last 2 step(s) were saved nowhere; --ckpt_path resumes from step 5". Reference: the step last.ckpt records."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.tasks.callbacks import RunSummary

    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_top_k=1, save_last=True)
    every5 = ModelCheckpoint(dirpath=tmp_path, filename="latest-{step}", every_n_train_steps=5, save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, callbacks=[best, every5, RunSummary()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(Task(), DataLoader([torch.randn(5, 3)] * 7, batch_size=None),
                DataLoader([torch.randn(5, 3)], batch_size=None))
    assert torch.load(best.last_model_path, weights_only=False)["global_step"] == trainer.global_step == 7
    out = capsys.readouterr().out
    assert "saved nowhere" not in out and "export only" not in out
    assert (f"latest checkpoint: {every5.best_model_path} (step 5 of 7; another checkpoint of this run holds step 7: "
            "--ckpt_path last resumes from the newest)") in out


@pytest.mark.parametrize("stop, epochs", [({"max_steps": 3}, "0 + 3/7 batches"), ({"max_steps": 10}, "1 + 3/7 batches"),
                                          ({"max_steps": 7}, "1"), ({"max_epochs": 2}, "2")])
def test_fit_summary_counts_the_epoch_a_run_stopped_inside_as_partial(stop, epochs, tmp_path, capsys):
    """A fit stopped by max_steps 3 batches into its first epoch (its checkpoint is epoch=0-step=3.ckpt) said
    "epochs: 1" (Lightning's current_epoch): whole epochs of 7 batches, and the last one's batches where it stopped."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.tasks.callbacks import RunSummary

    data = DataLoader([torch.randn(5, 3)] * 7, batch_size=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path)
    trainer = L.Trainer(accelerator="cpu", callbacks=[ckpt, RunSummary()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, **stop)
    trainer.fit(Task(), data)
    steps = stop.get("max_steps") or 7 * stop["max_epochs"]
    assert f"steps: {steps}  epochs: {epochs}  time:" in capsys.readouterr().out
    whole = int(epochs.split()[0])
    # the checkpoint names the epoch the last step was in (0-based): the whole ones before it
    assert Path(ckpt.best_model_path).name == f"epoch={whole if '+' in epochs else whole - 1}-step={steps}.ckpt"


def test_fit_summary_of_a_resumed_fit_counts_the_checkpoints_epochs(tmp_path, capsys):
    """Resumed from a checkpoint saved 3 batches into epoch 1 (step 10 of 7-batch epochs): to max_steps 12, and at
    max_steps 10 itself (Lightning runs no loop then: the counts are the checkpoint's, saved inside its batch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.tasks.callbacks import RunSummary

    data = DataLoader([torch.randn(5, 3)] * 7, batch_size=None)

    def fit(steps, ckpt=None, callbacks=()):
        L.Trainer(accelerator="cpu", callbacks=[*callbacks, RunSummary()], logger=False, max_steps=steps,
                  enable_checkpointing=bool(callbacks), enable_progress_bar=False, enable_model_summary=False,
                  limit_val_batches=0).fit(Task(), data, ckpt_path=ckpt)
        return capsys.readouterr().out

    fit(10, callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10)])
    ckpt = tmp_path / "epoch=1-step=10.ckpt"
    assert "steps: 12  epochs: 1 + 5/7 batches  time:" in fit(12, ckpt)
    assert "steps: 10  epochs: 1 + 3/7 batches  time:" in fit(10, ckpt)


def test_validate_and_test_of_untrained_weights_say_so_as_predict_does(tmp_path):
    """`zoo validate` / `zoo test` without --ckpt_path or pretrained evaluate the random init (as Lightning does): said
    in the same warning predict gives; not for fit's own validation, a fitted task or a checkpoint's weights."""

    class Scored(Task):
        def test_step(self, batch, batch_idx):
            self.log("test/loss", self.model(batch).pow(2).mean())

    data = DataLoader([torch.randn(5, 3)], batch_size=None)

    def trainer():
        return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         max_steps=1, default_root_dir=tmp_path)

    for verb, run in (("validates", lambda t, m: t.validate(m, data, verbose=False)),
                      ("tests", lambda t, m: t.test(m, data, verbose=False))):
        with pytest.warns(UserWarning, match=f"Scored {verb} with randomly initialized weights: pass --ckpt_path"):
            run(trainer(), Scored())
    fitted, t = Scored(), trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(fitted, data, data)  # its validation loop, then the fitted weights evaluated
        t.validate(fitted, data, verbose=False)
        t.test(fitted, data, verbose=False)
        ckpt = next(tmp_path.rglob("*.ckpt"))
        trainer().test(Scored(), data, ckpt_path=str(ckpt), verbose=False)
    assert not [w for w in caught if "randomly initialized" in str(w.message)]


def test_float16_true_training_is_refused_by_name():
    """precision "16-true" keeps the weights and AdamW's state in float16, where eps=1e-8 rounds to 0: the first
    step turned every weight NaN, silently. fit now stops before training with a message naming the fix;
    "bf16-true" (float32's range) trains, and "16-true" evaluation (no optimizer) still runs."""
    task = Task()
    before = [p.detach().clone() for p in task.parameters()]
    trainer = L.Trainer(accelerator="cpu", max_steps=2, precision="16-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"precision '16-true'.*(16-mixed|bf16-mixed).*bf16-true"):
        trainer.fit(task, train_dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None))
    assert all(torch.equal(a.half(), b.half()) for a, b in zip(before, task.parameters()))  # no step ran (cast only)

    trained = Task()
    L.Trainer(accelerator="cpu", max_steps=3, precision="bf16-true", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(
        trained, train_dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None))
    assert all(torch.isfinite(p).all() for p in trained.parameters())

    out = L.Trainer(accelerator="cpu", precision="16-true", logger=False, enable_progress_bar=False,
                    enable_model_summary=False).validate(Task(), DataLoader([torch.randn(5, 3)], batch_size=None),
                                                         verbose=False)
    assert torch.isfinite(torch.tensor(out[0]["val/loss"]))


def test_metric_sums_use_float32_where_the_device_has_no_float64(monkeypatch):
    """Apple's MPS has no float64 (accelerator: auto picks it on an Apple-silicon Mac): the float64 running sums
    would fail there at the first validation. Their dtype follows the device (wide_float); simulated here by
    declaring the CPU float64-less, the LM and TS sums hold float32 and still sum correctly."""
    import numpy as np

    import zoo.tasks.base as base
    from zoo.tasks.lm import _Float64Sum
    from zoo.tasks.ts import ForecastMetrics

    assert base.wide_float(torch.device("mps")) is torch.float32
    assert base.wide_float(torch.device("cpu")) is torch.float64 and base.wide_float(torch.device("cuda")) is torch.float64
    s, m = _Float64Sum(), ForecastMetrics(horizon=3)
    assert s.total.dtype == torch.float64 and m.se.dtype == torch.float64
    monkeypatch.setattr(base, "wide_float", lambda device: torch.float32)
    s, m = s.to("cpu"), m.to("cpu")
    assert s.total.dtype == torch.float32 and m.se.dtype == torch.float32 and m.count.dtype == torch.float32
    vals = torch.tensor([0.25, 1.5, 3.0])
    s.update(vals)
    assert s.compute().dtype == torch.float32 and float(s.compute()) == 4.75
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(4, 3, 2)).astype(np.float32), rng.normal(size=(4, 3, 2)).astype(np.float32)
    std = torch.tensor([2.0, 0.5])
    m.update(torch.from_numpy(pred), torch.from_numpy(target), std)
    res = m.compute()
    err = pred.astype(np.float64) - target
    assert float(res["mse"]) == pytest.approx(float((err ** 2).mean()), rel=1e-6)
    assert float(res["mae_orig"]) == pytest.approx(float(np.abs(err * [2.0, 0.5]).mean()), rel=1e-6)


# -- exact resume: a fit stopped at an epoch's end and resumed with ckpt_path goes on as the uninterrupted fit


class _LRs(L.Callback):
    """The learning rate each optimizer step is taken at, by global step."""

    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_a_fit_resumed_with_a_longer_max_steps_takes_the_new_schedules_rate_from_its_first_step(tmp_path):
    """A cosine run of 4 steps resumed with max_steps 8: the schedule is rebuilt for 8 steps, but the first resumed
    step ran at the rate the 4-step schedule left in the optimizer (its floor). Reference: an 8-step run's rates."""

    class Cosine(Task):
        def __init__(self) -> None:
            ZooTask.__init__(self, lr=1e-2, weight_decay=0.1, warmup_steps=1, scheduler="cosine", min_lr_ratio=0.1)
            self.model = Tiny()

    def fit(steps, ckpt=None):
        seen = _LRs()
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[seen])
        trainer.fit(Cosine(), train_dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None), ckpt_path=ckpt)
        return trainer, seen.lrs

    _, whole = fit(8)
    first, _ = fit(4)
    first.save_checkpoint(tmp_path / "part.ckpt")
    second, resumed = fit(8, tmp_path / "part.ckpt")
    assert second.global_step == 8 and sorted(resumed) == [4, 5, 6, 7]
    assert resumed == pytest.approx({k: whole[k] for k in range(4, 8)}, rel=1e-12)


def test_a_fit_resumed_into_a_new_folder_keeps_the_earlier_best_checkpoint(tmp_path):
    """`python -m zoo fit --ckpt_path last` saves into a new version folder, where Lightning reloads no scores of a
    ModelCheckpoint(monitor=...): the resumed run's first validation became "best" however it scored. Reference:
    ModelCheckpoint's rule (min mode, top 1) applied by hand to the scores of both runs."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Scored(Task):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.trainer.global_step == 2) * 10.0 + 1.0 / self.trainer.global_step)

    def fit(folder, steps, ckpt=None):
        best = ModelCheckpoint(dirpath=folder, monitor="val/loss", mode="min", save_top_k=1, save_last=True)
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[best])
        data = DataLoader([torch.randn(5, 3)], batch_size=None)
        trainer.fit(Scored(), train_dataloaders=data, val_dataloaders=data, ckpt_path=ckpt)
        return best

    fit(tmp_path / "v0", 1)  # val/loss 1.0 at step 1
    resumed = fit(tmp_path / "v1", 3, tmp_path / "v0" / "last.ckpt")  # 10.5 at step 2, 0.33 at step 3
    assert Path(resumed.best_model_path).name == "epoch=2-step=3.ckpt" and float(resumed.best_model_score) == pytest.approx(1 / 3)
    again = fit(tmp_path / "v2", 2, tmp_path / "v0" / "last.ckpt")  # only the worse 10.5 after the resume
    assert Path(again.best_model_path) == tmp_path / "v0" / "epoch=0-step=1.ckpt"
    assert float(again.best_model_score) == 1.0 and list(again.best_k_models) == [again.best_model_path]
    assert (tmp_path / "v0" / "epoch=0-step=1.ckpt").is_file()  # the earlier run's files stay


class _StopAfterFirstEpoch(L.Callback):
    """The interruption: the run (configured for 2 epochs) stops after its first epoch's checkpoint."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _resume_matches_uninterrupted(make, tmp_path, **trainer_kw):
    """``make()`` -> (task, datamodule), both built after the caller's seeding. Fits 2 epochs in one go, and 1 epoch
    (checkpoint) + a resume to 2 epochs in a "new process" (other global random states); returns both tasks."""
    import random

    import numpy as np
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(root, callbacks=()):
        return L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, limit_val_batches=1,
                         callbacks=[ModelCheckpoint(dirpath=root, save_last=True), *callbacks], **trainer_kw)

    L.seed_everything(7)
    whole, dm = make()
    trainer(tmp_path / "whole").fit(whole, datamodule=dm)
    L.seed_everything(7)
    part, dm = make()
    first = trainer(tmp_path / "part", [_StopAfterFirstEpoch()])
    first.fit(part, datamodule=dm)
    assert first.current_epoch == 1 and (tmp_path / "part" / "last.ckpt").is_file()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # a new process draws from other states
    resumed, dm = make()
    second = trainer(tmp_path / "resumed")
    second.fit(resumed, datamodule=dm, ckpt_path=tmp_path / "part" / "last.ckpt")
    assert second.current_epoch == 2 and second.global_step == first.global_step * 2
    return whole, resumed


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), (k, (sa[k].float() - sb[k].float()).abs().max())


def test_lm_fit_resumed_at_an_epoch_end_matches_the_uninterrupted_fit(tmp_path):
    """Lightning saves no random states: the resumed run drew another shuffle for epoch 2 (RandomSampler seeds from
    torch's global RNG) and other dropout masks (weights off by ~1e-3). Reference: the uninterrupted 2-epoch fit."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    def make():
        dm = RetrievalDataModule(seq_len=16, n_pairs=2, n_keys=8, n_values=8, train_size=16, val_size=8, batch_size=4)
        task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16, "dropout": 0.2},
                                 data_info=dm.data_info, warmup_steps=2)
        return task, dm

    _assert_same_weights(*_resume_matches_uninterrupted(make, tmp_path))


def test_ts_fit_resumed_at_an_epoch_end_matches_the_uninterrupted_fit(tmp_path):
    from zoo.data.ts import SyntheticTSDataModule
    from zoo.tasks.ts import ForecastTask

    def make():
        dm = SyntheticTSDataModule(n_rows=300, n_vars=2, lookback=16, horizon=8, batch_size=32)
        task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, restore_best=False,
                            model_args={"dropout": 0.2})
        return task, dm

    whole, resumed = _resume_matches_uninterrupted(make, tmp_path, limit_train_batches=3)
    _assert_same_weights(whole, resumed)


# tiny STR / VLM architectures for the tests below (str-diff-tiny / vlm-fda-tiny at toy widths)
_STR_TINY = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_heads=2)
_VLM_TINY = dict(image_size=32, patch_size=8, vit_dim=32, vit_depth=1, vit_heads=2, text_dim=32, text_layers=1,
                 text_heads=2, text_mlp=48, fusion_layers=2, fusion_heads=4, fusion_mlp=48, embed_dim=16, max_text_len=24)


def test_str_fit_resumed_at_an_epoch_end_matches_the_uninterrupted_fit(tmp_path):
    """Scene text: dropout and the training permutations (torch.randperm) draw from the global RNG too."""
    from zoo.data.str import STRDataModule
    from zoo.tasks.str import RecognitionTask

    def make():
        dm = STRDataModule(charset="36", max_length=6, synthetic={"train": 8, "val": 2, "test": 0}, batch_size=4)
        task = RecognitionTask(arch="str-diff-tiny", data_info=dm.data_info, warmup_steps=1,
                               model_args={**_STR_TINY, "dropout": 0.2})
        return task, dm

    _assert_same_weights(*_resume_matches_uninterrupted(make, tmp_path))


def test_vlm_fit_resumed_at_an_epoch_end_matches_the_uninterrupted_fit(tmp_path):
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    def make():
        dm = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, image_size=32, batch_size=4)
        task = VLMTask(arch="vlm-fda-tiny", data_info=dm.data_info, warmup_steps=1,
                       model_args={**_VLM_TINY, "dropout": 0.2})
        return task, dm

    _assert_same_weights(*_resume_matches_uninterrupted(make, tmp_path))


def test_loading_or_evaluating_a_checkpoint_leaves_the_global_random_state_alone(tmp_path):
    """The random states saved for resuming are put back only when a fit resumes: load_from_checkpoint and
    validate(ckpt_path=...) draw from the caller's states as they would without a checkpoint."""
    import random

    import numpy as np

    trainer = _fit(Task(), 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")

    def draws():
        return torch.rand(4).tolist(), np.random.rand(2).tolist(), random.random()

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    Task()  # what building the module draws
    expected = draws()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    Task.load_from_checkpoint(tmp_path / "a.ckpt")
    assert draws() == expected

    def validate(ckpt):
        torch.manual_seed(5), np.random.seed(5), random.seed(5)
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
            Task(), dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None), ckpt_path=ckpt, verbose=False)
        return draws()

    assert validate(tmp_path / "a.ckpt") == validate(None)


def test_lr_find_suggestion_is_the_learning_rate_the_fit_uses():
    """Lightning's Tuner.lr_find(update_attr=True) writes its suggestion to hparams.lr (no `lr` attribute here): the
    optimizer read the lr kept at construction, so the fit ran at the old rate. Reference: the tuner's suggestion."""
    from lightning.pytorch.tuner import Tuner

    class HPTask(Task):
        def __init__(self, lr: float = 1e-2) -> None:
            ZooTask.__init__(self, lr=lr, weight_decay=0.1, warmup_steps=0, scheduler="constant")
            self.save_hyperparameters({"lr": lr})
            self.model = Tiny()

    torch.manual_seed(0)
    task = HPTask(lr=1e-2)
    data = DataLoader([torch.randn(5, 3) for _ in range(20)], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    found = Tuner(trainer).lr_find(task, train_dataloaders=data, min_lr=1e-5, max_lr=1e-1, num_training=20,
                                   early_stop_threshold=None)
    suggestion = found.suggestion()
    assert suggestion is not None and suggestion != pytest.approx(1e-2)
    trainer = _fit(task, 1)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(suggestion)


def test_every_task_is_callable_on_its_model_inputs():
    """Lightning's convention: task(x) runs the model (STR and VLM tasks raised NotImplementedError; LM and TS had a
    forward). Reference: the wrapped model called directly, in eval mode."""
    from zoo.data.str import STRDataModule
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.str import RecognitionTask
    from zoo.tasks.vlm import VLMTask

    torch.manual_seed(0)
    dm = STRDataModule(charset="36", max_length=6, synthetic={"train": 8, "val": 2, "test": 0}, batch_size=4)
    task = RecognitionTask(arch="str-diff-tiny", data_info=dm.data_info,
                           model_args=_STR_TINY).eval()
    images = torch.randn(2, 3, 32, 128)
    with torch.no_grad():
        assert torch.equal(task(images), task.model(images))
    vdm = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, image_size=32, batch_size=4)
    vtask = VLMTask(arch="vlm-fda-tiny", data_info=vdm.data_info,
                    model_args=_VLM_TINY).eval()
    ids, mask = vtask.model.tokenize(["a red circle", "two small blue squares"])
    imgs = torch.rand(2, 3, 32, 32)  # pixels in [0, 1], as the model takes them
    with torch.no_grad():
        got, want = vtask(imgs, ids, mask), vtask.model(imgs, ids, mask)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_a_resume_lightning_would_cut_an_epoch_short_is_warned_about(tmp_path):
    """Lightning 2.6 resumes a fit that sets both max_steps and a finite max_epochs from an end-of-epoch checkpoint
    one epoch short (Lightning#19617: 3 epochs of 10 steps with max_steps 1000 stopped at 20 steps). zoo cannot fix
    Lightning's loop state; it says so when it happens. No warning with max_steps unset (Lightning counts right)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = DataLoader([torch.randn(5, 3) for _ in range(4)], batch_size=None)
    ck = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    L.Trainer(max_epochs=1, callbacks=[ck], **kw).fit(Task(), data)
    path = ck.best_model_path
    assert path.endswith("epoch=0-step=4.ckpt")
    with pytest.warns(UserWarning, match=r"checkpoint of epoch 0 \(saved at its end, or inside it where max_steps stopped "
                                         r"that run\) with both max_steps \(1000\) and max_epochs \(3\).*"
                                         r"--trainer.max_epochs -1"):
        L.Trainer(max_epochs=3, max_steps=1000, **kw).fit(Task(), data, ckpt_path=path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(max_epochs=3, **kw)
        trainer.fit(Task(), data, ckpt_path=path)
    assert not [w for w in caught if "one epoch too many" in str(w.message)]
    assert trainer.global_step == 12  # 3 epochs of 4 steps: Lightning's count without max_steps is right


class OtherDomainTask(ZooTask):
    """Another domain's task: other hyperparameters, another model."""

    def __init__(self, horizon: int = 3, scheduler: str = "cosine") -> None:
        super().__init__(lr=1e-2, warmup_steps=0, scheduler=scheduler)
        self.save_hyperparameters()
        self.model = nn.Linear(3, horizon)

    def training_step(self, batch, batch_idx):
        return self.model(batch).pow(2).mean()


def test_a_checkpoint_of_another_task_class_is_refused_by_name(tmp_path, monkeypatch):
    """A checkpoint given to another domain's task failed in that task's own checks (a forecaster's
    "scheduler must be 'cosine' or 'constant', got 'halving'", an LM checkpoint loaded by RecognitionTask as "size
    mismatch for model.pos_queries", a resumed fit as the optimizer groups "of another STR recipe"). The checkpoint
    names the class that wrote it (zoo_task_class): the message names it, for load_from_checkpoint and ckpt_path."""
    trainer = _fit(OtherDomainTask(scheduler="constant"), 1)
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    _fit(Task(), 1).save_checkpoint(tmp_path / "task.ckpt")
    named = r"written by .*OtherDomainTask.*not a Task.*OtherDomainTask\.load_from_checkpoint"
    with pytest.raises(ValueError, match=named):
        Task.load_from_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=named):
        _fit(Task(), 2, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=named):
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
            Task(), dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None), ckpt_path=tmp_path / "other.ckpt")
    # the class itself, a subclass or a base of the writer's class load as before
    assert isinstance(OtherDomainTask.load_from_checkpoint(tmp_path / "other.ckpt"), OtherDomainTask)
    assert isinstance(OldTask.load_from_checkpoint(tmp_path / "task.ckpt"), OldTask)
    # a class defined again under its name (a notebook cell run twice) is the class its earlier instance saved
    earlier = Task()

    class Again(ZooTask):
        def __init__(self) -> None:
            super().__init__(lr=1e-2, weight_decay=0.1, warmup_steps=0, scheduler="constant")
            self.model = Tiny()

        training_step = Task.training_step

    Again.__module__, Again.__qualname__ = Task.__module__, Task.__qualname__
    monkeypatch.setattr(sys.modules[Task.__module__], "Task", Again)
    assert isinstance(Again.load_from_checkpoint(tmp_path / "task.ckpt"), Again)
    _fit(earlier, 2, tmp_path / "task.ckpt")
    # ZooTask itself builds no model: it loads the class the checkpoint names (as zoo.load_pretrained(ckpt) does)
    loaded = ZooTask.load_from_checkpoint(tmp_path / "other.ckpt")
    assert type(loaded) is OtherDomainTask and loaded.hparams.scheduler == "constant"
    want = torch.load(tmp_path / "other.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in want.items())


def test_weights_loaded_with_load_state_dict_are_not_called_random(tmp_path):
    """Lightning documents loading weights by hand: task.load_state_dict(torch.load(ckpt)["state_dict"]). The task
    then validated / tested / predicted with the warning "with randomly initialized weights", about weights that
    were the checkpoint's. Reference: the checkpoint's tensors, and no such warning."""
    data = DataLoader([torch.randn(5, 3)], batch_size=None)
    _fit(Task(), 1).save_checkpoint(tmp_path / "a.ckpt")
    saved = torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]
    task = Task()
    task.load_state_dict(saved)
    assert all(torch.equal(task.state_dict()[k], v) for k, v in saved.items())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=tmp_path).validate(task, data, verbose=False)
    assert not [w for w in caught if "randomly initialized" in str(w.message)]


class PathTask(ZooTask):
    """A task whose arguments a Python user gives as pathlib.Path objects."""

    def __init__(self, source=None, extra=None) -> None:
        super().__init__(lr=1e-2, warmup_steps=0, scheduler="constant")
        self.save_hyperparameters()
        self.model = Tiny()

    def training_step(self, batch, batch_idx):
        return self.model(batch).pow(2).mean()


def test_path_arguments_are_saved_as_text_so_the_checkpoint_loads_weights_only(tmp_path):
    """A pathlib.Path argument (RecognitionTask(teacher=Path(...)), a model_args path) was pickled into the
    checkpoint's hyperparameters, which Lightning's weights-only loading refuses (resume, load_from_checkpoint,
    export). Reference: torch.load(weights_only=True) of the file, and the strings the paths spell."""
    task = PathTask(source=tmp_path / "data", extra={"words": [Path("a/b.txt"), 3], "name": "x"})
    _fit(task, 1).save_checkpoint(tmp_path / "p.ckpt")
    hp = torch.load(tmp_path / "p.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["source"] == str(tmp_path / "data") and hp["extra"] == {"words": ["a/b.txt", 3], "name": "x"}
    assert PathTask.load_from_checkpoint(tmp_path / "p.ckpt").hparams.source == str(tmp_path / "data")


class PathData(L.LightningDataModule):
    """A datamodule that saves its arguments (as zoo's text and retrieval datamodules do), given a Path."""

    def __init__(self, train_path=None) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self):
        return DataLoader([torch.randn(5, 3)], batch_size=None)


def test_a_datamodules_path_arguments_are_saved_as_text_too(tmp_path):
    """TextDataModule(train_path=Path(...)): Lightning writes the datamodule's hyperparameters into the checkpoint
    too, where the PosixPath made weights-only loading (resume, load_from_checkpoint) fail."""
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Task(), datamodule=PathData(train_path=tmp_path / "corpus.txt"))
    trainer.save_checkpoint(tmp_path / "d.ckpt")
    saved = torch.load(tmp_path / "d.ckpt", weights_only=True)
    assert saved["datamodule_hyper_parameters"]["train_path"] == str(tmp_path / "corpus.txt")


def test_the_runs_hparams_yaml_reads_back_with_path_arguments(tmp_path):
    """A Path given to a task or to the zoo's own datamodule (TextDataModule(train_path=Path(...))) was kept as a
    Path in ``hparams``, which the logger dumps to hparams.yaml as a ``!!python/object/apply:pathlib.PosixPath``
    tag: yaml.safe_load (Lightning's own hparams reader too) refused the run's file. Reference: yaml.safe_load
    and the strings the paths spell."""
    import yaml

    from zoo.data.text import TextDataModule

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be " * 50)
    dm = TextDataModule(train_path=corpus, block_size=8, batch_size=2)
    task = PathTask(source=tmp_path / "data", extra=[Path("a/b.txt")])
    assert task.hparams.source == str(tmp_path / "data") and dm.hparams.train_path == str(corpus)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=L.pytorch.loggers.CSVLogger(tmp_path / "logs"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, train_dataloaders=DataLoader([torch.randn(5, 3)], batch_size=None))
    trainer.logger.log_hyperparams({**task.hparams, **dm.hparams})
    trainer.logger.save()
    saved = yaml.safe_load(next((tmp_path / "logs").rglob("hparams.yaml")).read_text())
    assert saved["source"] == str(tmp_path / "data") and saved["extra"] == ["a/b.txt"]
    assert saved["train_path"] == str(corpus)
