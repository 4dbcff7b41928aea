"""Task pieces: CSD targets and KL against the formula, charset fine-tuning through the task,
ONNX against onnxruntime, export / load_pretrained / reader API, predict-folder CSV."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import zoo
from zoo.hub import export_model
from zoo.models.str import SceneTextRecognizer, _NARRefine, export_onnx
from zoo.tasks.str import RecognitionTask, read_folder

TINY = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_heads=2, dropout=0.0)
INFO = {"kind": "str", "charset": "0123456789abcdefghijklmnopqrstuvwxyz", "max_length": 6, "img_size": [32, 128]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    m = SceneTextRecognizer.from_config({**TINY, "max_length": 6})
    return export_model(m, tmp_path_factory.mktemp("exp") / "tiny")


def test_csd_teacher_targets_and_kl(exported):
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(exported), csd_temperature=2.0)
    imgs = torch.randn(3, 3, 32, 128)
    targets, soft = task._teacher_targets(imgs)
    with torch.no_grad():
        ids = task.teacher(imgs).argmax(-1)
    for b in range(3):
        row = ids[b].tolist()[:-1] + [0]  # the last slot is for EOS only: a reading without one ends there
        n = row.index(0) + 1
        assert targets[b, :n].tolist() == row[:n] and (targets[b, n:] == -100).all()
    # KL(teacher || student) at temperature tau, times tau^2, averaged over the valid slots: by hand
    logits = torch.randn_like(soft)
    tau, valid = 2.0, targets != -100
    q = (soft[valid] / tau).softmax(-1)
    p = (logits[valid] / tau).softmax(-1)
    ref = (q * (q.log() - p.log())).sum(-1).mean() * tau**2
    torch.testing.assert_close(task._kl(logits, soft, targets), ref, rtol=1e-5, atol=1e-6)
    # a training step runs and the teacher gets no gradient
    batch = {"images": imgs, "targets": torch.full((3, 7), -100)}
    loss = task.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert "teacher" not in dict(task.named_modules())


def test_csd_kl_selects_no_slots_by_a_boolean_mask(monkeypatch):
    """The KL term masks the padding slots in place: selecting the valid slots with a boolean mask made tensors of
    data-dependent size, two device syncs per mask of every CSD step on a GPU. The value is the formula by hand
    (KL(teacher || student) at temperature tau, times tau^2, averaged over the valid slots)."""
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO)
    torch.manual_seed(0)
    logits, soft = torch.randn(3, 7, 37) * 3, torch.randn(3, 7, 37) * 3
    targets = torch.tensor([[5, 6, 0] + [-100] * 4, [0] + [-100] * 6, [1, 2, 3, 4, 5, 6, 0]])
    tau = 2.0
    ref, n = 0.0, 0
    for b in range(3):
        for t in range(7):
            if targets[b, t] != -100:
                q = (soft[b, t].double() / tau).softmax(-1)
                p = (logits[b, t].double() / tau).softmax(-1)
                ref, n = ref + float((q * (q.log() - p.log())).sum()), n + 1
    real = torch.Tensor.__getitem__

    def getitem(self, idx):
        if torch.is_tensor(idx) and idx.dtype == torch.bool:
            raise AssertionError("a boolean mask index (a device sync on a GPU) in the KL term")
        return real(self, idx)

    monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
    got = task._kl(logits, soft, targets)
    assert abs(float(got) - ref / n * tau**2) < 1e-5


def test_teacher_must_share_charset(exported):
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info={**INFO, "charset": "abc"}, teacher=str(exported))
    # fit reads the teacher before its first step; the message says how the two differ
    with pytest.raises(ValueError, match=r"reads 36 characters '0123456789abc.*max_length 6; the student 3 characters 'abc', max_length 6"):
        task.setup("fit")


def test_a_datamodule_of_another_charset_is_refused_at_setup():
    import lightning as L

    from zoo.data.str import STRDataModule

    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY)  # no data_info: the registered 36 characters
    dm = STRDataModule(charset="62", max_length=6, synthetic={"train": 4, "val": 0, "test": 0}, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"datamodule does not fit the model \(charset: data '0123.*max_length: data 6 vs "
                                         r"model 25.*data_info=datamodule.data_info"):
        trainer.fit(task, datamodule=dm)
    fits = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=dm.data_info)
    fits._check_data(dm)  # the same facts: no error
    task._check_data(dm, "predict")  # predicting reads images only: another charset in the datamodule is fine


def _one_step_checkpoint(task, path, n_chars):
    """Train ``task`` one step on a random batch and save a Lightning checkpoint at ``path``."""
    import lightning as L
    from torch.utils.data import DataLoader

    torch.manual_seed(1)
    batch = {"images": torch.randn(2, 3, 32, 128), "targets": torch.randint(1, n_chars + 1, (2, 7))}
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(path)
    return path


def test_checkpoints_load_without_their_pretrained_or_teacher_folder(exported, tmp_path, capsys):
    import shutil

    # fine-tuned from an export onto a new charset: the checkpoint holds the whole model
    base = shutil.copytree(exported, tmp_path / "base")
    info = {**INFO, "charset": "abcXYZ"}
    task = RecognitionTask(arch="str-diff-tiny", data_info=info, pretrained=str(base), model_args={"dropout": 0.1})
    ckpt = _one_step_checkpoint(task, tmp_path / "ft.ckpt", 6)
    shutil.rmtree(base)
    capsys.readouterr()
    back = RecognitionTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert "fine-tuning" not in capsys.readouterr().out  # no second charset transfer on load
    assert back.model.charset.chars == task.model.charset.chars
    assert back.model.config.dropout == 0.1  # the run's runtime settings are kept
    for (k, v), (k2, v2) in zip(task.model.state_dict().items(), back.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert back.hparams.pretrained is None and task.hparams.pretrained == str(base)  # the live run still names it

    # a CSD student: the teacher is needed to train, not to load
    teacher = shutil.copytree(exported, tmp_path / "teacher")
    student = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(teacher))
    ckpt = _one_step_checkpoint(student, tmp_path / "student.ckpt", 36)
    shutil.rmtree(teacher)
    back = RecognitionTask.load_from_checkpoint(ckpt, map_location="cpu")
    for (k, v), (k2, v2) in zip(student.model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(v, v2), k
    assert any("CSD teacher" in line for line in back.summary_lines())
    with pytest.raises(FileNotFoundError, match="teacher"):
        back.setup("fit")  # continuing the distillation does need it


def test_finetune_new_charset_reports(exported, capsys):
    info = {**INFO, "charset": "abcXYZ"}
    task = RecognitionTask(arch="str-diff-tiny", data_info=info, pretrained=str(exported))
    rep = task.transfer_report
    assert rep["reinitialized_chars"] == ["X", "Y", "Z"] and rep["kept_char_rows"] == 3
    assert "reinitialized 3 new characters" in capsys.readouterr().out
    src = zoo.load_pretrained(exported)
    torch.testing.assert_close(task.model.head.weight[1], src.head.weight[src.charset.index["a"]])
    torch.testing.assert_close(task.model.encoder.patch_embed.proj.weight, src.encoder.patch_embed.proj.weight)


def test_fine_tuning_from_a_checkpoint_names_the_checkpoint_not_a_temporary_folder(exported, tmp_path, capsys):
    """pretrained=<run>.ckpt is read through a temporary export; the transfer report and the errors named that
    folder (/tmp/zoo-ckpt-.../export, gone after the run) instead of the checkpoint the user gave."""
    task = RecognitionTask(arch="str-diff-tiny", data_info=INFO, pretrained=str(exported))
    ckpt = str(_one_step_checkpoint(task, tmp_path / "run.ckpt", 36))
    capsys.readouterr()
    RecognitionTask(arch="str-diff-tiny", data_info={**INFO, "charset": "abcXYZ"}, pretrained=ckpt)
    assert f"fine-tuning {ckpt} on a new charset" in capsys.readouterr().out
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(ckpt)} has max_length 6, the data 8"):
        RecognitionTask(arch="str-diff-tiny", data_info={**INFO, "max_length": 8}, pretrained=ckpt)
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(ckpt)} reads img_size "
                                         r"\[32, 128\] crops, the data \[32, 64\]"):
        RecognitionTask(arch="str-diff-tiny", data_info={**INFO, "img_size": [32, 64]}, pretrained=ckpt)


def test_predicting_a_charset_transfer_without_training_it_warns(exported, tmp_path):
    """pretrained=<export> with a data.charset of new characters, used to predict: the export is moved to the new
    charset and 'X', 'Y', 'Z' read through rows initialized at random; predict said nothing (a fine-tuning config
    used for predict). Warned, naming them; the export's own charset predicts without the warning."""
    import warnings

    import lightning as L

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 128, 3), dtype=np.uint8)).save(folder / "a.png")
    from zoo.data.str import STRDataModule

    for charset, warned in (("abcXYZ", True), (INFO["charset"], False)):
        dm = STRDataModule(charset=charset, max_length=6, predict_dir=str(folder), synthetic={"train": 0, "val": 0, "test": 0})
        task = RecognitionTask(arch="str-diff-tiny", data_info=dm.data_info, pretrained=str(exported))
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            default_root_dir=tmp_path / f"run_{len(charset)}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.predict(task, datamodule=dm)
        hits = [w for w in caught if "characters the pretrained model never learned" in str(w.message)]
        assert bool(hits) == warned, charset
        if warned:
            assert "'XYZ'" in str(hits[0].message)


