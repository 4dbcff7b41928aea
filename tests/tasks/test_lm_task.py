"""Language modeling end to end through the CLI: fit, export, load, generate, predict, resume,
export from a checkpoint, fine-tune (and its errors), metrics against hand computation."""

import hashlib
import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--model.init_args.model_args", "{dim: 32, n_layers: 2, n_heads: 2, max_seq_len: 64}"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = "the king queen speaks to a fool and his horse in thy house of good night".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return path


def fit_args(corpus, root, steps=4, extra=()):
    return [
        "fit", "--config", "configs/lm/shakespeare_char.yaml",
        f"--data.init_args.train_path={corpus}", "--data.init_args.block_size=32", "--data.init_args.batch_size=4",
        *SMALL, f"--trainer.max_steps={steps}", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", *extra,
    ]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        main(fit_args(corpus, root))
    finally:
        os.chdir(cwd)
    run = root / "lightning_logs" / "version_0"
    return run


def test_fit_exports_loadable_model_with_tokenizer(trained):
    m = zoo.load_pretrained(trained / "export")
    assert m.tokenizer is not None and m.tokenizer.vocab_size == 259
    text = m.generate("the king", max_new_tokens=10, temperature=0, eos_id=-1)
    # a text prompt is fed as the training stream holds text: its bytes, no BOS
    ids = m.generate(torch.tensor([m.tokenizer.encode("the king")]), max_new_tokens=10, temperature=0, eos_id=-1)
    assert ids.shape == (1, 8 + 10)
    assert text == m.tokenizer.decode(ids[0, 8:].tolist())


def test_pretrained_may_be_a_runs_checkpoint(trained):
    """`pretrained: <run>.ckpt` fine-tunes from the checkpoint's model as from its export (it was refused: "neither an
    exported model folder nor a model name"); create_model takes it too."""
    from zoo.tasks import LanguageModelTask

    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    ref = zoo.load_pretrained(ckpt)
    want = torch.load(ckpt, weights_only=False)["state_dict"]  # the checkpoint's own tensors
    task = LanguageModelTask(pretrained=str(ckpt))
    got = task.model.state_dict()
    assert set(got) == {k.removeprefix("model.") for k in want}
    assert all(torch.equal(got[k.removeprefix("model.")], v) for k, v in want.items())
    assert task.model.tokenizer is not None and task.model.tokenizer.vocab_size == ref.tokenizer.vocab_size
    meta = ref.pretrained_meta  # the config.json of the checkpoint's export
    created = zoo.create_model(meta["arch"], pretrained=ckpt, **meta["config"])
    assert all(torch.equal(created.state_dict()[k], v) for k, v in got.items())


def test_predict_writes_generations(trained, monkeypatch, tmp_path, corpus):
    monkeypatch.chdir(ROOT)
    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    out = tmp_path / "pred.jsonl"
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([
            "predict", "--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
            "--data.init_args.block_size=32",
            *SMALL, f"--ckpt_path={ckpt}", f"--predict_writer.output={out}", "--predict_writer.echo=false",
            "--data.init_args.prompts=[\"the \", \"a \"]", "--model.init_args.max_new_tokens=5",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        ])
    assert not any("randomly initialized" in str(w.message) for w in caught)  # the checkpoint's weights
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the ", "a "]
    # 5 byte tokens decode to at most 5 characters (invalid UTF-8 bytes become one U+FFFD each)
    assert all(len(r["completion"]) <= 5 for r in rows)
    # the prompts were decoded as one left-padded batch (data.batch_size of them): one prompt per batch samples
    # the same completions (the config's seed_everything, each prompt's generator drawn in order)
    main([
        "predict", "--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
        "--data.init_args.block_size=32", "--data.init_args.batch_size=1",
        *SMALL, f"--ckpt_path={ckpt}", f"--predict_writer.output={tmp_path / 'one.jsonl'}",
        "--predict_writer.echo=false",
        "--data.init_args.prompts=[\"the \", \"a \"]", "--model.init_args.max_new_tokens=5",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ])
    assert [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()] == rows


