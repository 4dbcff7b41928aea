"""Attacks: PGD stays in the eps ball and lowers the score; the text attack; ASR by hand."""

import numpy as np
import pytest
import torch

from zoo.attacks import (
    AttackConfig,
    attack_success_rate,
    char_edits,
    co_attack,
    pair_score,
    pgd_attack,
    run_attack_suite,
    text_attack,
    text_candidates,
    text_score,
)
from vlm_helpers import scene_batch, tiny_model


def scores(m, images, caps):
    with torch.no_grad():
        return pair_score(m, images, *m.tokenize(caps))


def test_text_score_encodes_each_image_once_and_scores_every_text_with_its_own_image():
    """Captions scored against images by index (the text attack's candidates, up to max_candidates per image): the
    same scores as the pairs written out row by row (each image copied once per caption), with each image encoded
    once, however the owners are ordered and wherever the batch boundaries fall."""
    m = tiny_model(seed=2)
    images, caps = scene_batch(5)
    owner = torch.tensor([3, 0, 0, 4, 1, 3, 3, 2, 0, 4, 1])
    texts = [caps[int(i)] if k % 2 else caps[(int(i) + 1) % 5] for k, i in enumerate(owner)]  # right and wrong pairs
    want = scores(m, images[owner], texts)  # the naive reference: every pair written out
    encoded, encode = [], m.encode_image
    m.encode_image = lambda x: (encoded.append(len(x)), encode(x))[1]
    got = text_score(m, images, texts, batch_size=2, owner=owner)
    del m.encode_image
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert sum(encoded) == 5  # each image once (11 captions)
    with pytest.raises(ValueError, match="owner must give an image index"):
        text_score(m, images, texts, owner=owner + 1)


@pytest.mark.parametrize("attack", [pgd_attack, text_attack])
def test_one_caption_string_is_named_not_counted_as_characters(attack):
    m = tiny_model(seed=2)
    images, caps = scene_batch(1)
    with pytest.raises(ValueError, match="list of captions, one per image"):  # was "1 vs 18" (its characters)
        attack(m, images, caps[0])


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_pgd_inside_eps_ball_and_raises_loss(eps):
    m = tiny_model(seed=2)
    images, caps = scene_batch(4)
    adv = pgd_attack(m, images, caps, eps=eps, steps=5, random_start=False)
    assert (adv - images).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    before, after = scores(m, images, caps), scores(m, adv, caps)
    assert (after < before).all()  # the loss (= -score) went up for every pair
    rnd = pgd_attack(m, images, caps, eps=eps, steps=1, step_size=0.0, random_start=True)
    assert 0 < (rnd - images).abs().max() <= eps + 1e-6


def test_pgd_every_iterate_in_the_ball_and_steps_down_the_score_also_under_no_grad():
    """Each PGD iterate the model sees stays within eps of the clean image and inside [0, 1] (saturated pixels
    included); one step is ``x0 - alpha * sign(d score / d x)``, projected (the score of the right pair goes
    down); and an evaluation loop's ``torch.no_grad()`` / ``inference_mode`` (Lightning's test step) gives the
    same images: the attack used to fail there ("element 0 of tensors does not require grad")."""
    m = tiny_model(seed=2)
    images, caps = scene_batch(4)
    images[0, :, :4] = 1.0
    images[1, :, :4] = 0.0
    eps = 8 / 255
    seen, encode = [], m.encode_image
    m.encode_image = lambda x: (seen.append(x.detach().clone()), encode(x))[1]
    adv = pgd_attack(m, images, caps, eps=eps, steps=4, seed=3)
    del m.encode_image
    assert len(seen) == 4
    for x in seen + [adv]:
        assert (x - images).abs().max() <= eps + 1e-6 and x.min() >= 0 and x.max() <= 1
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pair_score(m, x, *m.tokenize(caps)).sum(), x)
    want = torch.min(torch.max(images - 0.01 * g.sign(), images - eps), images + eps).clamp(0, 1)
    torch.testing.assert_close(pgd_attack(m, images, caps, eps=eps, steps=1, step_size=0.01, random_start=False), want)
    with torch.no_grad():
        assert torch.equal(pgd_attack(m, images, caps, eps=eps, steps=4, seed=3), adv)
    with torch.inference_mode():
        assert torch.equal(pgd_attack(m, images, caps, eps=eps, steps=4, seed=3), adv)