@pytest.mark.parametrize("charset", [INFO["charset"], "abcXYZ"])
@pytest.mark.parametrize("args", [{"attn_type": "vanilla"}, {"model_args": {"dec_heads": 1}}])
def test_finetune_with_another_architecture_is_named_on_a_new_charset_too(exported, charset, args):
    """pretrained=<diff export> with attn_type vanilla (or another head count, same shapes) is refused by name on the
    export's charset; on a new charset the weight transfer built the override's model and copied the tensors that
    fit into it: a vanilla decoder (the diff layers' lambdas dropped) trained on without a word."""
    info = {**INFO, "charset": charset}
    field = next(iter(args.get("model_args", args)))
    with pytest.raises(ValueError, match=rf"does not match the configured architecture \({field}: checkpoint="):
        RecognitionTask(arch="str-diff-tiny", data_info=info, pretrained=str(exported), **args)


@pytest.mark.parametrize("charset", [INFO["charset"], "abcXYZ"])
def test_finetune_on_crops_of_another_size_is_named_at_build(exported, charset):
    """A pretrained export fine-tuned on data of another crop size was built at the export's size and refused at
    setup with advice to use pretrained=<export> (which the task was given); its new-charset route failed in the
    weight transfer. Now the build names both sizes."""
    info = {**INFO, "charset": charset, "img_size": [32, 96]}
    with pytest.raises(ValueError, match=r"reads img_size \[32, 128\] crops, the data \[32, 96\]; set data.img_size"):
        RecognitionTask(arch="str-diff-tiny", data_info=info, pretrained=str(exported))


def test_onnx_matches_pytorch(exported, tmp_path):
    m = zoo.load_pretrained(exported)
    path = export_onnx(m, tmp_path / "str.onnx", batch_size=2, refine_iters=1)
    x = torch.randn(2, 3, 32, 128)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = _NARRefine(m, 1)(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "str.onnx.charset.txt").read_text().split() == list(m.charset.chars)