def test_predict_stopped_part_way_leaves_only_a_partial_file(trained, monkeypatch, tmp_path, corpus):
    """Rows go to <output>.partial and are renamed when predict ends: a run that fails on its second prompt
    left a predictions file holding the first row only, which looked complete; the next run names the partial."""
    from zoo.models.lm import DiffTransformerLM

    monkeypatch.chdir(ROOT)
    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    out = tmp_path / "pred.jsonl"
    args = ["predict", "--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
            "--data.init_args.block_size=32", "--data.init_args.batch_size=1", *SMALL, f"--ckpt_path={ckpt}",
            f"--predict_writer.output={out}", "--predict_writer.echo=false",
            "--data.init_args.prompts=[\"the \", \"a \"]", "--model.init_args.max_new_tokens=3", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false"]
    real, calls = DiffTransformerLM.generate, []

    def second_fails(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")
        return real(self, *a, **kw)

    monkeypatch.setattr(DiffTransformerLM, "generate", second_fails)
    with pytest.raises(RuntimeError, match="stopped"):
        main(args)
    partial = tmp_path / "pred.jsonl.partial"
    assert not out.exists() and [json.loads(x)["prompt"] for x in partial.read_text().splitlines()] == ["the "]
    monkeypatch.setattr(DiffTransformerLM, "generate", real)
    with pytest.raises(FileExistsError, match=r"pred.jsonl.partial exists: the rows of a predict run that stopped"):
        main(args)
    partial.unlink()
    main(args)
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["the ", "a "] and not partial.exists()


def test_predict_output_with_a_tilde_spaces_and_unicode_from_another_folder(trained, monkeypatch, tmp_path, corpus):
    """`--predict_writer.output=~/...` (no shell expands a tilde after `=`; a YAML value neither) goes to the home
    folder: it made a folder named "~" in the working directory. Spaces and non-ASCII names, and a run started
    from another folder with a relative corpus path, work too."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere dir"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    (elsewhere / "données ü.txt").write_bytes(corpus.read_bytes())
    main([
        "predict", "--config", str(ROOT / "configs/lm/shakespeare_char.yaml"), "--data.init_args.train_path=données ü.txt",
        "--data.init_args.block_size=32", *SMALL, f"--ckpt_path={ckpt}",
        "--predict_writer.output=~/my preds/sortie é.jsonl", "--predict_writer.echo=false",
        "--data.init_args.prompts=[\"the \"]", "--model.init_args.max_new_tokens=3",
        f"--trainer.default_root_dir={elsewhere}", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
    ])
    out = home / "my preds" / "sortie é.jsonl"
    assert [json.loads(line)["prompt"] for line in out.read_text(encoding="utf-8").splitlines()] == ["the "]
    assert not (elsewhere / "~").exists()


def test_resume_from_checkpoint_continues_steps(trained, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4
    main(fit_args(corpus, tmp_path, steps=6, extra=[f"--ckpt_path={ckpt}", "--export.enabled=false"]))
    new = next((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
    assert torch.load(new, weights_only=False)["global_step"] == 6


def test_export_command_from_checkpoint(trained, tmp_path):
    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    main(["export", str(ckpt), str(tmp_path / "exp")])
    a, b = zoo.load_pretrained(tmp_path / "exp"), zoo.load_pretrained(trained / "export")
    x = torch.randint(0, 259, (1, 16))
    assert torch.equal(a(x), b(x))  # same weights: both come from the last step
    assert a.tokenizer is not None
    with pytest.raises(SystemExit, match="not found"):
        main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "x")])
    # an occupied folder is refused before the checkpoint is read, and nothing in it changes
    before = _hashes(tmp_path / "exp")
    with pytest.raises(SystemExit, match=r"exp exists and is not empty; .*--overwrite"):
        main(["export", str(ckpt), str(tmp_path / "exp")])
    assert _hashes(tmp_path / "exp") == before
    main(["export", str(ckpt), str(tmp_path / "exp"), "--overwrite"])  # an earlier export is replaced
    assert _hashes(tmp_path / "exp") == before  # (by the same files: same checkpoint)
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    with pytest.raises(SystemExit, match="not written by a zoo task"):
        main(["export", str(tmp_path / "tensor.ckpt"), str(tmp_path / "y")])


def test_export_and_convert_name_an_export_folder_given_as_input(trained, tmp_path):
    """`python -m zoo export <export folder> OUT` said "checkpoint ... not found" of a folder that exists, and
    `python -m zoo convert <export folder> OUT` "model_type=None has no converter": both now say what the folder is."""
    with pytest.raises(SystemExit, match=r"export is a folder, not a checkpoint file.*zoo.load_pretrained"):
        main(["export", str(trained / "export"), str(tmp_path / "a")])
    with pytest.raises(SystemExit, match=r"export is already a zoo export, not a Hugging Face folder.*zoo.load_pretrained"):
        main(["convert", str(trained / "export"), str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def test_finetune_reads_but_never_writes_the_source(trained, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    src = trained / "export"
    before = _hashes(src)
    main([
        "fit", "--config", "configs/lm/finetune.yaml", f"--model.init_args.pretrained={src}",
        f"--data.init_args.train_path={corpus}", "--data.init_args.block_size=32", "--data.init_args.batch_size=4",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ])
    assert _hashes(src) == before
    tuned = zoo.load_pretrained(tmp_path / "lightning_logs" / "version_0" / "export")
    base = zoo.load_pretrained(src)
    assert tuned.config == base.config
    assert not torch.equal(tuned.embed.weight, base.embed.weight)  # it trained


def test_finetune_vocab_mismatch_is_explained(trained, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="tokenizer has 300 tokens but checkpoint .* 259"):
        main([
            "fit", "--config", "configs/lm/finetune.yaml", f"--model.init_args.pretrained={trained / 'export'}",
            f"--data.init_args.train_path={corpus}", "--data.init_args.tokenizer=bpe",
            "--data.init_args.bpe_vocab_size=300", "--data.init_args.block_size=32",
            f"--trainer.default_root_dir={tmp_path}",
        ])


def test_finetune_architecture_mismatch_is_explained(trained, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="attn_type: checkpoint='diff' config='vanilla'"):
        main([
            "fit", "--config", "configs/lm/finetune.yaml", f"--model.init_args.pretrained={trained / 'export'}",
            f"--data.init_args.train_path={corpus}", "--model.init_args.attn_type=vanilla",
            f"--trainer.default_root_dir={tmp_path}",
        ])


def test_finetune_from_an_encoder_export_says_it_is_not_a_language_model(corpus, tmp_path, monkeypatch):
    """A converted BERT / MiniLM (a TextEncoder export) given to an LM config is named as the wrong model
    class, not reported as unknown DiffTransformerLM config fields."""
    from zoo.models.encoder import EncoderConfig, TextEncoder

    enc = TextEncoder(EncoderConfig(vocab_size=259, dim=32, n_layers=1, n_heads=2, mlp_hidden=64, max_seq_len=64))
    folder = zoo.export_model(enc, tmp_path / "encoder")
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="holds a zoo.models.encoder.TextEncoder.*not a language model"):
        main([
            "fit", "--config", "configs/lm/adapt_dex.yaml", f"--model.init_args.pretrained={folder}",
            f"--data.init_args.train_path={corpus}", "--data.init_args.tokenizer=byte", "--data.init_args.block_size=32",
            f"--trainer.default_root_dir={tmp_path}",
        ])


def test_metrics_match_hand_computation():
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16, train_size=64, val_size=64, batch_size=32)
    task = LanguageModelTask(model_args={"dim": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
                             data_info=dm.data_info).eval()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    nll, n, correct = task._loss(batch)
    logits = task.model(batch["input_ids"])
    mask = batch["labels"] != -100
    ref_nll = -torch.log_softmax(logits.double(), -1).gather(-1, batch["labels"].clamp(min=0)[..., None])[..., 0][mask].sum()
    assert torch.allclose(nll.double(), ref_nll, rtol=1e-5)
    assert int(n) == int(mask.sum())
    assert int(correct) == int((logits.argmax(-1)[mask] == batch["labels"][mask]).sum())
    loss = nll / n
    assert math.isclose(float(loss), float(F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())), rel_tol=1e-5)


def _quiet_trainer(**kw):
    import tempfile

    import lightning as L

    # a run folder of its own: test() writes test_metrics.json there (Lightning's default is the working directory)
    kw.setdefault("default_root_dir", tempfile.mkdtemp(prefix="zoo-lm-test-"))
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, **kw)


def test_test_bits_per_byte_uses_the_test_splits_bytes_per_token(corpus, tmp_path):
    """bpb = loss / (ln 2 * bytes per token of the reported split): a digits test file packs ~1 byte
    per BPE token (trained on words), the word validation split far more."""
    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    rng = random.Random(1)
    digits = "\n".join("".join(rng.choice("0123456789") for _ in range(60)) for _ in range(40))
    test_file = tmp_path / "digits.txt"
    test_file.write_text(digits)
    dm = TextDataModule(str(corpus), test_path=str(test_file), block_size=16, batch_size=8, tokenizer="bpe",
                        bpe_vocab_size=300)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
                             data_info=dm.data_info)
    res = _quiet_trainer(limit_test_batches=2).test(task, dm, verbose=False)[0]
    # independent reference: UTF-8 bytes of the test text over its token count
    test_bpt = len(digits.encode("utf-8")) / len(dm.tokenizer.encode(digits))
    val_bpt = dm.val_bytes_per_token
    assert abs(test_bpt - val_bpt) > 0.5  # the two splits really differ
    assert res["test/bpb"] == pytest.approx(res["test/loss"] / (math.log(2) * test_bpt), rel=1e-5)


def test_perplexity_is_exp_of_the_loss_also_for_a_bad_model(corpus):
    """ppl = exp(mean nll): for a model with scaled-up logits (loss far above 30 nats) too; it was capped at
    exp(30) = 1.07e13 without a word, reading as a finite, merely bad perplexity."""
    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    dm = TextDataModule(str(corpus), block_size=16, batch_size=8)
    torch.manual_seed(0)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
                             data_info=dm.data_info)
    res = _quiet_trainer(limit_test_batches=2).test(task, dm, verbose=False)[0]
    assert res["test/ppl"] == pytest.approx(math.exp(res["test/loss"]), rel=1e-5)
    with torch.no_grad():
        task.model.norm.weight.mul_(250.0)  # the final norm's scale multiplies every logit (tied output head)
    res = _quiet_trainer(limit_test_batches=2).test(task, dm, verbose=False)[0]
    assert 35 < res["test/loss"] < 85  # exp stays finite in float32
    assert res["test/ppl"] == pytest.approx(math.exp(res["test/loss"]), rel=1e-4)


def test_bits_per_byte_divides_by_the_bytes_of_the_scored_tokens(corpus, tmp_path):
    """bpb = total nats / (ln 2 * UTF-8 bytes of the tokens scored). With limit_test_batches the scored tokens are
    the first blocks (digits, ~1 byte per BPE token), not the whole split (digits then prose, ~2 bytes per
    token): dividing by the split's average read 4.15 bits per byte where the scored text has 8.22."""
    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    rng = random.Random(0)
    words = "the king queen speaks to a fool and his horse in thy house of good night".split()
    digits = "\n".join("".join(rng.choice("0123456789") for _ in range(60)) for _ in range(20))
    prose = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(60))
    test_file = tmp_path / "mixed.txt"
    test_file.write_text(digits + "\n" + prose)
    dm = TextDataModule(str(corpus), test_path=str(test_file), block_size=16, batch_size=8, tokenizer="bpe",
                        bpe_vocab_size=300)
    torch.manual_seed(0)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
                             data_info=dm.data_info)
    res = _quiet_trainer(limit_test_batches=3).test(task, dm, verbose=False)[0]
    nll, nbytes = _naive_nll_and_bytes(task, dm, 3)
    assert abs(nbytes / (3 * 8 * 16) - dm.bytes_per_token("test")) > 0.5  # the scored part really differs
    assert res["test/bpb"] == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-5)