def test_pgd_on_bfloat16_images_stays_in_the_ball_and_moves_them():
    """Images in bfloat16 (a 'bf16-true' evaluation batch) attacking a bfloat16 model: the steps ran in bfloat16,
    where x0 +- eps rounded past the budget (2.12 / 255 at eps 2 / 255) and a step of alpha = 2.5 eps / steps below
    half the spacing of pixels in [0.5, 1] (2^-8) left them unchanged. The budget is checked in float64 against the
    clean pixels; every pair's score (computed in float64 from the float64 model) goes down."""
    m = tiny_model(seed=2)
    images, caps = scene_batch(4)
    x0 = images.to(torch.bfloat16)
    bright = x0 >= 0.5
    assert bright.float().mean() > 0.1  # the test exercises the coarse part of the bfloat16 grid
    eps = 2 / 255
    adv = pgd_attack(m.to(torch.bfloat16), x0, caps, eps=eps, steps=20, random_start=False)
    assert adv.dtype == torch.bfloat16
    d = adv.double() - x0.double()
    assert d.abs().max() <= eps and adv.min() >= 0 and adv.max() <= 1
    assert (d[bright] != 0).float().mean() > 0.5  # 20 steps of 0.001 move bright pixels (bfloat16 steps did not)
    ref = m.double()
    assert (scores(ref, adv.double(), caps) < scores(ref, x0.double(), caps)).all()


def test_asr_by_hand():
    clean = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    adv = torch.tensor([0, 1, 1, 0, 0, 1], dtype=torch.bool)
    # originally correct: 0, 1, 3, 5; made wrong: 0, 3 -> 2 / 4
    assert attack_success_rate(clean, adv) == pytest.approx(50.0)
    assert np.isnan(attack_success_rate(torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)))


def test_char_edits_and_candidates():
    rng = np.random.default_rng(0)
    e = char_edits("abc", rng)
    assert {"bc", "ac", "ab", "bac", "acb"} <= set(e) and "abc" not in e
    assert char_edits("a", rng) == [] and char_edits("2", rng) == []
    cands = text_candidates(["a", "large", "circle"], {"large": ["big"]}, rng, 1000)
    assert ["a", "big", "circle"] in cands and ["large", "a", "circle"] in cands
    assert all(sum(x != y for x, y in zip(c, ["a", "large", "circle"])) in (1, 2) for c in cands)
    assert len(text_candidates(["a", "large", "circle"], {}, rng, 3)) == 3
    # a word keeps its punctuation and capital around an edit ("Large" -> "Big", "circle." -> "circl.")
    cands = text_candidates(["Large", "circle."], {"large": ["big"]}, rng, 1000)
    assert ["Big", "circle."] in cands and ["Large", "circl."] in cands
    assert all(c[1].endswith(".") for c in cands if c[0] == "Large")


def test_text_attack_lowers_score_within_budget():
    m = tiny_model(seed=4)
    images, caps = scene_batch(4)
    adv = text_attack(m, images, caps, changes=1, max_candidates=200)
    before, after = scores(m, images, caps), scores(m, images, adv)
    assert (after <= before + 1e-6).all() and (after < before).any()
    for a, c in zip(adv, caps):
        diff = sum(x != y for x, y in zip(a.split(), c.split()))
        assert len(a.split()) == len(c.split()) and diff <= 2  # one edit (a neighbour swap touches 2 slots)
    # no accepted edit (budget 0): the caption comes back exactly as written, case and spaces included
    assert text_attack(m, images[:1], ["A  Small red circle"], changes=0) == ["A  Small red circle"]