def test_reader_inputs_and_errors(exported, tmp_path):
    reader = zoo.load_pretrained(exported)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 128, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    as_array, as_pil, as_path = reader.read([rgb, Image.fromarray(rgb), str(tmp_path / "a.png")])
    assert as_array == as_pil == as_path
    one = reader.read(rgb)
    assert one.text == as_array.text and 0.0 <= one.confidence <= 1.0
    # the reading equals the model on the hand-normalized tensor
    with torch.no_grad():
        ref = reader.decode_probs(reader(((torch.from_numpy(rgb).float() / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]))[0]
    assert one == ref
    gray = rgb[..., 0]
    assert reader.read(gray) == reader.read(np.stack([gray] * 3, -1))
    (tmp_path / "bad.png").write_bytes(b"xx")
    with pytest.raises(ValueError, match="bad.png"):
        reader.read(str(tmp_path / "bad.png"))
    rows = read_folder(reader, _only_good(tmp_path), tmp_path / "out.csv")
    with open(tmp_path / "out.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["image"] for r in got] == ["a.png"] and got[0]["text"] == as_path.text and len(rows) == 1
    with pytest.raises(FileExistsError):
        read_folder(reader, _only_good(tmp_path), tmp_path / "out.csv")


def test_read_and_read_folder_name_every_unreadable_image_in_one_error(exported, tmp_path):
    """reader.read([...]) and read_folder stopped at the first unreadable image and named that one only: a folder of
    crops with several bad ones took one call per bad crop. Each now checks them all (across batches) and raises
    once, naming every bad one by its list index and file; one bad image keeps its own error, named by its index."""
    reader = zoo.load_pretrained(exported)
    rng = np.random.default_rng(0)
    d = tmp_path / "crops"
    d.mkdir()
    for n in ("a.png", "c.png", "e.png"):
        Image.fromarray(rng.integers(0, 256, (32, 128, 3), dtype=np.uint8)).save(d / n)
    (d / "b.png").write_bytes(b"not an image")
    (d / "d.png").write_bytes(b"")
    (d / "f.jpg").write_bytes((d / "a.png").read_bytes()[:100])  # cut short
    paths = [str(d / n) for n in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.jpg")]
    for call in (lambda: reader.read(paths, batch_size=2), lambda: read_folder(reader, d, tmp_path / "out.csv")):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith("cannot read 3 of the 6 images (no readings are returned): images[1]: cannot read image "
                              f"{d / 'b.png'} (")
        assert f"; images[3]: cannot read image {d / 'd.png'}: the file is empty (0 bytes)" in msg
        assert f"; images[5]: cannot read image {d / 'f.jpg'} (" in msg and msg.count("cannot read image") == 3
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(FileNotFoundError, match=r"^images\[2\]: image file /nonexistent/x.png not found$"):
        reader.read([paths[0], paths[2], "/nonexistent/x.png"])
    # past ten bad images the rest are named without their reasons
    many = [np.zeros((4, 4, 2), dtype=np.uint8)] * 12
    with pytest.raises(ValueError, match=r"cannot read 12 of the 12 images .*images\[9\]: an image array must be .*"
                                         r"also unreadable: images\[10\], images\[11\]; fix or remove them"):
        reader.read(many)


def _only_good(tmp_path):
    d = tmp_path / "good"
    if not d.exists():
        d.mkdir()
        (d / "a.png").write_bytes((tmp_path / "a.png").read_bytes())
    return d


def test_onnx_export_leaves_the_model_in_its_mode(exported, tmp_path):
    m = zoo.load_pretrained(exported).train()  # exported mid-training (a callback): dropout must stay on after
    export_onnx(m, tmp_path / "str.onnx", batch_size=1)
    assert m.training and all(mod.training for mod in m.modules())
    m.eval()
    export_onnx(m, tmp_path / "str2.onnx", batch_size=1)
    assert not m.training


def test_onnx_export_refuses_to_overwrite_and_read_names_a_bad_batch_size(exported, tmp_path):
    m = zoo.load_pretrained(exported)
    (tmp_path / "str.onnx").write_bytes(b"an earlier export")
    with pytest.raises(FileExistsError, match="str.onnx already exist"):
        export_onnx(m, tmp_path / "str.onnx")
    assert (tmp_path / "str.onnx").read_bytes() == b"an earlier export"  # untouched
    (tmp_path / "b.onnx.charset.txt").write_text("a\n")
    with pytest.raises(FileExistsError, match="b.onnx.charset.txt already exist"):
        export_onnx(m, tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {bad}"):
            m.read([np.zeros((32, 128, 3), np.uint8)], batch_size=bad)


def test_onnx_export_names_a_bad_batch_size_or_refine_iters(exported, tmp_path):
    """batch_size 0 killed the interpreter in the exporter (SIGFPE) and a negative refine_iters exported a
    model without refinement, silently; both are named errors now, as read() names a bad batch_size."""
    m = zoo.load_pretrained(exported)
    for bad in (-1, 1.5, True):  # checked first: the unfixed code crashes the process on batch_size 0
        with pytest.raises(ValueError, match="refine_iters must be a non-negative integer"):
            export_onnx(m, tmp_path / "r.onnx", refine_iters=bad)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {bad}"):
            export_onnx(m, tmp_path / "b.onnx", batch_size=bad)
    assert not list(tmp_path.iterdir())  # nothing written



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_onnx_export_of_a_bfloat16_or_float64_model_is_a_named_error(exported, tmp_path, dtype):
    """A recognizer trained under 'bf16-true' / '64-true' holds bfloat16 / float64 weights; torch's ONNX exporter
    failed inside on them ("Unsupported type for attn_mask: 7", "ScalarType ComplexDouble is an unexpected tensor
    scalar type"). The error names the dtype and the way out, writes nothing, and the float32 copy it names exports."""
    import copy

    m = zoo.load_pretrained(exported).to(dtype)
    with pytest.raises(ValueError, match=rf"float32 or float16 model; this one is {dtype}.*deepcopy\(model\).float\(\)"):
        export_onnx(m, tmp_path / "str.onnx")
    assert not list(tmp_path.iterdir())
    assert export_onnx(copy.deepcopy(m).float(), tmp_path / "str.onnx").is_file()


@pytest.mark.parametrize("precision,dtype", [("bf16-true", torch.bfloat16), ("64-true", torch.float64)])
def test_csd_trains_under_a_true_precision(exported, precision, dtype):
    """Lightning's 'bf16-true' / '64-true' (the former recommended by ZooTask) hand the batch over in the
    student's dtype, while the teacher (not a submodule) stays float32: its encoder refused the images
    ("Input type (c10::BFloat16) and bias type (float) should be the same"). The pseudolabels are the teacher's
    own float32 readings of the same pixels."""
    import lightning as L
    from torch.utils.data import DataLoader

    from zoo.data.str import encode_targets

    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(exported))
    torch.manual_seed(0)
    imgs = torch.randn(3, 3, 32, 128).to(dtype)
    targets, soft = task._teacher_targets(imgs)
    ref = zoo.load_pretrained(exported).eval()  # the teacher read on its own, in float32
    with torch.no_grad():
        readings = [r.text for r in ref.decode_probs(ref(imgs.float()))]
    assert torch.equal(targets, encode_targets(ref.charset, readings))
    assert torch.isfinite(soft).all()
    batch = {"images": imgs.float(), "targets": torch.randint(1, 37, (3, 7))}
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, precision=precision)
    trainer.fit(task, train_dataloaders=DataLoader([batch], batch_size=None))
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_csd_logs_how_often_the_teachers_pseudolabel_is_the_label(exported, monkeypatch):
    """A CSD run logged the loss and the KL term but not the quality of the teacher's pseudolabels, which CSD papers
    report. train/csd_pseudolabel_accuracy is the percentage of a batch's labelled words the teacher reads exactly:
    here a teacher made to read "aaaaaa" in every crop, against labels of which two of six are "aaaaaa" (a seventh
    row has no label and is left out)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from zoo.data.str import encode_targets

    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(exported))
    t = task.teacher
    with torch.no_grad():  # every slot's logits: 'a' by far
        t.head.bias.fill_(-50.0)
        t.head.bias[t.charset.encode("a")[0]] = 50.0
    imgs = torch.randn(7, 3, 32, 128)
    assert [r.text for r in t.read(list(imgs.permute(0, 2, 3, 1).sigmoid().numpy()))] == ["aaaaaa"] * 7
    texts = ["aaaaaa", "aaaaa", "aaaaab", "aaaaaa", "", "b"]  # word for word: rows 0 and 3 only
    labels = torch.cat([encode_targets(t.charset, texts), torch.full((1, 7), -100)])
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=DataLoader([{"images": imgs, "targets": labels}], batch_size=None))
    assert trainer.callback_metrics["train/csd_pseudolabel_accuracy"].item() == pytest.approx(100 * 2 / 6)
    # a batch with no label logs nothing (no number made up), and neither does a run without a teacher
    logged = {}
    monkeypatch.setattr(RecognitionTask, "log", lambda self, name, value, **kw: logged.update({name: (float(value), kw)}))
    task.training_step({"images": imgs[:2], "targets": torch.full((2, 7), -100)}, 0)
    assert "train/csd_pseudolabel_accuracy" not in logged and "train/kl" in logged
    task.training_step({"images": imgs[:4], "targets": labels[:4]}, 0)
    assert logged["train/csd_pseudolabel_accuracy"] == (pytest.approx(50.0), {"batch_size": 4})
    logged.clear()
    plain = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO)
    plain.training_step({"images": imgs[:4], "targets": labels[:4]}, 0)
    assert "train/loss" in logged and "train/csd_pseudolabel_accuracy" not in logged


def test_csd_pseudolabels_are_the_teachers_readings_encoded(tmp_path):
    """The pseudolabel of a crop is the teacher's reading encoded as a data label would be
    (``encode_targets``): a teacher with no EOS in any slot reads max_length characters, so its
    pseudolabel ends with EOS in the last slot (the slot is for EOS only), not with a character there."""
    from zoo.data.str import encode_targets

    torch.manual_seed(0)
    m = SceneTextRecognizer.from_config({**TINY, "max_length": 6})
    with torch.no_grad():
        m.head.bias[0] = -1e4  # the teacher never says EOS
    teacher = export_model(m, tmp_path / "no_eos")
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(teacher))
    imgs = torch.randn(3, 3, 32, 128)
    targets, _ = task._teacher_targets(imgs)
    readings = [r.text for r in task.teacher.decode_probs(task.teacher(imgs))]
    assert all(len(t) == 6 for t in readings)
    assert torch.equal(targets, encode_targets(task.teacher.charset, readings))


def test_csd_teacher_with_another_crop_size_is_refused_at_setup(tmp_path):
    torch.manual_seed(0)
    m = SceneTextRecognizer.from_config({**TINY, "max_length": 6, "img_size": [32, 64]})
    teacher = export_model(m, tmp_path / "narrow")
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(teacher))
    with pytest.raises(ValueError, match="img_size"):
        task.setup("fit")  # not a shape error from the teacher's encoder at the first step


def test_csd_teacher_of_another_domain_is_refused_by_name(tmp_path, monkeypatch):
    """A language model's export or .ckpt named as the CSD teacher: an error naming what it holds. The export
    failed as "'RecognitionTask' object has no attribute 'teacher'" (the property's AttributeError, hidden by
    nn.Module), the .ckpt with Lightning's "does not resolve to an already imported subclass" refusal."""
    from pathlib import Path

    from zoo.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    main(["fit", "--config", "configs/lm/tiny.yaml", "--model.init_args.model_args={dim: 16, n_layers: 1, n_heads: 2, max_seq_len: 128}",
          "--data.init_args.train_size=128", "--data.init_args.val_size=64", "--trainer.max_steps=1",
          "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    lm_export, lm_ckpt = next(tmp_path.rglob("export")), next(tmp_path.rglob("*.ckpt"))
    for source, what in ((lm_export, "DiffTransformerLM, not a scene-text recognizer"),
                         (lm_ckpt, "LanguageModelTask, not of a scene-text RecognitionTask")):
        task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(source))
        with pytest.raises(ValueError, match=what):
            task.setup("fit")
    # fine-tuning from it: named too (it read "has max_length None, the data 6; set data.max_length to match")
    with pytest.raises(ValueError, match=r"pretrained .*export holds a zoo.models.lm.DiffTransformerLM, not a scene-text"):
        RecognitionTask(arch="str-diff-tiny", data_info={**INFO, "charset": "abc"}, pretrained=str(lm_export))


def _order_from_mask(mask):
    """The decoding order a permutation mask encodes: query q's rank = how many other queries' outputs
    (content q' + 1) it sees (content 0 is BOS; a query's own output is never visible to it)."""
    T = mask.shape[0]
    seen = [int(mask[q, 1:].sum()) for q in range(T)]
    return sorted(range(T), key=lambda q: seen[q])


def test_parseq_recipe_permutes_characters_with_eos_last_and_drops_eos_targets():
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO)
    eos = task.model.charset.EOS
    # "ab" and "abcd" (character ids 11.., then EOS, then padding): the batch's longest label has 4 characters
    targets = torch.tensor([[11, 12, eos, -100, -100, -100, -100], [11, 12, 13, 14, eos, -100, -100]])
    torch.manual_seed(0)
    orders = set()
    for _ in range(60):
        mask, tgt = task._mask("perm", targets)
        order = _order_from_mask(mask)
        # a valid permutation mask: exactly the earlier queries' outputs are visible, BOS always
        for rank, q in enumerate(order):
            assert bool(mask[q, 0]) and sorted(j - 1 for j in range(1, 7) if mask[q, j]) == sorted(order[:rank])
        assert order[4:] == [4, 5, 6]  # the longest label's EOS slot after its characters; padding keeps its order
        orders.add(tuple(order[:4]))
        assert torch.equal(tgt, targets.masked_fill(targets == eos, -100))  # PARSeq drops EOS targets here
    assert len(orders) > 10  # the characters' order is random (24 possible)
    for mode in ("ar", "nar", "cloze"):  # the canonical masks keep every target, EOS included
        assert torch.equal(task._mask(mode, targets)[1], targets)


def test_v1_recipe_permutes_every_slot_and_keeps_eos_targets():
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, recipe="v1")
    eos = task.model.charset.EOS
    targets = torch.tensor([[11, 12, eos, -100, -100, -100, -100]])
    torch.manual_seed(0)
    eos_sees_all = []
    for _ in range(40):
        mask, tgt = task._mask("perm", targets)
        eos_sees_all.append(bool(mask[2, 1:3].all()))  # the EOS query (slot 2) sees both characters
        assert torch.equal(tgt, targets)
    assert not all(eos_sees_all)  # the EOS slot is not kept last
    with pytest.raises(ValueError, match="recipe must be one of"):
        RecognitionTask(arch="str-diff-tiny", model_args=TINY, recipe="PARSeq")


@pytest.mark.parametrize("recipe", ["parseq", "v1"])
def test_perm_mask_of_a_training_step_reads_no_device_value(recipe, monkeypatch):
    """The perm ordering draws ``torch.randperm`` on the host: its length (the batch's longest label) is read from the
    host batch before Lightning moves it, and the mask built on the host, so a GPU step does not stall on the device
    (``int(targets...max())`` and the permutation's blocking copy did, every training step). The mask is the naive
    one of the same draw: BOS always visible, content ``j`` to query ``q`` when slot ``j - 1`` comes earlier."""
    from zoo.data.str import Collate

    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, recipe=recipe)
    texts = ["ab", "abcd", "7"]
    batch = Collate(task.model.charset)([(torch.randn(3, 32, 128), t, "synth", i) for i, t in enumerate(texts)])
    batch = task.on_before_batch_transfer(batch, 0)  # the host batch, as Lightning hands it before the transfer
    T = task.model.num_slots
    n = max(len(t) for t in texts) if recipe == "parseq" else T  # the slots the draw permutes

    def host_read(*args, **kwargs):
        raise AssertionError("a training step read a tensor value on the host")

    torch.manual_seed(0)
    with monkeypatch.context() as m:
        for name in ("__bool__", "__int__", "__index__", "__float__", "item", "tolist"):
            m.setattr(torch.Tensor, name, host_read)
        mask, _ = task._mask("perm", batch["targets"], batch.get("longest_label"))
    torch.manual_seed(0)
    order = torch.randperm(n).tolist() + list(range(n, T))
    rank = {slot: r for r, slot in enumerate(order)}
    naive = [[j == 0 or rank[j - 1] < rank[q] for j in range(T)] for q in range(T)]
    assert mask.tolist() == naive
    with monkeypatch.context() as m:  # the whole step: the four masks, the loss
        for name in ("__bool__", "__int__", "__index__", "__float__", "item", "tolist"):
            m.setattr(torch.Tensor, name, host_read)
        loss = task.training_step(batch, 0)
    assert torch.isfinite(loss)


