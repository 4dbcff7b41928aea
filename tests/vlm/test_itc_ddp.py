"""ITC across processes: with 2 gloo ranks every image is contrasted with the texts of the global batch.

Reference: the contrastive loss written out in float64 (logsumexp form) over the concatenated batch;
its autograd gradients are what each rank's features must receive.
"""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.tasks.vlm import itc_loss

CAPTIONS = ["a red circle", "a blue square", "a red circle", "two green stars", "a small cube"]
TEMP = 0.07


def _features(n: int = len(CAPTIONS), dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed unit-norm features for the 5 captions (every rank builds the same ones)."""
    g = torch.Generator().manual_seed(0)
    fi = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    ft = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    return fi, ft


def _reference(fi: torch.Tensor, ft: torch.Tensor, rows: range) -> torch.Tensor:
    """Mean over ``rows`` of 0.5 * (image-to-all-texts + text-to-all-images) cross-entropy, equal captions sharing the target."""
    total = fi.new_zeros(())
    for i in rows:
        pos = [j for j, c in enumerate(CAPTIONS) if c == CAPTIONS[i]]
        li = fi[i] @ ft.T / TEMP
        lt = ft[i] @ fi.T / TEMP
        ce_i = sum(torch.logsumexp(li, 0) - li[j] for j in pos) / len(pos)
        ce_t = sum(torch.logsumexp(lt, 0) - lt[j] for j in pos) / len(pos)
        total = total + 0.5 * (ce_i + ce_t)
    return total / len(rows)


def _worker(rank: int, world: int, store: str, splits: list[int], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fi, ft = _features()
        start = sum(splits[:rank])
        rows = slice(start, start + splits[rank])
        my_fi, my_ft = fi[rows].clone().requires_grad_(), ft[rows].clone().requires_grad_()
        loss, sim, same = itc_loss(my_fi, my_ft, CAPTIONS[rows], torch.tensor(TEMP, dtype=torch.float64))
        loss.backward()
        torch.save({"loss": loss.detach(), "gi": my_fi.grad, "gt": my_ft.grad, "sim": sim.detach(), "same": same}, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(tmp_path, splits):
    mp.spawn(_worker, args=(len(splits), str(tmp_path / "store"), splits, str(tmp_path / "rank")), nprocs=len(splits))
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(splits))]


def test_single_process_itc_matches_the_written_out_loss():
    fi, ft = _features()
    loss, sim, same = itc_loss(fi, ft, CAPTIONS, torch.tensor(TEMP, dtype=torch.float64))
    torch.testing.assert_close(loss, _reference(fi, ft, range(len(CAPTIONS))))
    assert sim.shape == same.shape == (5, 5) and same[0, 2] and not same[0, 1]


def test_captions_of_one_image_are_positives_by_image_id():
    """A batch of one-caption items can hold one image twice with different captions (COCO, CSV data):
    given the images' ids, those pairs are positives, not negatives (and no ITM hard negative)."""
    fi, ft = _features()
    ids = ["img0", "img1", "img2", "img1", "img4"]  # items 1 and 3: one image, two different captions
    loss, _, same = itc_loss(fi, ft, CAPTIONS, torch.tensor(TEMP, dtype=torch.float64), ids)
    assert same[1, 3] and same[3, 1] and same[0, 2] and not same[0, 1]
    total = fi.new_zeros(())
    for i in range(5):
        pos = [j for j in range(5) if CAPTIONS[j] == CAPTIONS[i] or ids[j] == ids[i]]
        li, lt = fi[i] @ ft.T / TEMP, ft[i] @ fi.T / TEMP
        total = total + 0.5 * (sum(torch.logsumexp(li, 0) - li[j] for j in pos) / len(pos)
                               + sum(torch.logsumexp(lt, 0) - lt[j] for j in pos) / len(pos))
    torch.testing.assert_close(loss, total / 5)


def test_two_ranks_contrast_against_the_global_batch(tmp_path):
    splits = [3, 2]  # unequal per-rank batches: the gather pads and cuts
    res = _run(tmp_path, splits)
    fi, ft = _features()
    fi.requires_grad_()
    ft.requires_grad_()
    refs = [_reference(fi, ft, range(0, 3)), _reference(fi, ft, range(3, 5))]
    for r in range(2):
        torch.testing.assert_close(res[r]["loss"], refs[r].detach())
    # each rank's features get the gradient of the sum of all ranks' losses (DDP then averages parameters' grads)
    gi, gt = torch.autograd.grad(refs[0] + refs[1], (fi, ft))
    torch.testing.assert_close(torch.cat([res[0]["gi"], res[1]["gi"]]), gi)
    torch.testing.assert_close(torch.cat([res[0]["gt"], res[1]["gt"]]), gt)
    # the returned similarity block is the rank's own pairs (used for ITM hard negatives)
    torch.testing.assert_close(res[1]["sim"], (fi[3:] @ ft[3:].T / TEMP).detach())
