"""Retrieval R@K both ways (against torchmetrics) and the ITM re-ranking of the ITC top k (against a loop)."""

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate

from zoo.tasks.vlm import correct_ranks, evaluate_retrieval, recall_at_k, relevance, retrieval_scores
from vlm_helpers import scene_batch, tiny_model


def torchmetrics_recall(scores, relevant, k):
    q, n = scores.shape
    metric = RetrievalHitRate(top_k=k)
    idx = torch.arange(q)[:, None].expand(q, n).reshape(-1)
    return float(metric(scores.reshape(-1), relevant.reshape(-1), indexes=idx)) * 100


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_torchmetrics_both_ways(seed):
    g = torch.Generator().manual_seed(seed)
    ni = 30
    owner = torch.cat([torch.arange(ni), torch.randint(0, ni, (25,), generator=g)])  # some images have 2+ captions
    scores = torch.randn(ni, len(owner), generator=g)
    rel = relevance(owner, ni)
    ri = recall_at_k(correct_ranks(scores, rel))
    rt = recall_at_k(correct_ranks(scores.T, rel.T))
    for k in (1, 5, 10):
        assert ri[k] == pytest.approx(torchmetrics_recall(scores, rel, k), abs=1e-4)
        assert rt[k] == pytest.approx(torchmetrics_recall(scores.T, rel.T, k), abs=1e-4)


def test_ties_count_against_the_query():
    scores = torch.tensor([[1.0, 1.0, 0.0]])
    rel = torch.tensor([[False, True, False]])
    assert correct_ranks(scores, rel).tolist() == [1]
    with pytest.raises(ValueError, match="relevant"):
        correct_ranks(scores, torch.zeros_like(rel))


def naive_ranks(scores, relevant):
    """Per row: position of the first relevant item when the row is sorted by score, ties broken against
    the query (irrelevant before relevant) -- the number of irrelevant items ranked above it."""
    out = []
    for s, r in zip(scores.tolist(), relevant.tolist()):
        order = sorted(range(len(s)), key=lambda j: (-s[j], r[j]))
        out.append(next(p for p, j in enumerate(order) if r[j]))
    return out


def test_duplicate_captions_of_one_image_do_not_push_each_other_down():
    # image 0 has the same caption twice (COCO has such duplicates): both score alike and both are right
    scores = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.2, 0.8]])
    rel = relevance(torch.tensor([0, 0, 1]), 2)
    assert correct_ranks(scores, rel).tolist() == naive_ranks(scores, rel) == [0, 0]
    assert recall_at_k(correct_ranks(scores, rel))[1] == 100.0
    g = torch.Generator().manual_seed(3)  # many ties: scores on a coarse grid
    owner = torch.randint(0, 6, (20,), generator=g)
    owner[:6] = torch.arange(6)
    scores = torch.randint(0, 4, (6, 20), generator=g).float()
    rel = relevance(owner, 6)
    assert correct_ranks(scores, rel).tolist() == naive_ranks(scores, rel)
    assert correct_ranks(scores.T, rel.T).tolist() == naive_ranks(scores.T, rel.T)


def test_the_same_caption_on_two_images_is_right_for_both():
    """COCO-style: images 0 and 1 share a caption word for word. A perfect scorer (1 when the text is one of
    the image's captions) must read 100% both ways; by list position alone neither image could win its tie."""
    from zoo.tasks.vlm import flatten_captions, retrieval_metrics

    captions = [["a man riding a wave on a surfboard"], ["a man riding a wave on a surfboard", "a surfer"],
                ["a cat on a sofa"]]
    texts, owner = flatten_captions(captions)
    itc = torch.tensor([[float(t in c) for t in texts] for c in captions])
    fixed = retrieval_metrics({"itc": itc}, owner, texts)
    assert fixed["itc/i2t_r1"] == fixed["itc/t2i_r1"] == 100.0
    by_position = retrieval_metrics({"itc": itc}, owner)
    assert by_position["itc/i2t_top1"].tolist() == [False, False, True]  # what the texts fix
    rel = relevance(owner, 3, texts)
    assert rel.tolist() == [[True, True, False, False], [True, True, True, False], [False, False, False, True]]