def test_weight_decay_leaves_out_the_embeddings_parseq_and_timm_list():
    from timm.models.vision_transformer import VisionTransformer

    def decayed(task):
        opt = task.configure_optimizers()["optimizer"]
        ids = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        every = [p for g in opt.param_groups for p in g["params"]]
        assert len(every) == len(list(task.parameters()))  # each parameter in exactly one group
        return {n for n, p in task.named_parameters() if id(p) in ids}

    parseq = decayed(RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO))
    v1 = decayed(RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, recipe="v1"))
    assert "pos_embed" in VisionTransformer.no_weight_decay(None)  # timm's own list names the encoder's
    exempt = {"model.text_embed.weight", "model.pos_queries", "model.encoder.pos_embed"}
    assert exempt <= v1 and not exempt & parseq
    assert v1 - parseq == exempt  # nothing else changes: the other matrices stay decayed
    assert "model.head.weight" in parseq


@pytest.mark.parametrize("csd", [False, True], ids=["labels", "csd-pseudolabels"])
def test_parseq_step_on_a_batch_of_empty_labels_is_finite(exported, monkeypatch, csd):
    """Every label empty (a CSD teacher that reads nothing): parseq's perm ordering drops the EOS targets, so
    it has none left. Its cross-entropy / KL mean over no targets was NaN, and so were the loss and every
    gradient. The other masks still learn the EOS."""
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(exported) if csd else None)
    eos, T = task.model.charset.EOS, task.model.num_slots
    targets = torch.tensor([[eos] + [-100] * (T - 1)] * 2)
    images = torch.randn(2, 3, 32, 128)
    if csd:  # the teacher's pseudolabels: empty readings, with its cloze logits for them
        monkeypatch.setattr(task, "_teacher_targets", lambda im: (targets, task.teacher.cloze_logits(im, targets)))
    loss = task.training_step({"images": images, "targets": targets}, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in task.model.parameters() if p.grad is not None)
    # the perm ordering adds nothing to the loss: the mean of the canonical masks' terms over all four
    task.masks = ["ar", "nar", "cloze"]
    torch.testing.assert_close(task.training_step({"images": images, "targets": targets}, 0) * 3 / 4, loss)


