"""The CLI over the STR domain: every config parses; fit -> test prints the per-set table -> predict writes a CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "str").glob("*.yaml"))
SMALL = [
    "--model.init_args.model_args", '{"enc_dim": 32, "enc_depth": 1, "enc_heads": 2, "dec_dim": 32, "dec_heads": 2}',
    "--data.init_args.synthetic", '{"train": 16, "val": 8, "test": 12}',
    "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8",
    "--trainer.enable_progress_bar", "false",
]


def test_fit_test_predict(tmp_path, capsys):
    cfg = str(CONFIGS[[c.name for c in CONFIGS].index("synthetic.yaml")])
    main(["fit", "--config", cfg, *SMALL, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "fit")])
    ckpts = sorted((tmp_path / "fit").rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    assert sorted((tmp_path / "fit").rglob("export/config.json"))
    capsys.readouterr()
    main(["test", "--config", cfg, *SMALL, "--ckpt_path", str(ckpts[0]), "--trainer.default_root_dir", str(tmp_path / "test")])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(("synthetic_test", "combined"))]
    assert len(lines) == 2 and lines[0].split()[-1] == "12" and lines[1].split()[-1] == "12"
    metrics = json.loads(next((tmp_path / "test").rglob("test_metrics.json")).read_text())
    assert metrics["combined"]["count"] == 12
    assert "decoding ar + 1 refinement" in out  # the checkpoint's (the registered) decoding
    # decoding settings given with --ckpt_path win over the checkpoint's; its architecture stays
    small_nar = [*SMALL]
    small_nar[1] = small_nar[1][:-1] + ', "decode": "nar", "refine_iters": 0, "dec_depth": 3}'
    main(["test", "--config", cfg, *small_nar, "--ckpt_path", str(ckpts[0]), "--trainer.default_root_dir", str(tmp_path / "nar")])
    out = capsys.readouterr().out
    assert "decoding nar + 0 refinement" in out and "decoder 1x32" in out
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 256, (40, 100), dtype=np.uint8)).save(folder / "gray.png")
    main(["predict", "--config", cfg, *SMALL, "--ckpt_path", str(ckpts[0]), "--data.init_args.predict_dir", str(folder),
          "--trainer.default_root_dir", str(tmp_path / "pred"), "--predict_writer.echo", "false"])
    (csv_path,) = sorted((tmp_path / "pred").rglob("predictions.csv"))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["a.jpg", "b.png", "gray.png"]
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)


def test_predict_over_an_earlier_predictions_csv_is_refused_before_any_work(tmp_path, monkeypatch):
    """A run folder that holds predictions.csv (a logger-less run into the same folder) is refused when predict
    starts: it was refused only after every image was read, with the new predictions.jsonl already written."""
    from zoo.tasks.str import RecognitionTask

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 100, 3), dtype=np.uint8)).save(folder / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    earlier = "image,text,confidence\r\nold.png,OLD,1.0\r\n"
    (out / "predictions.csv").write_bytes(earlier.encode())
    calls = []
    monkeypatch.setattr(RecognitionTask, "predict_step", lambda self, batch, i: calls.append(i) or [])
    cfg = str(CONFIGS[[c.name for c in CONFIGS].index("synthetic.yaml")])
    with pytest.raises(FileExistsError, match="predictions.csv exists"):
        main(["predict", "--config", cfg, *SMALL, "--data.init_args.predict_dir", str(folder), "--trainer.logger", "false",
              "--trainer.default_root_dir", str(out), "--predict_writer.output", str(out / "other.jsonl"),
              "--predict_writer.echo", "false"])
    assert calls == [] and not (out / "other.jsonl").exists()
    assert (out / "predictions.csv").read_bytes() == earlier.encode()


def test_a_predictions_csv_that_fails_part_way_is_removed(tmp_path):
    """A row that cannot be written (a file name that is not valid Unicode, as os.listdir gives undecodable
    bytes) leaves no half-written predictions.csv behind; an existing file is never opened for writing."""
    import csv

    from zoo.tasks.str import write_predictions_csv

    rows = [{"image": "a.png", "text": "ok", "confidence": 0.9}, {"image": "b\udcff.png", "text": "x", "confidence": 0.5}]
    with pytest.raises(UnicodeEncodeError):
        write_predictions_csv(rows, tmp_path / "predictions.csv")
    assert not (tmp_path / "predictions.csv").exists()
    path = write_predictions_csv(rows[:1], tmp_path / "predictions.csv")
    assert list(csv.DictReader(path.open(newline="", encoding="utf-8"))) == [{"image": "a.png", "text": "ok", "confidence": "0.9"}]
    with pytest.raises(FileExistsError):
        write_predictions_csv(rows, path)
    assert path.read_text(encoding="utf-8").count("\n") == 2


def test_test_and_predict_with_another_charset_than_the_checkpoints_name_it(tmp_path):
    """`zoo test` / `zoo predict` with a checkpoint of a 36-character model and a config whose data.charset is another
    (the fine-tuning config's 62, or a user's charset file) failed with a bare "size mismatch for
    model.text_embed.weight" from load_state_dict; the error names the charsets of both and the fix."""
    cfg = str(CONFIGS[[c.name for c in CONFIGS].index("synthetic.yaml")])
    main(["fit", "--config", cfg, *SMALL, "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "fit")])
    ckpt = str(sorted((tmp_path / "fit").rglob("*.ckpt"))[0])
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 100, 3), dtype=np.uint8)).save(folder / "a.png")
    want = r"charset: checkpoint 36 characters '0123456789abc.*' vs data 62 characters"
    with pytest.raises(ValueError, match=want):
        main(["test", "--config", cfg, *SMALL, "--data.init_args.charset", "62", "--ckpt_path", ckpt,
              "--trainer.default_root_dir", str(tmp_path / "test")])
    with pytest.raises(ValueError, match=want):
        main(["predict", "--config", cfg, *SMALL, "--data.init_args.charset", "62", "--ckpt_path", ckpt,
              "--data.init_args.predict_dir", str(folder), "--trainer.default_root_dir", str(tmp_path / "pred"),
              "--predict_writer.echo", "false"])
    # a charset of as many characters (upper case): the weights fit, and every reading came out in the wrong letters
    upper = tmp_path / "upper.txt"
    upper.write_text("\n".join("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"charset: checkpoint 36 characters '0123456789abc.*' vs data 36 characters '0123456789ABC"):
        main(["predict", "--config", cfg, *SMALL, "--data.init_args.charset", str(upper), "--ckpt_path", ckpt,
              "--data.init_args.predict_dir", str(folder), "--trainer.default_root_dir", str(tmp_path / "pred2"),
              "--predict_writer.echo", "false"])
    # the checkpoint's own charset still tests
    main(["test", "--config", cfg, *SMALL, "--ckpt_path", ckpt, "--trainer.default_root_dir", str(tmp_path / "ok")])


def test_the_fine_tuning_config_trains_the_shipped_model_with_its_own_dropout():
    """configs/str/finetune_charset.yaml set no dropout, so the shipped model (trained with dropout 0, as its
    config.json says and as every other STR config trains) was fine-tuned with the architecture's default 0.1."""
    import yaml

    from zoo.data.str import STRDataModule
    from zoo.tasks.str import RecognitionTask

    shipped = json.loads((Path(__file__).resolve().parents[2] / "zoo/pretrained/str-diff-tiny/config.json").read_text())
    cfg = yaml.safe_load(CONFIGS[[c.name for c in CONFIGS].index("finetune_charset.yaml")].read_text())
    dm = STRDataModule(**cfg["data"]["init_args"])
    task = RecognitionTask(**cfg["model"]["init_args"], data_info=dm.data_info)
    assert task.model.config.dropout == shipped["config"]["dropout"] == 0.0


def test_predict_names_every_unreadable_image_of_the_folder_in_one_error(tmp_path):
    """`zoo predict` over a folder stopped at the first image it could not read and named that one only, so a folder
    with several bad crops took one run per bad crop (the LMDB builder names all of its bad images at once). The
    run now reads past them and ends in one error naming each (in batches of their own and another's), with no
    predictions.csv written."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # 10 files, eval batches of 8: a bad crop among good ones, then a batch of bad ones only
        Image.fromarray(rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "03.png").write_bytes(b"not an image")
    (folder / "08.png").write_bytes(b"")
    (folder / "09.jpg").write_bytes((folder / "00.png").read_bytes()[:100])  # cut short
    cfg = str(CONFIGS[[c.name for c in CONFIGS].index("synthetic.yaml")])
    with pytest.raises(ValueError) as err:
        main(["predict", "--config", cfg, *SMALL, "--data.init_args.predict_dir", str(folder),
              "--trainer.default_root_dir", str(tmp_path / "pred"), "--predict_writer.echo", "false"])
    msg = str(err.value)
    assert msg.startswith(f"cannot read 3 of the 10 images of {folder} (no predictions.csv was written): ")
    assert f"{folder / '03.png'} (" in msg and f"{folder / '08.png'}: the file is empty (0 bytes)" in msg
    assert f"{folder / '09.jpg'} (" in msg and msg.count("cannot read image") == 3
    assert msg.endswith("fix or remove them, then read again")
    assert not sorted((tmp_path / "pred").rglob("predictions.csv"))