@pytest.mark.parametrize("rerank", ["itm", "itc+itm"])
def test_itm_rerank_matches_a_loop(rerank):
    m = tiny_model(seed=1)
    images, caps = scene_batch(6)
    k = 3
    out = retrieval_scores(m, images, caps, k=k, rerank=rerank)
    w = 0.0 if rerank == "itm" else 1.0 / float(m.temperature)
    with torch.no_grad():
        # one image / one caption at a time: no padding, so the text mean is a plain mean
        itc = torch.stack([
            torch.stack([torch.nn.functional.cosine_similarity(
                m.vision_proj(m.encode_image(images[i : i + 1])[:, 1:].mean(1)),
                m.text_proj(m.encode_text(*m.tokenize([c])).mean(1))).squeeze() for c in caps])
            for i in range(6)])
        torch.testing.assert_close(out["itc"], itc, rtol=1e-4, atol=1e-5)
        def check_row(row, top, rescore, itc_row):
            """The top k hold the re-scores up to one per-row shift, above every other item; the rest their ITC."""
            rest = [j for j in range(6) if j not in top]
            shift = float(row[top[0]]) - rescore(top[0])
            for j in top:
                assert float(row[j]) - shift == pytest.approx(rescore(j), abs=1e-3)
            for j in rest:
                assert float(row[j]) == pytest.approx(float(itc_row[j]), abs=1e-5)
            assert min(float(row[j]) for j in top) > max(float(row[j]) for j in rest)

        for i in range(6):
            check_row(out["i2t"][i], itc[i].topk(k).indices.tolist(),
                      lambda j: float(m.itm_score(images[i : i + 1], [caps[j]])[0] + w * itc[i, j]), itc[i])
            check_row(out["t2i"][i], itc[:, i].topk(k).indices.tolist(),
                      lambda j: float(m.itm_score(images[j : j + 1], [caps[i]])[0] + w * itc[j, i]), itc[:, i])


def test_evaluate_retrieval_keys():
    m = tiny_model()
    images, caps = scene_batch(5)
    res = evaluate_retrieval(m, images, [[c] for c in caps], k=2)
    for name in ("itc", "itm"):
        for d in ("i2t", "t2i"):
            vals = [res[f"{name}/{d}_r{k}"] for k in (1, 5, 10)]
            assert vals == sorted(vals) and vals[-1] == 100.0  # 5 items: R@5 = R@10 = 100
        assert res[f"{name}/i2t_top1"].shape == (5,)


class _FixedFeatures(torch.nn.Module):
    """A stand-in model for :func:`retrieval_scores`: image ``i`` has feature row ``fi[i]``, text ``"j"`` row
    ``ft[j]`` (so the ITC cosines are chosen by hand), and the ITM margin is 0 for every pair."""

    def __init__(self, fi, ft):
        super().__init__()
        self.fi, self.ft = fi, ft
        self.fw_table, self.temperature = torch.zeros(1), torch.tensor(0.07)

    def tokenize(self, texts):
        ids = torch.tensor([[int(t)] for t in texts])
        return ids, torch.ones_like(ids)

    def encode_image(self, x):
        return x

    def encode_text(self, ids, mask):
        return ids

    def image_feat(self, x):
        return self.fi[x[:, 0, 0, 0].long()]

    def text_feat(self, ids, mask):
        return self.ft[ids[:, 0]]

    def itm_logits(self, txt, mask, img, ids):
        return torch.zeros(len(ids), 2)


@pytest.mark.parametrize("rerank", ["itm", "itc+itm"])
def test_items_beyond_the_reranked_top_k_keep_their_itc_order(rerank):
    """Beyond the ITC top k the ITC order stands (module docstring). Image 0's caption (text 5, cosine 0.30005)
    is 5th by ITC, above a distractor at 0.3: with k = 1 it is at 0-based rank 4, a hit at R@5. Filled as
    float32 ``itc - 1e4`` both read -9999.7 (the float32 step at 1e4 is ~1e-3), tied, so R@5 missed it."""
    cos = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3, 0.30005])
    ft = torch.stack([cos, (1 - cos**2).sqrt()], 1)
    m = _FixedFeatures(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ft)
    images = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    texts = [str(j) for j in range(6)]
    owner = torch.tensor([1, 1, 1, 1, 1, 0])
    from zoo.tasks.vlm import retrieval_metrics

    out = retrieval_scores(m, images, texts, k=1, rerank=rerank)
    # reference: the ITC top 1 first (re-scored), then the rest by the cosines chosen above
    order = [0] + sorted(range(1, 6), key=lambda j: -float(cos[j]))
    assert order.index(5) == 4
    rel = relevance(owner, 2)
    assert correct_ranks(out["i2t"], rel)[0].item() == 4
    res = retrieval_metrics(out, owner, texts)
    assert res["itm/i2t_r5"] == res["itc/i2t_r5"] == 100.0
    if rerank == "itc+itm":
        assert correct_ranks(out["i2t_itm_only"], rel)[0].item() == 4