def test_a_checkpoint_saved_before_the_recipe_resumes(tmp_path):
    """A run saved before ``recipe`` existed (its hparams lack it; its optimizer decays every matrix, the
    position queries and embeddings included) resumes with the recipe it was trained with, v1: loading its
    optimizer state into the parseq grouping was refused (a parameter group of another size)."""
    import lightning as L
    from torch.utils.data import DataLoader

    path = _one_step_checkpoint(RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, recipe="v1"),
                                tmp_path / "old.ckpt", 36)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["hyper_parameters"]["recipe"]  # as saved before the change
    torch.save(ckpt, path)
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO)
    batch = {"images": torch.randn(2, 3, 32, 128), "targets": torch.randint(1, 37, (2, 7))}
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.warns(UserWarning, match="predates training recipes .* continuing with recipe 'v1'"):
        trainer.fit(task, train_dataloaders=DataLoader([batch], batch_size=None), ckpt_path=path)
    assert trainer.global_step == 2 and task.recipe == "v1"  # the run goes on as it was trained
    decayed = {id(p) for g in trainer.optimizers[0].param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(task.model.pos_queries) in decayed and id(task.model.text_embed.weight) in decayed
    # a new run (no checkpoint) gets the parseq grouping: 3 matrices fewer decayed
    fresh = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO).configure_optimizers()["optimizer"]
    assert sum(len(g["params"]) for g in fresh.param_groups if g["weight_decay"] > 0) == len(decayed) - 3