def _naive_nll_and_bytes(task, dm, n_batches: int) -> tuple[float, int]:
    """The first ``n_batches`` test batches by hand: the summed NLL and the scored tokens' UTF-8 bytes, each token's
    from its decoded text."""
    tok = dm.tokenizer
    specials = {tok.pad_id, tok.bos_id, tok.eos_id}
    nll, nbytes = 0.0, 0
    task.model.eval()
    with torch.no_grad():
        for _, batch in zip(range(n_batches), dm.test_dataloader()):
            logits = task.model(batch["input_ids"]).float()
            nll += F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum").item()
            nbytes += sum(len(tok.decode([t]).encode("utf-8")) for t in batch["labels"].flatten().tolist()
                          if t not in specials)
    return nll, nbytes


def test_scored_bytes_are_summed_without_a_boolean_mask_index(corpus, monkeypatch):
    """The bytes of a step's scored tokens (for bits per byte) are summed in place, labels masked: selecting them
    with a boolean mask made a tensor of data-dependent size, which on a GPU waits for the device every validation and
    test step. The value is the scored tokens' UTF-8 bytes, counted by hand."""
    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    dm = TextDataModule(str(corpus), block_size=16, batch_size=8, tokenizer="bpe", bpe_vocab_size=300)
    torch.manual_seed(0)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
                             data_info=dm.data_info)
    real_getitem, real_step = torch.Tensor.__getitem__, task.test_step

    def getitem(self, idx):
        if torch.is_tensor(idx) and idx.dtype == torch.bool:
            raise AssertionError("a boolean mask index (a device sync on a GPU) in a test step")
        return real_getitem(self, idx)

    def guarded(*args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "__getitem__", getitem)
            return real_step(*args, **kwargs)

    monkeypatch.setattr(task, "test_step", guarded)
    res = _quiet_trainer(limit_test_batches=2).test(task, dm, verbose=False)[0]
    nll, nbytes = _naive_nll_and_bytes(task, dm, 2)
    assert res["test/bpb"] == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-5)