def test_nan_scores_never_count_as_right():
    """A diverged model scores NaN: every comparison with NaN is False, so no wrong item counted as ranked
    above the right one and all-NaN scores read R@1 = R@10 = 100 (a checkpoint callback on val/r1 kept such a
    model as the best). By hand: a NaN item cannot be ranked below the right one, so it counts against the query;
    all-NaN scores over 12 images x 12 captions leave 11 wrong items above each right one: R@1 = R@10 = 0."""
    from zoo.tasks.vlm import retrieval_metrics

    res = retrieval_metrics({"itc": torch.full((12, 12), float("nan"))}, torch.arange(12))
    for k in (1, 5, 10):
        assert res[f"itc/i2t_r{k}"] == res[f"itc/t2i_r{k}"] == 0.0
    nan = float("nan")
    scores = torch.tensor([[0.9, nan, 0.1],   # right item 0 first, but item 1 cannot be ordered: rank 1
                           [0.2, 0.8, 0.1],   # clean row: rank 0
                           [0.3, 0.2, nan],   # the right item itself is NaN: both wrong items count, rank 2
                           [nan, 0.7, 0.1]])  # two right items: item 0 (NaN) gives nothing, item 1 (0.7) is first
    rel = torch.tensor([[True, False, False], [False, True, False], [False, False, True], [True, True, False]])
    assert correct_ranks(scores, rel).tolist() == [1, 0, 2, 0]


@pytest.mark.parametrize("n_images, caps_per_image, k, batch_size", [(6, 1, 3, 4), (5, 2, 4, 256), (4, 1, 10, 3), (1, 3, 2, 1), (7, 1, 1, 5)])
@pytest.mark.parametrize("rerank", ["itm", "itc+itm"])
def test_pairs_in_both_top_ks_are_scored_once_with_the_same_scores(n_images, caps_per_image, k, batch_size, rerank):
    """retrieval_scores runs ITM once per distinct (image, text) pair of the two directions' top k (most pairs are
    in both): each direction's matrix equals a plain per-direction loop that scores every top-k pair alone; k past
    the gallery (every pair in both directions), one image, k = 1, several captions per image, chunks of one."""
    from zoo.models.vlm import wide_cosines

    m = tiny_model(seed=2)
    images, caps = scene_batch(n_images * caps_per_image)
    images = images[:n_images]
    texts = caps  # caption t belongs to image t // caps_per_image (the owner does not matter to the scores)
    seen = []
    itm = m.itm_logits

    def counting(txt, mask, img, ids):
        seen.append(len(ids))
        return itm(txt, mask, img, ids)

    m.itm_logits = counting
    out = retrieval_scores(m, images, texts, k=k, batch_size=batch_size, rerank=rerank)
    del m.itm_logits
    with torch.no_grad():
        ids, mask = m.tokenize(texts)
        img, txt = m.encode_image(images), m.encode_text(ids, mask)
        itc = wide_cosines(m.image_feat(img), m.text_feat(txt, mask))
        pairs = set()
        for name, sim in (("i2t", itc), ("t2i", itc.T)):
            top = sim.topk(min(k, sim.shape[1]), dim=1).indices.tolist()
            for variant, w in ((name, 1.0 / float(m.temperature) if rerank == "itc+itm" else 0.0), (f"{name}_itm_only", 0.0)):
                if variant.endswith("_itm_only") and rerank == "itm":
                    continue
                ref = sim.float().clone()
                for q, row in enumerate(top):
                    scores = []
                    for c in row:
                        i, t = (q, c) if name == "i2t" else (c, q)
                        pairs.add((i, t))
                        lg = itm(txt[t : t + 1], mask[t : t + 1], img[i : i + 1], ids[t : t + 1])[0].float()
                        scores.append(float(lg[1] - lg[0]) + w * float(sim[q, c]))
                    shift = max(0.0, float(sim[q].float().max()) - min(scores) + 1.0)
                    for c, s in zip(row, scores):
                        ref[q, c] = s + shift
                torch.testing.assert_close(out[variant], ref, rtol=1e-5, atol=1e-5)
    assert sum(seen) == len(pairs)  # each distinct pair once
    assert set(out) == {"itc", "i2t", "t2i"} | ({"i2t_itm_only", "t2i_itm_only"} if rerank == "itc+itm" else set())