def test_parseq_recipe_with_perm_as_the_only_mask_is_refused_when_training():
    """Only the perm mask under parseq: no EOS target is ever trained (the model never learns to end a word)."""
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, masks=["perm"])
    eos = task.model.charset.EOS
    targets = torch.tensor([[11, 12, eos, -100, -100, -100, -100]])
    assert not (task._mask("perm", targets)[1] == eos).any()  # what training would see
    with pytest.raises(ValueError, match=r"masks=\['perm'\] with recipe 'parseq' never trains the end of a word"):
        task.setup("fit")
    task.setup("test")  # evaluating a model trained so (or an older checkpoint) is fine
    RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, masks=["perm"], recipe="v1").setup("fit")
    RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, masks=["perm", "nar"]).setup("fit")


@pytest.mark.parametrize("weight", [-0.5, float("nan")])
def test_csd_kl_weight_must_be_non_negative(weight):
    """A negative (or NaN) KL weight would push the student away from the teacher's distributions, silently."""
    with pytest.raises(ValueError, match=r"csd_kl_weight must be >= 0 \(0: pseudolabels only\)"):
        RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, csd_kl_weight=weight)
    RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, csd_kl_weight=0.0)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_csd_temperature_must_be_positive(tau):
    """A NaN temperature passed the `<= 0` check and made the KL term NaN from the first step."""
    with pytest.raises(ValueError, match="csd_temperature must be positive"):
        RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, csd_temperature=tau)


def test_csd_teacher_checkpoint_under_the_home_folder(exported, tmp_path, monkeypatch):
    """`teacher: ~/runs/best.ckpt` (a YAML value: no shell expands it) was "checkpoint ~/runs/best.ckpt not found",
    while a teacher export folder given as "~/..." was found: the .ckpt path is expanded as the folder's is."""
    teacher = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO)
    (tmp_path / "runs").mkdir()
    _one_step_checkpoint(teacher, tmp_path / "runs" / "best.ckpt", 36)
    monkeypatch.setenv("HOME", str(tmp_path))
    student = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher="~/runs/best.ckpt")
    student.setup("fit")
    for (k, v), (k2, v2) in zip(teacher.model.state_dict().items(), student.teacher.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("content,error,what", [
    (b"", ValueError, r"cannot read .*empty\.ckpt as a checkpoint"),
    (b"not a checkpoint\n", ValueError, r"cannot read .*empty\.ckpt as a checkpoint"),
    (None, IsADirectoryError, r"empty\.ckpt is a folder, not a checkpoint file"),
], ids=["empty", "text", "folder"])
def test_csd_teacher_checkpoint_that_is_no_checkpoint_is_named(tmp_path, content, error, what):
    """A teacher ``.ckpt`` left empty (a run killed while saving), holding something else, or a folder: an error
    naming the file and what is wrong with it, as ``pretrained=<.ckpt>`` gives. They failed as a bare ``EOFError``
    (no message), ``KeyError: 105`` and "checkpoint ... not found" (the folder exists)."""
    path = tmp_path / "empty.ckpt"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(path))
    with pytest.raises(error, match=what):
        task.setup("fit")