def test_co_attack_and_suite():
    m = tiny_model(seed=5)
    images, caps = scene_batch(5)
    cfg = AttackConfig(eps=4 / 255, steps=2, max_candidates=20, k=2)
    adv_i, adv_t = co_attack(m, images, caps, cfg)
    assert (adv_i - images).abs().max() <= 4 / 255 + 1e-6 and len(adv_t) == 5
    res = run_attack_suite(m, images, [[c] for c in caps], cfg)
    assert set(res["asr"]) == {"image_pgd", "text", "co_attack"}
    assert res["asr"]["image_pgd"]["linf"] <= 4 + 1e-3 and res["asr"]["text"]["linf"] == 0
    with pytest.raises(ValueError, match="L-inf budget"):
        AttackConfig(eps=4)


def test_attacks_of_an_empty_batch():
    """pgd_attack / co_attack of no images failed in torch.cat ('expected a non-empty list of Tensors') where
    text_attack gives [] and similarity a [0, Nt] matrix: no images attack to no images; the suite, which has no
    retrieval to score, says so."""
    m = tiny_model(seed=5)
    images, _ = scene_batch(1)
    none = images[:0]
    adv = pgd_attack(m, none, [], eps=4 / 255, steps=2)
    assert tuple(adv.shape) == (0, *images.shape[1:]) and adv.dtype == images.dtype
    adv_i, adv_t = co_attack(m, none, [], AttackConfig(steps=2))
    assert tuple(adv_i.shape) == (0, *images.shape[1:]) and adv_t == []
    with pytest.raises(ValueError, match="run_attack_suite needs at least one image"):
        run_attack_suite(m, none, [], AttackConfig(steps=2))


def test_attacks_run_the_model_without_dropout_and_give_back_its_mode():
    """A model in train mode (fresh from fit) with dropout: the attacks' gradients and scores are the deterministic
    model's (dropout made PGD and the greedy text search chase noise), and the model keeps its mode."""
    m = tiny_model(seed=6, dropout=0.3)
    images, caps = scene_batch(3)
    m.eval()
    want_i = pgd_attack(m, images, caps, eps=4 / 255, steps=3)
    want_t = text_attack(m, images, caps, changes=1, max_candidates=30)
    m.train()
    assert torch.equal(pgd_attack(m, images, caps, eps=4 / 255, steps=3), want_i)
    assert text_attack(m, images, caps, changes=1, max_candidates=30) == want_t
    assert m.training
    run_attack_suite(m, images, [[c] for c in caps], AttackConfig(eps=4 / 255, steps=1, max_candidates=5, k=2))
    assert m.training  # the suite set eval and left it there
    m.eval()
    run_attack_suite(m, images, [[c] for c in caps], AttackConfig(eps=4 / 255, steps=1, max_candidates=5, k=2))
    assert not m.training


def test_attack_and_eval_candidate_counts_must_be_positive():
    from zoo.attacks import AttackConfig
    from zoo.tasks.vlm import VLMTask

    with pytest.raises(ValueError, match="k \\(ITC candidates"):
        AttackConfig(k=0)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        AttackConfig(step_size=0.0)
    with pytest.raises(ValueError, match="eval_k"):
        VLMTask(arch="vlm-fda-tiny", eval_k=0)
    from zoo.attacks import pgd_attack

    with pytest.raises(ValueError, match="steps >= 1, got 0"):  # the function itself, not only AttackConfig
        pgd_attack(None, torch.zeros(1, 3, 4, 4), ["a"], eps=2 / 255, steps=0)
    for eps in (4, -2 / 255):  # 4 meant as 4/255 allowed any image: the whole [0, 1] range, silently
        with pytest.raises(ValueError, match=f"budget on \\[0, 1\\] pixels .*got {eps}"):
            pgd_attack(None, torch.zeros(1, 3, 4, 4), ["a"], eps=eps, steps=1)