def test_tokenizer_check_sees_the_whole_vocabulary(corpus):
    """Two BPE tokenizers that encode the check's sample alike but map two other tokens to swapped ids
    are different tokenizers (the model's rows would be read for the wrong tokens)."""
    from tokenizers import Tokenizer

    from zoo.data import TextDataModule
    from zoo.data.tokenizers import BPETokenizer
    from zoo.tasks import LanguageModelTask

    a = TextDataModule(str(corpus), block_size=16, batch_size=4, tokenizer="bpe", bpe_vocab_size=280).tokenizer
    spec = json.loads(a.backend.to_str())
    vocab = spec["model"]["vocab"]
    used = set(a.encode("Hello, zoo! 123")) | {a.bos_id, a.eos_id, a.pad_id}
    t1, t2 = [t for t, i in sorted(vocab.items(), key=lambda kv: -kv[1]) if i not in used][:2]
    vocab[t1], vocab[t2] = vocab[t2], vocab[t1]
    b = BPETokenizer(Tokenizer.from_str(json.dumps(spec)))
    # independent evidence: same size and sample, but a token's id differs
    assert b.vocab_size == a.vocab_size and b.encode("Hello, zoo! 123") == a.encode("Hello, zoo! 123")
    assert b.backend.token_to_id(t1) == a.backend.token_to_id(t2) != a.backend.token_to_id(t1)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16,
                                         "vocab_size": a.vocab_size})
    task.model.tokenizer = a
    task._check_tokenizer(BPETokenizer(Tokenizer.from_str(a.backend.to_str())))  # an identical copy passes
    with pytest.raises(ValueError, match="datamodule's tokenizer differs from the checkpoint's tokenizer"):
        task._check_tokenizer(b)