class _Marker:
    """A pickle that, loaded without weights_only, writes the file its path names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


def test_a_csd_teacher_file_that_a_safe_load_refuses_is_not_unpickled(tmp_path):
    """A teacher .ckpt the weights-only peek refuses was read again with a full unpickle (to name its task class),
    which runs whatever code the file holds; it is refused by name without being unpickled."""
    marker = tmp_path / "marker.txt"
    torch.save({"state_dict": {}, "payload": _Marker(marker)}, tmp_path / "odd.ckpt")
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(tmp_path / "odd.ckpt"))
    with pytest.raises(ValueError, match=r"cannot read .*odd\.ckpt as a checkpoint"):
        task.setup("fit")
    assert not marker.exists()


class MyRecognitionTask(RecognitionTask):
    """A user's subclass (a script's own task class)."""


def test_a_csd_teacher_written_by_a_subclass_of_the_task_loads(tmp_path):
    """A teacher checkpoint a subclass of RecognitionTask wrote was refused ("not of a scene-text
    RecognitionTask") by its class name, though RecognitionTask.load_from_checkpoint reads it."""
    teacher = MyRecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO)
    _one_step_checkpoint(teacher, tmp_path / "t.ckpt", 36)
    student = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(tmp_path / "t.ckpt"))
    student.setup("fit")
    for (k, v), (k2, v2) in zip(teacher.model.state_dict().items(), student.teacher.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_a_csd_teacher_whose_task_class_this_process_has_not_imported(tmp_path):
    """A teacher checkpoint written by a user's subclass of RecognitionTask that this process has not imported (a
    training script's own class: ``__main__.MyRecognitionTask`` there) was refused by its class name ("not of a
    scene-text RecognitionTask"), though RecognitionTask.load_from_checkpoint reads it; it loads. Another domain's
    checkpoint of a class not imported here, or one naming no class, is still refused by name: its saved data kind
    is not 'str'."""
    teacher = MyRecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO)
    path = _one_step_checkpoint(teacher, tmp_path / "t.ckpt", 36)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved["zoo_task_class"] = "__main__.MyRecognitionTask"  # the script that wrote it is not this process
    torch.save(saved, path)
    student = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(path))
    student.setup("fit")
    for (k, v), (k2, v2) in zip(teacher.model.state_dict().items(), student.teacher.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    for task_class, named in (("my_project.MyLanguageModel", "my_project.MyLanguageModel"), (None, "a task of 'lm' data")):
        other = {**saved, "zoo_task_class": task_class,
                 "hyper_parameters": {**saved["hyper_parameters"], "data_info": {"kind": "lm"}}}
        torch.save(other, tmp_path / "other.ckpt")
        student = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(tmp_path / "other.ckpt"))
        with pytest.raises(ValueError, match=rf"other\.ckpt is a checkpoint of {re.escape(named)}, not of a scene-text "
                                             r"RecognitionTask; give a str-\* checkpoint"):
            student.setup("fit")


def test_csd_training_step_loss_is_the_documented_mix_by_hand(monkeypatch):
    """The CSD loss of a training step, rebuilt by hand from the documented parts, for the shipped teacher on
    synthetic crops (readings of several lengths): the pseudolabels are the teacher's readings (the ground truth is
    not read); per mask, the pseudolabel cross-entropy plus ``csd_kl_weight`` times KL(teacher || student) at
    temperature T, times T^2, each the mean over the slots up to and including EOS (padding excluded; parseq's perm
    ordering also drops the EOS slots); the mean over the four masks."""
    from zoo.data.str import STRDataModule, encode_targets

    dm = STRDataModule(charset="36", max_length=6, synthetic={"train": 0, "val": 8, "test": 0}, synth_seed=3,
                       eval_batch_size=8)
    dm.setup("fit")
    images = next(iter(dm.val_dataloader()))["images"]
    tau, w = 3.0, 0.7
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher="str-diff-tiny",
                           csd_temperature=tau, csd_kl_weight=w)
    teacher = zoo.load_pretrained("str-diff-tiny")
    with torch.no_grad():
        readings = [r.text for r in teacher.decode_probs(teacher(images))]
        assert len({len(r) for r in readings}) > 1
        labels = encode_targets(teacher.charset, readings)
        soft = teacher.cloze_logits(images, labels)  # the teacher's cloze logits, every other character visible
    B, T = labels.shape
    eos, m = teacher.charset.EOS, task.model
    # content: BOS, then the label's characters; EOS and what follows are no content
    tokens = torch.full((B, T), m.pad_id)
    tokens[:, 0] = m.bos_id
    seen = torch.zeros(B, T, dtype=torch.bool)
    seen[:, 0] = True
    for b, text in enumerate(readings):
        for j, ch in enumerate(text, 1):
            tokens[b, j], seen[b, j] = teacher.charset.chars.index(ch) + 1, True
    # the perm ordering: the longest reading's characters shuffled (here: drawn reversed), its EOS slot and the rest after
    n, drawn = max(map(len, readings)), []
    monkeypatch.setattr(torch, "randperm", lambda k, **kw: drawn.append(k) or torch.arange(k - 1, -1, -1))
    rank = {s: r for r, s in enumerate(list(range(n - 1, -1, -1)) + list(range(n, T)))}
    visible = {"ar": lambda q, c: c <= q, "nar": lambda q, c: False, "cloze": lambda q, c: c != q + 1,
               "perm": lambda q, c: rank[c - 1] < rank[q]}
    ground_truth = torch.randint(1, 37, (B, T))
    loss = task.training_step({"images": images, "targets": ground_truth}, 0)
    assert drawn == [n]
    ref = 0.0
    with torch.no_grad():
        memory = m.encode(images)
        for mode, see in visible.items():
            mask = torch.tensor([[c == 0 or bool(see(q, c)) for c in range(T)] for q in range(T)])
            logits = m.decode_step(memory, tokens, mask, seen).double()
            ce = kl = count = 0.0
            for b in range(B):
                for s in range(T):
                    y = int(labels[b, s])
                    if y == -100 or (mode == "perm" and y == eos):
                        continue
                    q, p = (soft[b, s].double() / tau).softmax(-1), (logits[b, s] / tau).softmax(-1)
                    ce, kl, count = ce - logits[b, s].log_softmax(-1)[y], kl + (q * (q / p).log()).sum(), count + 1
            ref += (ce / count + w * kl / count * tau**2) / len(visible)
    assert abs(float(loss.detach()) - float(ref)) < 1e-5 * float(ref)