def test_pgd_takes_a_numpy_integer_step_count():
    """steps from numpy (np.arange, a sweep's array) is an integer: it was refused as "needs steps >= 1, got 3";
    a float or a bool count is still named."""
    m = tiny_model(seed=2)
    images, caps = scene_batch(2)
    want = pgd_attack(m, images, caps, eps=2 / 255, steps=3, seed=5)
    got = pgd_attack(m, images, caps, eps=2 / 255, steps=np.int64(3), seed=5)
    assert torch.equal(got, want)
    for bad in (2.0, True):
        with pytest.raises(ValueError, match="steps >= 1"):
            pgd_attack(m, images, caps, eps=2 / 255, steps=bad)


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_refuses_integer_images_by_name(random_start):
    """uint8 pixels (0..255) are not the [0, 1] floats the attack steps in (encode_image refuses them by name): the
    attack failed inside with "nextafter_cpu not implemented for 'Byte'" after stepping 0..255 values clamped to
    [0, 1] (or "only Tensors of floating point dtype can require gradients")."""
    m = tiny_model(seed=2)
    images, caps = scene_batch(2)
    with pytest.raises(ValueError, match=r"floats in \[0, 1\], got torch.uint8"):
        pgd_attack(m, (images * 255).round().to(torch.uint8), caps, eps=2 / 255, steps=2, random_start=random_start)


def test_transfer_attack_crafts_on_the_source_and_scores_the_target(tmp_path):
    """run_attack_suite(target, ..., source=other): the image PGD examples are the source model's (pgd_attack on it),
    the ASR the target's retrieval on them, computed here by hand; the source keeps its training mode, and
    source=target is the white-box suite."""
    from zoo.tasks.vlm import flatten_captions, retrieval_metrics, retrieval_scores

    src, tgt = tiny_model(seed=7), tiny_model(seed=8)
    images, caps = scene_batch(8)
    cfg = AttackConfig(eps=8 / 255, steps=2, max_candidates=5, k=3)
    src.train()
    res = run_attack_suite(tgt, images, [[c] for c in caps], cfg, source=src)
    assert src.training
    texts, owner = flatten_captions([[c] for c in caps])
    adv = pgd_attack(src.eval(), images, caps, cfg.eps, cfg.steps, cfg.step_size, cfg.random_start, cfg.seed)
    clean = retrieval_metrics(retrieval_scores(tgt, images, texts, k=cfg.k), owner, texts)
    hit = retrieval_metrics(retrieval_scores(tgt, adv, texts, k=cfg.k), owner, texts)
    for d in ("i2t", "t2i"):
        np.testing.assert_equal(res["asr"]["image_pgd"][d],
                                attack_success_rate(clean[f"itm/{d}_top1"], hit[f"itm/{d}_top1"]))
    from zoo.hub import export_model

    src_dir = export_model(src, tmp_path / "src")  # a folder (or shipped name) is loaded as the source
    by_path = run_attack_suite(tgt, images, [[c] for c in caps], cfg, source=str(src_dir))
    assert json_equal(by_path["asr"], res["asr"])
    white = run_attack_suite(tgt, images, [[c] for c in caps], cfg)
    same = run_attack_suite(tgt, images, [[c] for c in caps], cfg, source=tgt)
    assert json_equal(white["asr"], same["asr"]) and not json_equal(white["asr"], res["asr"])


def json_equal(a, b):
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_the_suite_takes_one_caption_string_per_image():
    """run_attack_suite(model, images, ["caption", ...]): each string is its image's caption (its first character
    was the caption attacked and its characters the gallery)."""
    m = tiny_model(fda=True)
    images, caps = scene_batch(3)
    out = run_attack_suite(m, images, caps, AttackConfig(eps=2 / 255, steps=1, max_candidates=4, k=2))
    assert [clean for clean, _ in out["examples"]["text"]] == caps
    assert [clean for clean, _ in out["examples"]["image_pgd"]] == caps