def test_ckpt_path_with_another_tokenizer_is_refused(corpus, tmp_path):
    """--ckpt_path restores the checkpoint's tokenizer after setup: a datamodule whose BPE was trained on
    other text (same vocab size, different merges) must still be refused, not silently evaluated."""
    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    rng = random.Random(2)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(" ".join(rng.choice(["xylophone", "quartz", "zephyr", "jumbo", "vex"])
                                        for _ in range(12)) for _ in range(300)))
    kw = dict(block_size=16, batch_size=4, tokenizer="bpe", bpe_vocab_size=280)
    dm_a, dm_b = TextDataModule(str(corpus), **kw), TextDataModule(str(other), **kw)
    sample = "the king speaks"
    # independent evidence the two tokenizers differ while their vocab sizes agree
    assert dm_a.tokenizer.vocab_size == dm_b.tokenizer.vocab_size
    assert dm_a.tokenizer.encode(sample) != dm_b.tokenizer.encode(sample)
    margs = {"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}
    trainer = _quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(LanguageModelTask(model_args=margs, data_info=dm_a.data_info), dm_a)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    task_b = LanguageModelTask(model_args=margs, data_info=dm_b.data_info)
    with pytest.raises(ValueError, match="datamodule's tokenizer differs from the checkpoint's tokenizer"):
        _quiet_trainer(limit_test_batches=1).test(task_b, dm_b, ckpt_path=str(ckpt), verbose=False)
    # the same tokenizer (retrained on the same text) restores and evaluates with the checkpoint's
    dm_a2 = TextDataModule(str(corpus), **kw)
    task_a = LanguageModelTask(model_args=margs, data_info=dm_a2.data_info)
    _quiet_trainer(limit_test_batches=1).test(task_a, dm_a2, ckpt_path=str(ckpt), verbose=False)
    assert task_a.model.tokenizer.encode(sample) == dm_a.tokenizer.encode(sample)


def test_evaluating_first_then_training_works(tmp_path):
    """validate / test run under torch.inference_mode: neither the RoPE tables they build nor the metric
    states they reset may stop a later fit (a Lightning habit: trainer.validate(...) then trainer.fit(...))."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    m = zoo.create_model("lm-diff-tiny", dim=32, n_layers=1, n_heads=2, max_seq_len=40)
    ids = torch.randint(0, 200, (2, 12))
    with torch.inference_mode():
        m(ids)
    m(ids).float().sum().backward()  # the tables built under inference mode are not reused for backward
    assert any(p.grad is not None for p in m.parameters())

    dm = RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16, train_size=64, val_size=64, batch_size=32)
    task = LanguageModelTask(model_args={"dim": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
                             data_info=dm.data_info)
    first = _quiet_trainer(limit_val_batches=1).validate(task, dm, verbose=False)[0]["val/loss"]
    _quiet_trainer(max_steps=2, limit_val_batches=1, val_check_interval=1, num_sanity_val_steps=1).fit(task, dm)
    again = _quiet_trainer(limit_val_batches=1).validate(task, dm, verbose=False)[0]["val/loss"]
    assert math.isfinite(first) and math.isfinite(again) and again != first


def _own_model_configs():
    """LM configs that build their model (not from a pretrained folder, whose max_seq_len the export decides)."""
    import yaml

    out = []
    for path in sorted((ROOT / "configs" / "lm").glob("*.yaml")):
        args = yaml.safe_load(path.read_text())["model"].get("init_args", {})
        if not args.get("pretrained"):
            out.append((path.name, args))
    return out


@pytest.mark.parametrize("name, args", _own_model_configs(), ids=[n for n, _ in _own_model_configs()])
def test_configs_leave_room_for_a_prompt(name, args):
    """A config's predict command must be able to run: max_new_tokens below the model's max_seq_len."""
    import inspect

    from zoo.tasks import LanguageModelTask

    limit = (args.get("model_args") or {}).get("max_seq_len") or zoo.create_model(args["arch"]).config.max_seq_len
    default = inspect.signature(LanguageModelTask.__init__).parameters["max_new_tokens"].default
    new = args.get("max_new_tokens", default)
    assert new < limit, f"{name}: max_new_tokens {new} >= max_seq_len {limit}"


def test_predict_refuses_max_new_tokens_beyond_the_window(trained, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    # 64 new tokens still leave room for a 1-token prompt (the last new token is never fed back: max_seq_len + 1)
    with pytest.raises(ValueError, match=r"max_new_tokens 65 leaves no room .* max_seq_len 64.*--model.init_args.max_new_tokens"):
        main(["predict", "--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
              "--data.init_args.block_size=32", *SMALL, f"--ckpt_path={ckpt}", "--model.init_args.max_new_tokens=65",
              '--data.init_args.prompts=["the"]',
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])


def test_predict_checks_every_prompt_before_writing_any(trained, corpus, tmp_path, monkeypatch):
    """A prompt too long for max_seq_len + 1 - max_new_tokens (64 + 1 - 40 = 25 byte tokens: the last new token is
    never fed back) is refused before the first generation, naming it; it used to fail part-way, after the earlier
    prompts were written."""
    monkeypatch.chdir(ROOT)
    ckpt = next((trained / "checkpoints").glob("*.ckpt"))
    long = "x" * 30  # 30 byte tokens
    with pytest.raises(ValueError, match=r"1 of 2 prompts do not fit .* prompt 1 \('xxx.*has 30 tokens, at most 25 fit"):
        main(["predict", "--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
              "--data.init_args.block_size=32", *SMALL, f"--ckpt_path={ckpt}", "--model.init_args.max_new_tokens=40",
              f'--data.init_args.prompts=["the", "{long}"]',
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert not list(tmp_path.rglob("predictions.jsonl*"))  # nor its .partial


def test_a_run_bounded_by_time_needs_a_constant_schedule(tmp_path):
    """max_epochs=-1 with max_time: the run length is unknown; a constant schedule trains, cosine says why not."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16, train_size=64, val_size=64, batch_size=32)
    args = dict(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32}, data_info=dm.data_info)
    task = LanguageModelTask(scheduler="constant", **args)
    trainer = _quiet_trainer(max_epochs=-1, max_time={"seconds": 2}, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(task, dm)
    assert trainer.global_step > 0
    with pytest.raises(ValueError, match="cosine schedule needs the run's length.*scheduler: constant"):
        _quiet_trainer(max_epochs=-1, max_time={"seconds": 2}, limit_val_batches=0).fit(LanguageModelTask(**args), dm)


def test_predicting_on_synthetic_recall_data_says_what_to_do():
    from zoo.data import RetrievalDataModule

    with pytest.raises(ValueError, match="no prompts to complete: test the model"):
        RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16).predict_dataloader()