def test_one_caption_string_per_image_is_that_images_caption_not_its_characters():
    """`evaluate_retrieval(model, images, ["caption 0", "caption 1", ...])` (one caption per image, as CLIP-style
    evaluations pass them): each string is its image's caption. Each string was read as a caption list, its
    characters as the captions: R@K of another gallery, silently. Here image i matches text "1i" exactly and each
    single character's text row points at another image, so only the right reading gives R@1 = 100 both ways."""
    fi = torch.eye(3)
    ft = torch.zeros(13, 3)
    for d in range(10):  # the characters' rows: digit d points at image (d + 1) % 3
        ft[d, (d + 1) % 3] = 1.0
    ft[10:13] = torch.eye(3)  # text "1i" is image i's caption
    model = _FixedFeatures(fi, ft)
    images = torch.arange(3).float().view(3, 1, 1, 1).expand(3, 3, 2, 2)
    res = evaluate_retrieval(model, images, ["10", "11", "12"], k=2)
    for name in ("itc", "itm"):
        assert res[f"{name}/i2t_r1"] == 100.0 and res[f"{name}/t2i_r1"] == 100.0
        assert res[f"{name}/t2i_top1"].shape == (3,)  # three caption queries, not six characters


def test_retrieval_of_a_model_in_train_mode_is_scored_without_dropout():
    """evaluate_retrieval / retrieval_scores on a model fresh from training (train mode, dropout 0.3) scored with
    dropout on: two calls gave different scores and R@K. Reference: the same model in eval mode (as similarity() and
    the attacks score); the model's own mode is given back."""
    m = tiny_model(dropout=0.3).train()
    images, caps = scene_batch(6)
    got = retrieval_scores(m, images, caps, k=3)
    assert all(mod.training for mod in m.modules())
    m.eval()
    want = retrieval_scores(m, images, caps, k=3)
    for key in ("itc", "i2t", "t2i"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    m.train()
    assert evaluate_retrieval(m, images, [[c] for c in caps], k=3)["itm/r_mean"] == \
        evaluate_retrieval(m.eval(), images, [[c] for c in caps], k=3)["itm/r_mean"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_at_k_both_ways_matches_a_naive_sort_with_several_captions_per_image(seed):
    """R@1/5/10 of :func:`evaluate_retrieval` (ITC and re-ranked with k >= every gallery, ITM margin 0) against a
    plain sort of the similarity matrix: image->text is a hit at K when any of the image's captions is among its K
    best texts; text->image when the caption's own image is among its K best images."""
    g = torch.Generator().manual_seed(seed)
    n_caps = torch.randint(1, 5, (15,), generator=g).tolist()  # 1 to 4 captions per image
    owner = [i for i, n in enumerate(n_caps) for _ in range(n)]
    fi = torch.nn.functional.normalize(torch.randn(15, 8, generator=g), dim=1)
    ft = torch.nn.functional.normalize(torch.randn(len(owner), 8, generator=g), dim=1)
    m = _FixedFeatures(fi, ft)
    images = torch.arange(15.0).view(15, 1, 1, 1)
    captions, t = [], 0
    for n in n_caps:
        captions.append([str(j) for j in range(t, t + n)])
        t += n
    res = evaluate_retrieval(m, images, captions, k=len(owner))
    sim = (fi @ ft.T).tolist()
    for kk in (1, 5, 10):
        i2t = [any(owner[j] == i for j in sorted(range(len(owner)), key=lambda j: -sim[i][j])[:kk]) for i in range(15)]
        t2i = [owner[t] in sorted(range(15), key=lambda i: -sim[i][t])[:kk] for t in range(len(owner))]
        for name in ("itc", "itm"):
            assert res[f"{name}/i2t_r{kk}"] == pytest.approx(100.0 * sum(i2t) / 15, abs=1e-4)
            assert res[f"{name}/t2i_r{kk}"] == pytest.approx(100.0 * sum(t2i) / len(owner), abs=1e-4)
    assert res["itc/i2t_r1"] < 100.0 and res["itc/t2i_r10"] > res["itc/t2i_r1"]  # random features: not trivial
