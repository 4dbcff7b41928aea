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


def test_predict_writes_each_querys_best_items(tmp_path, monkeypatch):
    """`zoo predict` on a VLM config ranks the test split both ways (it failed: "Trainer.predict requires
    forward"). Reference: the model's own full score matrix `similarity()` (ITC / temperature + ITM for every
    pair), which the re-ranking equals when eval_k covers the whole gallery; and `similarity(score="itc")`."""
    import json

    from zoo.data.vlm import SyntheticVLMDataModule

    monkeypatch.chdir(ROOT)
    args = ["predict", "--config", "configs/vlm/synthetic.yaml", "--model.init_args.pretrained=vlm-fda-tiny",
            "--model.init_args.eval_k=16", "--model.init_args.predict_top=3", "--data.init_args.n_test=12",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    main(args)
    [path] = list(tmp_path.rglob("retrieval.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["query"] for r in rows] == ["image"] * 12 + ["text"] * 12
    assert not list(tmp_path.rglob("predictions.jsonl*"))  # no empty per-batch file (or .partial) beside it

    dm = SyntheticVLMDataModule(n_test=12, image_size=64)
    test = dm.splits()["test"]
    images = torch.stack([test[i]["image"] for i in range(12)])
    texts = [test[i]["captions"][0] for i in range(12)]
    m = zoo.load_pretrained("vlm-fda-tiny")
    full, cos = m.similarity(images, texts), m.similarity(images, texts, score="itc")
    for i, row in enumerate(rows[:12]):
        order = full[i].argsort(descending=True).tolist()
        assert row["image"] == f"scene-{i}" and row["captions"] == [texts[i]]
        assert [t["text"] for t in row["top"]] == [texts[j] for j in order[:3]]
        assert [t["itc"] for t in row["top"]] == pytest.approx([float(cos[i, j]) for j in order[:3]], abs=1e-4)
        assert row["correct_rank"] == order.index(i)
    for j, row in enumerate(rows[12:]):
        order = full[:, j].argsort(descending=True).tolist()
        assert row["text"] == texts[j] and row["image_of_caption"] == f"scene-{j}"
        assert [t["image"] for t in row["top"]] == [f"scene-{i}" for i in order[:3]]
        assert row["correct_rank"] == order.index(j)
    # predicting into that folder again is refused before any work
    import lightning as L

    from zoo.tasks.vlm import VLMTask

    task = VLMTask(arch="vlm-fda-tiny", pretrained="vlm-fda-tiny", data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=path.parent, enable_progress_bar=False)
    with pytest.raises(FileExistsError, match="retrieval.jsonl exists"):
        trainer.predict(task, datamodule=dm)


def test_predict_that_fails_part_way_leaves_no_half_written_retrieval_file(tmp_path, monkeypatch):
    """retrieval.jsonl was written row by row: a row that failed (here one that JSON cannot hold) left the rows
    before it in a file that looked finished, and the next run into the folder was refused over it. Now nothing
    is written, and the rerun writes every row."""
    import json

    import lightning as L

    import zoo.tasks.vlm as vlm_task
    from zoo.data.vlm import SyntheticVLMDataModule

    dm = SyntheticVLMDataModule(n_test=6, image_size=64)
    real = vlm_task.retrieval_rows

    def broken(*args, **kwargs):
        rows = real(*args, **kwargs)
        rows[2] = {**rows[2], "bad": object()}
        return rows

    def predict():
        task = vlm_task.VLMTask(arch="vlm-fda-tiny", pretrained="vlm-fda-tiny", data_info=dm.data_info, predict_top=2)
        L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False).predict(
            task, datamodule=dm)

    monkeypatch.setattr(vlm_task, "retrieval_rows", broken)
    with pytest.raises(TypeError, match="not JSON serializable"):
        predict()
    assert not (tmp_path / "retrieval.jsonl").exists()
    monkeypatch.setattr(vlm_task, "retrieval_rows", real)
    predict()
    rows = [json.loads(line) for line in (tmp_path / "retrieval.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["query"] for r in rows] == ["image"] * 6 + ["text"] * 6


def test_evaluation_items_without_a_name_are_named_by_their_position():
    """A batch without 'name' (a custom dataset) names its items image-<dataset index>, or image-<position> without
    an index. The names were counted from a list that grew while it was extended: image-0, image-2, image-4, then
    image-3... (two batches of two even named two items image-2)."""
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    task = VLMTask(arch="vlm-fda-tiny", data_info=SyntheticVLMDataModule(n_test=4, image_size=64).data_info)
    task.on_predict_epoch_start()
    for _ in range(3):
        task._collect({"image": torch.zeros(2, 3, 64, 64), "captions": [["a"], ["b"]]})
    assert task._eval["names"] == [f"image-{i}" for i in range(6)]
    task.on_predict_epoch_start()
    task._collect({"image": torch.zeros(2, 3, 64, 64), "captions": [["a"], ["b"]], "index": [7, 3]})
    assert task._eval["names"] == ["image-7", "image-3"]


def test_text_init_beside_a_pretrained_export_is_named_as_unused():
    """pretrained + text_init: the export's text weights are used and text_init was dropped without a word; a
    text_init equal to the one the export started from says nothing."""
    import warnings

    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    info = SyntheticVLMDataModule(n_test=4, image_size=64).data_info
    with pytest.warns(UserWarning, match=r"text_init='minilm' is not used: .*pretrained vlm-fda-tiny \(which started "
                                         r"from random weights\)"):
        task = VLMTask(arch="vlm-fda-tiny", pretrained="vlm-fda-tiny", text_init="minilm", data_info=info)
    ref = zoo.load_pretrained("vlm-fda-tiny")  # the export's own text weights, not MiniLM's
    for k, v in ref.text.state_dict().items():
        assert torch.equal(task.model.text.state_dict()[k], v), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VLMTask(arch="vlm-fda-tiny", pretrained="vlm-fda-tiny", data_info=info)


def test_zoo_test_writes_the_headline_r1_into_test_metrics(tmp_path, monkeypatch, capsys):
    """`zoo test` printed test/r1 (the mean of both re-ranked R@1) but test_metrics.json lacked it."""
    import json

    monkeypatch.chdir(ROOT)
    main(["test", "--config", "configs/vlm/synthetic.yaml", "--model.init_args.pretrained=vlm-fda-tiny",
          "--data.init_args.n_test=24", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    metrics = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())
    assert metrics["r1"] == pytest.approx((metrics["itm/i2t_r1"] + metrics["itm/t2i_r1"]) / 2)