def test_predicting_on_training_blocks_says_predict_reads_prompts():
    """`trainer.predict(task, dataloaders=dm.val_dataloader())` failed with a bare KeyError 'prompt'."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16, val_size=4, batch_size=2)
    dm.setup("validate")
    task = LanguageModelTask(arch="lm-diff-tiny", data_info=dm.data_info)
    batch = next(iter(dm.val_dataloader()))
    with pytest.raises(ValueError, match="predict completes prompts: it reads the batches of the datamodule's "
                                         "predict_dataloader"):
        task.predict_step(batch, 0)


def test_eval_sampler_follows_the_trainer_and_names_a_split_too_small():
    """Only a trainer on several processes gets the unrepeated sampler (not a process group left from
    elsewhere); a split with fewer items than processes is an error that names it."""
    from types import SimpleNamespace

    from zoo.data.samplers import eval_sampler

    data = list(range(5))
    assert eval_sampler(data, None, "val") is None
    assert eval_sampler(data, SimpleNamespace(world_size=1, global_rank=0), "val") is None
    s = eval_sampler(data, SimpleNamespace(world_size=2, global_rank=1), "val")
    assert list(s) == [1, 3]  # rank 1's share, nothing repeated
    with pytest.raises(ValueError, match="the val split has 1 item\\(s\\) for 2 processes"):
        eval_sampler([0], SimpleNamespace(world_size=2, global_rank=0), "val")


def test_finetune_a_model_whose_embedding_is_padded_beyond_its_tokenizer(corpus, tmp_path):
    """Converted Qwen2 / many Llama checkpoints have more embedding rows than tokenizer entries (Qwen2:
    151936 vs 151665). Fine-tuning on the export's own tokenizer must work; another, larger or unknown
    tokenizer is still refused."""
    from zoo.data import TextDataModule
    from zoo.data.tokenizers import ByteTokenizer
    from zoo.tasks import LanguageModelTask

    torch.manual_seed(0)
    base = zoo.create_model("lm-vanilla-tiny", vocab_size=264, dim=16, n_layers=1, n_heads=2, max_seq_len=32)
    base.tokenizer = ByteTokenizer()  # 259 tokens for 264 rows
    zoo.export_model(base, tmp_path / "padded")
    dm = TextDataModule(str(corpus), block_size=16, batch_size=4, tokenizer=str(tmp_path / "padded"))
    assert dm.data_info["vocab_size"] == 259
    task = LanguageModelTask(pretrained=str(tmp_path / "padded"), data_info=dm.data_info)
    assert task.model.config.vocab_size == 264
    _quiet_trainer(max_steps=1, limit_val_batches=1).fit(task, dm)
    assert task.model.tokenizer.vocab_size == 259
    # a tokenizer that does not fit the rows, or a checkpoint without its own tokenizer: refused as before
    with pytest.raises(ValueError, match="tokenizer has 300 tokens but checkpoint .* 264"):
        LanguageModelTask(pretrained=str(tmp_path / "padded"), data_info={**dm.data_info, "vocab_size": 300})
    base.tokenizer = None
    zoo.export_model(base, tmp_path / "bare")
    with pytest.raises(ValueError, match="tokenizer has 259 tokens but checkpoint .* 264"):
        LanguageModelTask(pretrained=str(tmp_path / "bare"), data_info=dm.data_info)


def test_eval_metrics_under_bf16_true_are_summed_in_full_precision(tmp_path):
    """precision "bf16-true" runs the steps with bf16 as the default dtype and casts the module to bf16; the
    evaluation sums (nll, token count) must not become bf16 running sums (bf16 holds integers exactly only
    up to 256): val/loss equals a hand loop over the same batches of the same bf16 model."""
    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    rng = random.Random(0)
    path = tmp_path / "c.txt"
    path.write_text("".join(rng.choice("abcdefgh \n") for _ in range(6000)))
    torch.manual_seed(0)
    dm = TextDataModule(str(path), block_size=16, batch_size=8, val_fraction=0.5)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
                             data_info=dm.data_info)
    trainer = _quiet_trainer(precision="bf16-true")
    first = trainer.validate(task, dm, verbose=False)[0]
    again = trainer.validate(task, dm, verbose=False)[0]  # metrics that already exist, module cast again
    nll, n = 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            logits = task.model(batch["input_ids"]).float()
            nll += F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum").item()
            n += batch["labels"].numel()
    assert n > 2048
    for res in (first, again):
        assert res["val/loss"] == pytest.approx(nll / n, rel=1e-5)
        assert res["val/bpb"] == pytest.approx(nll / n / math.log(2), rel=1e-5)  # one byte per byte token


@pytest.mark.parametrize("n_items", [6, 10])
def test_gradient_accumulation_weighs_every_token_of_the_window_alike(n_items):
    """With accumulate_grad_batches=2 each optimizer step's gradient is that of the mean token loss over the
    batches it accumulated (as one batch of all of them would give): batches of 4 then 2 items (6) weigh each
    token alike, and an epoch's last, incomplete window (10: 4 + 4, then 2 alone) is not divided by 2."""
    import lightning as L
    from torch.utils.data import DataLoader

    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=16, n_pairs=2, n_keys=8, n_values=8, train_size=n_items, val_size=8, batch_size=4)
    dm.setup("fit")
    items = [dm.train_dataloader().dataset[i] for i in range(n_items)]
    torch.manual_seed(0)
    args = dict(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}, data_info=dm.data_info)
    task = LanguageModelTask(lr=0.0, weight_decay=0.0, warmup_steps=0, scheduler="constant", **args)
    ref = LanguageModelTask(**args)
    ref.load_state_dict(task.state_dict())  # lr 0: the weights stay these

    grads = []

    class Grab(L.Callback):  # after the step the window's gradients are still there (zeroed when the next starts)
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx % 2 == 1 or batch_idx == trainer.num_training_batches - 1:
                grads.append({k: p.grad.clone() for k, p in pl_module.named_parameters() if p.grad is not None})

    _quiet_trainer(max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[Grab()]).fit(
        task, train_dataloaders=DataLoader(items, batch_size=4, shuffle=False))
    windows = [items[:8], items[8:]] if n_items == 10 else [items]
    assert len(grads) == len(windows)
    for got, window in zip(grads, windows):  # reference: one batch of the whole window, mean token loss
        ref.zero_grad()
        ids = torch.stack([it["input_ids"] for it in window])
        labels = torch.stack([it["labels"] for it in window])
        F.cross_entropy(ref.model(ids).flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
        for k, p in ref.named_parameters():
            torch.testing.assert_close(got[k], p.grad, rtol=1e-4, atol=1e-7, msg=k)


def test_callbacks_and_clipping_see_the_windows_final_gradients():
    """Under accumulation the task rescales the window's gradients by its token count. Lightning calls callbacks'
    on_before_optimizer_step (a gradient-norm logger) before the module's hook, where the rescale was: they saw
    gradients off by the ratio of the unit to the scored tokens (4x here). The callback now sees the gradient of the
    window's mean token loss, and gradient clipping clips that one (a naive one-batch reference, clipped by hand)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=16, n_pairs=2, n_keys=8, n_values=8, train_size=8, val_size=8, batch_size=4)
    dm.setup("fit")
    items = [dm.train_dataloader().dataset[i] for i in range(8)]
    torch.manual_seed(0)
    args = dict(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}, data_info=dm.data_info)
    task = LanguageModelTask(lr=0.0, weight_decay=0.0, warmup_steps=0, scheduler="constant", **args)
    ref = LanguageModelTask(**args)
    ref.load_state_dict(task.state_dict())
    seen = {}

    class Grab(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen["before"] = {k: p.grad.clone() for k, p in pl_module.named_parameters() if p.grad is not None}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["after"] = {k: p.grad.clone() for k, p in pl_module.named_parameters() if p.grad is not None}

    clip = 0.5
    _quiet_trainer(max_steps=1, accumulate_grad_batches=2, limit_val_batches=0, gradient_clip_val=clip,
                   callbacks=[Grab()]).fit(task, train_dataloaders=DataLoader(items, batch_size=4, shuffle=False))
    ids = torch.stack([it["input_ids"] for it in items])
    labels = torch.stack([it["labels"] for it in items])
    F.cross_entropy(ref.model(ids).flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
    want = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in want.values()])))
    assert norm > clip  # the clip acts
    for k, g in want.items():
        torch.testing.assert_close(seen["before"][k], g, rtol=1e-4, atol=1e-7, msg=k)
        torch.testing.assert_close(seen["after"][k], g * (clip / (norm + 1e-6)), rtol=1e-4, atol=1e-7, msg=k)


def test_test_writes_its_metrics_to_the_run_folder(corpus, tmp_path):
    """`zoo test` on a language model wrote no test_metrics.json, which the other domains write into the run folder
    (README: a second test there writes test_metrics_1.json). Reference: cross-entropy over the same test batches."""
    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    dm = TextDataModule(str(corpus), block_size=16, batch_size=8, tokenizer="byte")
    torch.manual_seed(0)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
                             data_info=dm.data_info)
    trainer = _quiet_trainer(limit_test_batches=2, default_root_dir=tmp_path)
    trainer.test(task, dm, verbose=False)
    got = json.loads((tmp_path / "test_metrics.json").read_text())
    assert set(got) == {"loss", "ppl", "bpb"}
    loader = iter(dm.test_dataloader())
    nll = n = 0.0
    with torch.no_grad():
        for _ in range(2):
            b = next(loader)
            logits = task.model(b["input_ids"])
            nll += float(F.cross_entropy(logits.flatten(0, 1).double(), b["labels"].flatten(), reduction="sum"))
            n += int((b["labels"] != -100).sum())
    assert got["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert got["bpb"] == pytest.approx(nll / n / math.log(2), rel=1e-5)  # byte tokens: one byte each
    trainer.test(task, dm, verbose=False)  # a second test into the folder: beside the first file, never over it
    assert json.loads((tmp_path / "test_metrics_1.json").read_text())["loss"] == pytest.approx(got["loss"])
    assert json.loads((tmp_path / "test_metrics.json").read_text()) == got


def test_a_float64_models_loss_is_computed_in_float64():
    """Under '64-true' the loss (and so every gradient) went through float32 logits: train / val losses matched
    '32-true' digit for digit. Reference: cross-entropy of the float64 logits, written out."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16, train_size=32, val_size=32, batch_size=8)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
                             data_info=dm.data_info).double().eval()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    nll, n, _ = task._loss(batch)
    assert nll.dtype == torch.float64
    with torch.no_grad():
        logits = task.model(batch["input_ids"])
    mask = batch["labels"] != -100
    ref = -torch.log_softmax(logits, -1).gather(-1, batch["labels"].clamp(min=0)[..., None])[..., 0][mask].sum()
    assert abs(float(nll) - float(ref)) <= 1e-10 * abs(float(ref))


