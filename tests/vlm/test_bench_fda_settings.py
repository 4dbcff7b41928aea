"""scripts/bench_fda.py: a trained run in the work folder is reused only under the settings it was trained with."""

import json
import sys
from pathlib import Path

import pytest


@pytest.fixture()
def bench(monkeypatch, load_script):
    mod = load_script("bench_fda")
    trained = []
    monkeypatch.setattr(mod, "train_one", lambda fda, seed, args, out: trained.append((fda, seed)))
    monkeypatch.setattr(mod, "evaluate_one", lambda *a: pytest.fail("must not evaluate a mismatched run"))
    mod.trained = trained
    return mod


def _main(mod, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["bench_fda.py", *argv])
    mod.main()


def _trained_run(folder: Path, **meta):
    folder.mkdir(parents=True)
    (folder / "bench_meta.json").write_text(json.dumps({"fda": True, "seed": 0, **meta}))


def test_an_old_run_is_not_reported_under_new_settings(bench, monkeypatch, tmp_path):
    # written before lr / itm_weight were recorded: those count as the defaults of the time
    _trained_run(tmp_path / "fda_s0", steps=600, batch_size=64)
    with pytest.raises(SystemExit, match=r"other settings \(steps: trained 600, asked 2000; itm_weight: trained 1.0, asked 2.0; "
                                         r"decay_exempt: trained 'none', asked 'no_weight_decay'\)"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--arms", "fda", "--phase", "train")
    with pytest.raises(SystemExit, match=r"itm_weight: trained 1.0, asked 2.0"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--arms", "fda", "--phase", "train", "--steps", "600")
    with pytest.raises(SystemExit, match="nofda_s0 has no trained run"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--phase", "eval", "--steps", "600", "--itm-weight", "1")
    _trained_run(tmp_path / "nofda_s0", steps=600, batch_size=64)
    with pytest.raises(SystemExit, match="steps: trained 600, asked 2000"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--phase", "eval")
    # the same settings but trained when the ViT's position embedding was weight-decayed: not reused
    with pytest.raises(SystemExit, match=r"\(decay_exempt: trained 'none', asked 'no_weight_decay'\)"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--arms", "fda", "--phase", "train", "--steps", "600",
              "--itm-weight", "1")
    assert bench.trained == []
    # the same settings: reused, nothing retrained
    meta = json.loads((tmp_path / "fda_s0" / "bench_meta.json").read_text())
    (tmp_path / "fda_s0" / "bench_meta.json").write_text(json.dumps({**meta, "decay_exempt": "no_weight_decay"}))
    _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--arms", "fda", "--phase", "train", "--steps", "600",
          "--itm-weight", "1")
    assert bench.trained == []


def test_arms_train_one_variant_and_eval_needs_both(bench, monkeypatch, tmp_path):
    _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "1", "--arms", "nofda", "--phase", "train")
    assert bench.trained == [(False, 0), (False, 1)]
    with pytest.raises(SystemExit, match="compare both arms"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--arms", "fda")


def test_fda_args_shape_only_the_fda_arm(bench, monkeypatch, tmp_path, capsys):
    # runs from before --fda-args count as the registered FDA settings ({})
    _trained_run(tmp_path / "fda_s0", steps=600, batch_size=64, decay_exempt="no_weight_decay")
    (tmp_path / "nofda_s0").mkdir()
    (tmp_path / "nofda_s0" / "bench_meta.json").write_text(json.dumps({"fda": False, "seed": 0, "steps": 600, "batch_size": 64,
                                                                       "decay_exempt": "no_weight_decay"}))
    variant = ["--fda-args", '{"fda_direction": "keys"}', "--itm-weight", "1"]
    with pytest.raises(SystemExit, match=r"fda_args: trained \{\}, asked \{'fda_direction': 'keys'\}"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--phase", "train", "--steps", "600", *variant)
    # the no-FDA run does not depend on them: reused as it is
    _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--arms", "nofda", "--phase", "train", "--steps", "600", *variant)
    assert bench.trained == []
    assert bench.fda_args_type('{"function_words": "en-nospatial"}') == {"function_words": "en-nospatial"}
    for bad, msg in (('{"fda_direction": ', "not JSON"), ('{"lr": 1}', "keys from"), ('["keys"]', "JSON object")):
        with pytest.raises(SystemExit):
            _main(bench, monkeypatch, "--work", str(tmp_path), "--fda-args", bad)
        assert msg in capsys.readouterr().err


def test_fda_args_reach_the_fda_model(load_script, tmp_path):
    import argparse

    mod = load_script("bench_fda")
    args = argparse.Namespace(steps=1, batch_size=4, lr=5e-4, warmup=0, itm_weight=1.0, n_train=8, n_test=8, k=4,
                              fda_args={"fda_direction": "keys", "fda_layers": [1]}, init_from=None)
    meta = mod.train_one(True, 0, args, tmp_path / "fda_s0")
    cfg = json.loads((tmp_path / "fda_s0" / "config.json").read_text())["config"]
    assert cfg["fda_direction"] == "keys" and cfg["fda_layers"] == [1] and cfg["fda"] is True
    assert meta["fda_args"] == {"fda_direction": "keys", "fda_layers": [1]}
    meta = mod.train_one(False, 0, args, tmp_path / "nofda_s0")
    cfg = json.loads((tmp_path / "nofda_s0" / "config.json").read_text())["config"]
    assert cfg["fda"] is False and "fda_args" not in meta

    # the function-word list: the exported model de-attends "the" but no longer the preposition "above"
    spatial = argparse.Namespace(**{**vars(args), "fda_args": {"function_words": "en-nospatial"}})
    mod.train_one(True, 0, spatial, tmp_path / "fda_ns_s0")
    import zoo

    m = zoo.load_pretrained(tmp_path / "fda_ns_s0")
    assert m.config.function_words == "en-nospatial"
    the, above = m.tokenizer.token_to_id("the"), m.tokenizer.token_to_id("above")
    assert bool(m.fw_table[the]) and not bool(m.fw_table[above])
    base = zoo.load_pretrained(tmp_path / "fda_s0")
    assert bool(base.fw_table[above])  # the default 'en' list has it

    # fine-tuning protocol: both arms start from that no-FDA run; the FDA arm gets FDA added to it
    ft = argparse.Namespace(**{**vars(args), "fda_args": {}, "init_from": str(tmp_path)})
    meta = mod.train_one(True, 0, ft, tmp_path / "ft" / "fda_s0")
    assert meta["init_from"] == str(tmp_path.resolve())
    assert json.loads((tmp_path / "ft" / "fda_s0" / "config.json").read_text())["config"]["fda"] is True


def test_a_run_from_another_init_is_not_reused(bench, monkeypatch, tmp_path):
    _trained_run(tmp_path / "fda_s0", steps=2000, batch_size=64, itm_weight=2.0)
    with pytest.raises(SystemExit, match=r"init_from: trained None, asked '.*base'"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--arms", "fda", "--phase", "train",
              "--init-from", str(tmp_path / "base"))


def test_a_seed_given_twice_counts_once_in_the_means(bench, monkeypatch, tmp_path):
    """--seeds 0 0 1 evaluates seed 0 once: the means over seeds weigh each seed alike, and the relative drop
    (no FDA minus FDA, over no FDA) comes from those means."""
    asr = {(False, 0): 20.0, (True, 0): 30.0, (False, 1): 40.0, (True, 1): 10.0}
    for fda in (False, True):
        for seed in (0, 1):
            folder = tmp_path / f"{'fda' if fda else 'nofda'}_s{seed}"
            folder.mkdir()
            (folder / "bench_meta.json").write_text(json.dumps({"fda": fda, "seed": seed, "steps": 2000, "batch_size": 64,
                                                                "itm_weight": 2.0, "decay_exempt": "no_weight_decay"}))

    def fake_eval(folder, args, eps, source=None):
        fda, seed = folder.name.startswith("fda"), int(folder.name[-1])
        a = {"mean": asr[(fda, seed)]}
        return {"clean": {"itm_r1": 90.0, "itc_r1": 80.0, "itm_only_r1": 70.0}, "asr": {"image_pgd": a},
                "asr_itm_only": {"image_pgd": a}, "asr_itc": {"image_pgd": a}}

    monkeypatch.setattr(bench, "evaluate_one", fake_eval)
    _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "0", "1", "--phase", "eval", "--results", str(tmp_path / "out"))
    out = json.loads((tmp_path / "out" / "bench_fda.json").read_text())
    assert sorted((r["fda"], r["seed"]) for r in out["runs"]) == [(False, 0), (False, 1), (True, 0), (True, 1)]
    e = out["by_eps"]["4"]
    # by hand: no FDA (20 + 40) / 2 = 30, FDA (30 + 10) / 2 = 20; drop (30 - 20) / 30 = +33.3%
    assert e["summary"]["nofda"]["asr"]["image_pgd"] == pytest.approx(30.0)
    assert e["summary"]["fda"]["asr"]["image_pgd"] == pytest.approx(20.0)
    assert e["asr_relative_drop_pct"]["image_pgd"] == pytest.approx(100 / 3)
    assert "image_pgd +33.3%" in (tmp_path / "out" / "bench_fda.md").read_text()


def test_transfer_attacks_come_from_the_next_seeds_no_fda_run(bench, monkeypatch, tmp_path, capsys):
    """--transfer: both arms of seed s are attacked with examples crafted on the next seed's no-FDA run (cyclically;
    never a model of seed s), cached apart from the white-box results, and reported under <results>/transfer by
    default; one seed is refused."""
    for fda in (False, True):
        for seed in (0, 1, 2):
            folder = tmp_path / f"{'fda' if fda else 'nofda'}_s{seed}"
            folder.mkdir()
            (folder / "bench_meta.json").write_text(json.dumps({"fda": fda, "seed": seed, "steps": 2000, "batch_size": 64,
                                                                "itm_weight": 2.0, "decay_exempt": "no_weight_decay"}))
    seen = []

    def fake_eval(folder, args, eps, source=None):
        seen.append((folder.name, source.name if source is not None else None))
        a = {"mean": 10.0}
        return {"clean": {"itm_r1": 90.0, "itc_r1": 80.0, "itm_only_r1": 70.0}, "asr": {"image_pgd": a},
                "asr_itm_only": {"image_pgd": a}, "asr_itc": {"image_pgd": a}}

    monkeypatch.setattr(bench, "evaluate_one", fake_eval)
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "1", "2", "--phase", "eval", "--transfer",
          "--results", str(tmp_path / "results"))
    assert sorted(seen) == [("fda_s0", "nofda_s1"), ("fda_s1", "nofda_s2"), ("fda_s2", "nofda_s0"),
                            ("nofda_s0", "nofda_s1"), ("nofda_s1", "nofda_s2"), ("nofda_s2", "nofda_s0")]
    out = json.loads((tmp_path / "results" / "transfer" / "bench_fda.json").read_text())
    assert {(r["seed"], r["attack_source"]) for r in out["runs"]} == {(0, "nofda_s1"), (1, "nofda_s2"), (2, "nofda_s0")}
    assert "Transfer attacks" in (tmp_path / "results" / "transfer" / "bench_fda.md").read_text()
    assert (tmp_path / "fda_s0" / "eval_eps4_n256_k16_pgd10_t1_from-nofda_s1.json").is_file()
    assert not (tmp_path / "results" / "bench_fda.json").exists()  # the white-box tables are not touched
    with pytest.raises(SystemExit):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "--phase", "eval", "--transfer")
    assert "give 2 or more --seeds" in capsys.readouterr().err


def _trained_arms(work: Path, seeds, **over):
    for fda in (False, True):
        for seed in seeds:
            meta = {"fda": fda, "seed": seed, "steps": 2000, "batch_size": 64, "itm_weight": 2.0,
                    "decay_exempt": "no_weight_decay", **over.get(f"{'fda' if fda else 'nofda'}_s{seed}", {})}
            (work / f"{'fda' if fda else 'nofda'}_s{seed}").mkdir(parents=True)
            (work / f"{'fda' if fda else 'nofda'}_s{seed}" / "bench_meta.json").write_text(json.dumps(meta))


def test_transfer_refuses_a_source_trained_with_other_settings_before_any_evaluation(bench, monkeypatch, tmp_path):
    """--transfer: seed 0's arms are attacked from nofda_s1; a nofda_s1 trained with other settings was used (and its
    results cached under eval_..._from-nofda_s1.json, reused after nofda_s1 is retrained) before the loop reached
    seed 1 and found it mismatched."""
    _trained_arms(tmp_path, (0, 1), nofda_s1={"steps": 600})
    with pytest.raises(SystemExit, match=r"nofda_s1 holds a run trained with other settings \(steps: trained 600"):
        _main(bench, monkeypatch, "--work", str(tmp_path), "--seeds", "0", "1", "--phase", "eval", "--transfer",
              "--results", str(tmp_path / "results"))  # bench's evaluate_one fails the test if it is called
    assert not list(tmp_path.rglob("eval_*.json"))


def test_transfer_results_never_replace_the_white_box_tables_of_the_results_folder(bench, monkeypatch, tmp_path):
    """--transfer writes to <results>/transfer for any --results (the README's fine-tuning protocol passes
    --results scripts/results/vlm/finetune_current_recipe and reports the transfer tables under .../transfer/), not
    over the white-box bench_fda.json / .md already in <results>; a folder already named transfer is kept."""
    _trained_arms(tmp_path / "work", (0, 1))

    def fake_eval(folder, args, eps, source=None):
        a = {"mean": 10.0}
        return {"clean": {"itm_r1": 90.0, "itc_r1": 80.0, "itm_only_r1": 70.0}, "asr": {"image_pgd": a},
                "asr_itm_only": {"image_pgd": a}, "asr_itc": {"image_pgd": a}}

    monkeypatch.setattr(bench, "evaluate_one", fake_eval)
    results = tmp_path / "finetune"
    results.mkdir()
    (results / "bench_fda.json").write_text("white-box\n")
    _main(bench, monkeypatch, "--work", str(tmp_path / "work"), "--seeds", "0", "1", "--phase", "eval", "--transfer",
          "--results", str(results))
    assert (results / "bench_fda.json").read_text() == "white-box\n"
    assert json.loads((results / "transfer" / "bench_fda.json").read_text())["settings"]["transfer"] is True
    _main(bench, monkeypatch, "--work", str(tmp_path / "work"), "--seeds", "0", "1", "--phase", "eval", "--transfer",
          "--results", str(results / "transfer"))
    assert not (results / "transfer" / "transfer").exists()


def test_the_relative_asr_drop_is_undefined_where_no_attack_succeeded_without_fda(load_script):
    """(ASR no FDA - ASR FDA) / ASR no FDA: an ASR of 0 without FDA divided by 1e-9 (a drop of -1e11 %) instead of
    saying the ratio has no value."""
    mod = load_script("bench_fda")

    def row(fda, pgd, text):
        asr = {"pgd": {"mean": pgd}, "text": {"mean": text}}
        return {"fda": fda, "clean": {"itm_r1": 90.0, "itc_r1": 85.0, "itm_only_r1": 80.0},
                "asr": asr, "asr_itm_only": asr, "asr_itc": asr}

    rows = [row(False, 20.0, 0.0), row(False, 30.0, 0.0), row(True, 20.0, 5.0), row(True, 25.0, 0.0)]
    _, rel, rel_itm_only = mod.summarize(rows)
    assert rel["pgd"] == pytest.approx((25.0 - 22.5) / 25.0 * 100)  # means over seeds, then the ratio
    assert rel["text"] is None and rel_itm_only["text"] is None
    assert mod._pct(None).startswith("undefined") and mod._pct(10.0) == "+10.0%"