def test_csd_teacher_stays_frozen_in_eval_through_a_fit(tmp_path):
    """Through a fit with validation every step: the teacher (dropout and drop path on) stays in eval mode after
    Lightning's ``train()`` of each epoch and after each validation loop, takes no gradient, is in no optimizer, is
    not changed and is not saved into the student's checkpoint, whose export loads without the teacher."""
    import lightning as L
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    source = SceneTextRecognizer.from_config({**TINY, "max_length": 6, "dropout": 0.5, "drop_path": 0.5,
                                              "attn_type": "vanilla"})
    teacher_dir = export_model(source, tmp_path / "teacher")
    task = RecognitionTask(arch="str-diff-tiny", model_args={**TINY, "dropout": 0.1}, data_info=INFO,
                           teacher=str(teacher_dir), lr=0.1, warmup_steps=0)
    states = []

    class Probe(L.Callback):
        def record(self, where, trainer, pl_module):
            t = pl_module.teacher
            opt = {id(p) for o in trainer.optimizers for g in o.param_groups for p in g["params"]}
            states.append((where, any(x.training for x in t.modules()), any(p.requires_grad for p in t.parameters()),
                           any(id(p) in opt for p in t.parameters())))

        def on_train_epoch_start(self, trainer, pl_module):
            self.record("epoch start", trainer, pl_module)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.record("batch start", trainer, pl_module)

        def on_validation_end(self, trainer, pl_module):
            self.record("validation end", trainer, pl_module)

    batch = {"images": torch.randn(2, 3, 32, 128), "targets": torch.randint(1, 37, (2, 7))}
    val = {"images": batch["images"], "texts": ["ab", "c"], "set": ["v", "v"], "index": [0, 1]}
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, val_check_interval=1,
                        default_root_dir=tmp_path, callbacks=[Probe()])
    trainer.fit(task, train_dataloaders=DataLoader([batch, batch], batch_size=None),
                val_dataloaders=DataLoader([val], batch_size=None))
    assert trainer.global_step == 4 and {w for w, *_ in states} == {"epoch start", "batch start", "validation end"}
    assert [s for s in states if any(s[1:])] == []
    for (k, v), (k2, v2) in zip(source.state_dict().items(), task.teacher.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    saved = torch.load(tmp_path / "student.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert sorted(saved) == sorted(f"model.{k}" for k in task.model.state_dict())
    export = task.export(tmp_path / "export")
    import shutil

    shutil.rmtree(teacher_dir)
    student = zoo.load_pretrained(export)
    with torch.no_grad():
        torch.testing.assert_close(student(batch["images"]), task.model.eval()(batch["images"]))


def test_a_student_given_its_teacher_as_a_path_object_saves_a_loadable_checkpoint(exported, tmp_path):
    """``teacher=pathlib.Path(...)`` (and a charset file as ``eval_charset``), as the Python API takes them: the
    hyperparameters held the ``PosixPath``, which Lightning's weights-only loading refuses, so the student's
    checkpoint could not be resumed, tested, exported or used as a teacher ("Weights only load failed")."""
    from pathlib import Path

    chars = tmp_path / "chars.txt"
    chars.write_text(INFO["charset"])
    student = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=Path(exported),
                              eval_charset=chars)
    ckpt = _one_step_checkpoint(student, tmp_path / "student.ckpt", 36)
    back = RecognitionTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert back.hparams.teacher == str(exported) and back.hparams.eval_charset == str(chars)
    for (k, v), (k2, v2) in zip(student.model.state_dict().items(), back.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert back.teacher is not None
    successor = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(ckpt))
    successor.setup("fit")  # the student as the next round's teacher
    for (k, v), (k2, v2) in zip(student.model.state_dict().items(), successor.teacher.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("name", ["nothere", "nothere.ckpt"])
def test_a_missing_csd_teacher_is_named_as_the_teacher(tmp_path, name):
    """A missing teacher folder or .ckpt: the error says it is the CSD teacher that is missing (a run may also name a
    ``pretrained`` folder); it read "'.../nothere' is neither an exported model folder ..." or "checkpoint ... not
    found", with nothing saying which option held the path."""
    task = RecognitionTask(arch="str-diff-tiny", model_args=TINY, data_info=INFO, teacher=str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match=rf"^CSD teacher .*{name}.*not"):
        task.setup("fit")