def test_zoo_fit_resumed_from_an_epoch_end_checkpoint_matches_the_uninterrupted_run(corpus, tmp_path, monkeypatch):
    """`zoo fit --ckpt_path <epoch-end checkpoint>` goes on as the run that was never stopped: same shuffle for the
    next epoch and same dropout masks (Lightning saves no random states; the resume differed by ~7e-3).
    Reference: the exported weights of the uninterrupted 2-epoch run."""
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)

    def fit(name, epochs, extra=()):
        main(["fit", "--config", "configs/lm/shakespeare_char.yaml", f"--data.init_args.train_path={corpus}",
              "--data.init_args.block_size=32", "--data.init_args.batch_size=4",
              "--model.init_args.model_args", "{dim: 32, n_layers: 2, n_heads: 2, max_seq_len: 64, dropout: 0.2}",
              "--model.init_args.scheduler=constant", "--model.init_args.warmup_steps=2", "--trainer.max_steps=-1",
              f"--trainer.max_epochs={epochs}", "--trainer.limit_train_batches=3", "--trainer.val_check_interval=1.0",
              "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path / name}",
              "--trainer.enable_progress_bar=false", *extra])
        return tmp_path / name / "lightning_logs"

    whole = load_file(fit("whole", 2) / "version_0" / "export" / "model.safetensors")
    ckpt = next((fit("part", 1) / "version_0" / "checkpoints").glob("epoch=0-*.ckpt"))
    torch.manual_seed(123)  # what the stopped process left behind does not matter
    resumed = load_file(fit("part", 2, [f"--ckpt_path={ckpt}"]) / "version_1" / "export" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), (k, (whole[k] - resumed[k]).abs().max())


def test_a_fit_stopped_mid_window_leaves_no_token_count_to_the_next_fit():
    """With accumulation the task counts the window's scored tokens until the optimizer step; a fit interrupted between
    two accumulated batches left its count, which scaled the first step of a later fit of the same task."""
    import lightning as L
    from torch.utils.data import DataLoader

    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=16, n_pairs=2, n_keys=8, n_values=8, train_size=8, val_size=8, batch_size=4)
    dm.setup("fit")
    items = [dm.train_dataloader().dataset[i] for i in range(8)]
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
                             data_info=dm.data_info)

    class Interrupt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            raise RuntimeError("stopped")  # after the first of two accumulated batches: no optimizer step yet

    with pytest.raises(RuntimeError, match="stopped"):
        _quiet_trainer(max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[Interrupt()]).fit(
            task, train_dataloaders=DataLoader(items, batch_size=4))
    assert torch.is_tensor(task._window_tokens) and int(task._window_tokens) > 0  # the interrupted window's count
    seen = []

    class Grab(L.Callback):  # the count after the window's last backward, before the step divides by it
        def on_after_backward(self, trainer, pl_module):
            if trainer.fit_loop.epoch_loop.batch_progress.current.ready % 2 == 0:
                seen.append(int(pl_module._window_tokens) if torch.is_tensor(pl_module._window_tokens) else 0)

    _quiet_trainer(max_steps=1, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[Grab()]).fit(
        task, train_dataloaders=DataLoader(items, batch_size=4))
    n = sum(int((it["labels"] != -100).sum()) for it in items)  # the new fit's one window: all 8 items
    assert seen == [n]