@pytest.mark.parametrize("eps", [2 / 255, 0.0078, 8 / 255, 1e-3])
@pytest.mark.parametrize("pixels", ["scene", "random"])
def test_pgd_result_is_within_eps_exactly_and_in_the_pixel_range(eps, pixels):
    """The budget checked as a user does, exactly: |adv - x| <= eps in float64 for every float32 pixel, and adv in
    [0, 1]. x0 + eps rounded to float32 overshot it by one step for a few hundred pixels of four scenes; off the
    1/255 grid, a dark pixel's x0 - eps (near 0, where float32 steps are fine) by many of its steps."""
    m = tiny_model(seed=2)
    images, caps = scene_batch(4)
    if pixels == "random":
        images = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) ** 3  # many dark pixels
    adv = pgd_attack(m, images, caps, eps=eps, steps=3)
    assert adv.dtype == torch.float32
    d = (adv.double() - images.double()).abs()
    assert d.max().item() <= eps
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert d.max().item() > 0.9 * eps and (d > 0).float().mean() > 0.5  # it did move (to the budget)


def test_pgd_refuses_pixels_outside_0_1_by_name():
    """Normalized images (timm's mean / std): every iterate is clamped to [0, 1], so the attack returned images
    up to 2 away from its input with no word."""
    m = tiny_model(seed=2)
    images, caps = scene_batch(2)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\], got values in \[-1.686\d*, 1.780\d*\].*before a mean / std normalization"):
        pgd_attack(m, (images - 0.5) / 0.25, caps, eps=2 / 255, steps=1)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\], got values in \[20, 241\]: divide 0..255 pixels by 255"):
        pgd_attack(m, images * 255, caps, eps=2 / 255, steps=1)
    # a value a float rounding put just past 1 (a resize's arithmetic) is no other range: clamped, as the iterates are
    nudged = images.clone()
    nudged[0, 0, 0, 0] = 1.0000001
    adv = pgd_attack(m, nudged, caps, eps=2 / 255, steps=1)
    assert (adv.double() - nudged.double()).abs().max() <= 2 / 255 and adv.max() <= 1
    with pytest.raises(ValueError, match=r"got values in \[.*, 1.0001\d*\]"):  # past the rounding: said in full
        nudged[0, 0, 0, 0] = 1.0001
        pgd_attack(m, nudged, caps, eps=2 / 255, steps=1)
    nudged[0, 0, 0, 0] = float("nan")  # a NaN pixel is no pixel in [0, 1] either
    with pytest.raises(ValueError, match=r"got values in \[nan, nan\]"):
        pgd_attack(m, nudged, caps, eps=2 / 255, steps=1)


def test_an_eps_of_zero_changes_no_pixel_and_no_retrieval():
    """eps 0 (a sweep's baseline): the images come back as they are, so image PGD makes no retrieval wrong."""
    m = tiny_model(seed=5)
    images, caps = scene_batch(5)
    assert torch.equal(pgd_attack(m, images, caps, eps=0, steps=2), images)
    res = run_attack_suite(m, images, [[c] for c in caps], AttackConfig(eps=0.0, steps=2, max_candidates=5, k=2))
    defined = [v for r in ("asr", "asr_itc", "asr_itm_only") for d in ("i2t", "t2i")
               for v in [res[r]["image_pgd"][d]] if v == v]
    assert defined and all(v == 0.0 for v in defined)
    assert res["asr"]["image_pgd"]["linf"] == 0.0


def test_the_suite_says_when_no_query_is_right_before_the_attack():
    """Identical images tie for every caption (ties count against the query): no text retrieves its image, so
    the text->image ASR is 0 / 0: said in a warning, not a silent nan."""
    m = tiny_model(seed=5)
    images, caps = scene_batch(3)
    images = images[:1].expand(3, -1, -1, -1).clone()
    with pytest.warns(UserWarning, match=r"no query is retrieved correctly before the attack in t2i \(itm\).*"
                                         r"undefined, reported as nan"):
        res = run_attack_suite(m, images, [[c] for c in caps], AttackConfig(eps=2 / 255, steps=1, max_candidates=5, k=2))
    assert np.isnan(res["asr"]["image_pgd"]["t2i"]) and res["clean"]["itm/t2i_r1"] == 0.0