def test_load_from_checkpoint_merges_model_args_over_the_saved_ones(tmp_path):
    """Task.load_from_checkpoint(ckpt, model_args={"dropout": 0.1}) changes that key only: Lightning replaced the whole
    saved dict, so the architecture the checkpoint was trained with (dim, n_layers...) fell back to the arch's defaults
    and the weights no longer fit. Reference: the hyperparameters and weights stored in the checkpoint file."""
    import io

    from torch.utils.data import DataLoader

    from zoo.tasks import LanguageModelTask

    saved_args = {"dim": 48, "n_layers": 3, "n_heads": 2, "max_seq_len": 32, "vocab_size": 300, "dropout": 0.0}
    torch.manual_seed(0)
    task = LanguageModelTask(model_args=saved_args, warmup_steps=1)
    items = [{"input_ids": torch.randint(0, 300, (16,)), "labels": torch.randint(0, 300, (16,))} for _ in range(4)]
    trainer = _quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=DataLoader(items, batch_size=4))
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["hyper_parameters"]["model_args"] == saved_args
    default = zoo.create_model("lm-diff-tiny").config
    assert (default.dim, default.n_layers) != (48, 3)  # the saved architecture is not the arch's default

    for source in (ckpt, str(ckpt), io.BytesIO(ckpt.read_bytes())):
        loaded = LanguageModelTask.load_from_checkpoint(source, model_args={"dropout": 0.1})
        config = loaded.model.config
        for key, value in saved_args.items():
            assert getattr(config, key) == (0.1 if key == "dropout" else value), key
        assert loaded.hparams.model_args == {**saved_args, "dropout": 0.1}
        state = loaded.state_dict()
        assert set(state) == set(stored["state_dict"])
        assert all(torch.equal(state[k], stored["state_dict"][k]) for k in state)
    # with an hparams_file (a run's hparams.yaml), its model_args are the saved ones the given keys are merged over
    import yaml

    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(yaml.safe_dump({"model_args": saved_args}))
    loaded = LanguageModelTask.load_from_checkpoint(ckpt, hparams_file=hparams, model_args={"dropout": 0.1})
    assert loaded.hparams.model_args == {**saved_args, "dropout": 0.1} and loaded.model.config.dropout == 0.1


def test_retrieval_test_metrics_are_named_by_length_only_when_test_seq_lens_is_set():
    """README: val and test report `acc` (configs/lm/tiny.yaml's `test/acc`, as its `val/acc`); `test/len<L>/...`
    names the lengths a config lists in data.test_seq_lens. Without test_seq_lens the single test loader read
    `test/len32/acc`."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    def keys(**kw):
        dm = RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16, train_size=8, val_size=8,
                                 test_size=8, batch_size=8, **kw)
        task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 64},
                                 data_info=dm.data_info)
        return set().union(*_quiet_trainer().test(task, dm, verbose=False))

    assert keys() == {"test/loss", "test/ppl", "test/acc"}
    assert keys(test_seq_lens=[16, 64]) == {f"test/len{n}/{m}" for n in (16, 64) for m in ("loss", "ppl", "acc")}
    with pytest.raises(ValueError, match="test_seq_lens"):  # two loaders under one name: their metrics would merge
        RetrievalDataModule(seq_len=32, n_pairs=4, test_seq_lens=[32, 32])


def test_retrieval_accuracy_is_reported_without_data_info_from_python():
    """A Lightning user's `trainer.test(LanguageModelTask(...), RetrievalDataModule(...))` (no data_info, which only
    the CLI links) gets the answers' accuracy too: it was left out, the task not knowing the data were retrieval."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    dm = RetrievalDataModule(seq_len=32, n_pairs=4, n_keys=16, n_values=16, train_size=8, val_size=8, test_size=8,
                             batch_size=8)
    task = LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32})
    res = _quiet_trainer().test(task, dm, verbose=False)[0]
    # independent reference: argmax hits over the scored positions of the test split
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        logits = task.model.eval()(batch["input_ids"])
    mask = batch["labels"] != -100
    assert res["test/acc"] == pytest.approx(float((logits.argmax(-1)[mask] == batch["labels"][mask]).float().mean()))


def test_fitting_text_without_its_datamodule_says_the_model_gets_no_tokenizer(corpus):
    """trainer.fit(task, dm.train_dataloader(), dm.val_dataloader()) (plain loaders, no datamodule): the tokenizer
    lives on the datamodule, so the model trained and exported without one (no val/bpb, text prompts failing later
    with "trained on token ids") in silence."""
    import warnings

    from zoo.data import TextDataModule
    from zoo.tasks import LanguageModelTask

    dm = TextDataModule(train_path=str(corpus), block_size=32, batch_size=2)
    task = LanguageModelTask(arch="lm-diff-tiny", data_info=dm.data_info)
    with pytest.warns(UserWarning, match="training on text without its tokenizer.*datamodule=dm"):
        task.setup("fit")
    task.model.tokenizer = dm.tokenizer  # the advice followed: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.setup("fit")
