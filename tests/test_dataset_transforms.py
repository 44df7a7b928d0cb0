"""Augmentation: weak keeps image/label aligned, strong never moves pixels, CutMix consistency."""
import numpy as np
import torch

from dataset.transforms import apply_weak, sample_weak, strong_photometric
from sam2_train.model.cutmix import apply_cutmix, cutmix_box_masks, sample_cutmix_boxes, sample_cutmix_partners


def _blobs(n=3, H=48, W=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(n, 1, H, W)
    for i in range(n):
        y, x = torch.randint(8, H - 20, (2,), generator=g).tolist()
        img[i, 0, y:y + 12, x:x + 9] = 0.9
        img[i, 0, 2:6, 3:30] = 0.6
    return img


def test_weak_keeps_image_and_label_aligned():
    img = _blobs()
    lab = (img[:, 0] > 0.5).long() + (img[:, 0] > 0.7).long()
    agree = []
    for s in range(30):
        t = sample_weak(np.random.default_rng(s))
        x, y = apply_weak(img, lab, t, 64)
        assert x.shape == (3, 1, 64, 64) and y.shape == (3, 64, 64) and y.dtype == torch.int64
        relab = (x[:, 0] > 0.5).long() + (x[:, 0] > 0.7).long()
        agree.append((relab == y).float().mean().item())
        if t["angle"] == 0 and t["zoom"] == 1.0:          # rot90/flip + resize: exact on the grid
            assert (relab == y).float().mean().item() > 0.95
    assert min(agree) > 0.95 and np.mean(agree) > 0.98   # differences only on boundary pixels
    # same size, rot90/flip only: exact equality
    x, y = apply_weak(img, lab, {"k": 1, "flip": 1, "angle": 0.0, "zoom": 1.0, "tx": 0.0, "ty": 0.0}, 48)
    assert x.shape[-2:] == (48, 48)
    t = {"k": 2, "flip": 0, "angle": 0.0, "zoom": 1.0, "tx": 0.0, "ty": 0.0}
    img_sq, lab_sq = img[..., :40, :40], lab[..., :40, :40]
    x, y = apply_weak(img_sq, lab_sq, t, 40)
    assert torch.equal((x[:, 0] > 0.5).long() + (x[:, 0] > 0.7).long(), y)
    assert torch.equal(y, torch.flip(torch.rot90(lab_sq, 2, (-2, -1)), (-2,)))


def test_strong_never_moves_pixels():
    img = _blobs(n=2, H=64, W=64)
    for s in range(20):
        rng, gen = np.random.default_rng(s), torch.Generator().manual_seed(s)
        y = strong_photometric(img, rng, gen)
        assert y.shape == img.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        # cross-correlation peak of the centred images is at zero shift
        a = img - img.mean(dim=(-2, -1), keepdim=True)
        b = y - y.mean(dim=(-2, -1), keepdim=True)
        cc = torch.fft.ifft2(torch.fft.fft2(a) * torch.conj(torch.fft.fft2(b))).real
        flat = cc.flatten(-2).argmax(-1)
        assert torch.all(flat == 0), (s, flat)
    # pixel-wise ops (no blur/noise) are monotone per pixel: the ordering of pixel values is kept
    from dataset.transforms import StrongParams
    p = StrongParams(p_blur=0.0, p_noise=0.0, p_jitter=1.0)
    y = strong_photometric(img, np.random.default_rng(1), torch.Generator().manual_seed(1), p)
    assert torch.unique(y[0]).numel() <= torch.unique(img[0]).numel()
    assert torch.all((y[0, 0][img[0, 0] == 0.9] > y[0, 0][img[0, 0] == 0.6].max()))


def test_cutmix_boxes_consistent_across_images_labels_masks():
    g = torch.Generator().manual_seed(0)
    n, H, W, K = 6, 32, 40, 3
    boxes, applied = sample_cutmix_boxes(n, H, W, p=0.5, generator=g)
    assert boxes.shape == (n, 4) and boxes.dtype == torch.int64 and applied.dtype == torch.bool
    assert torch.all(boxes[:, 2] <= W) and torch.all(boxes[:, 3] <= H)
    m = cutmix_box_masks(boxes, H, W)
    assert m.shape == (n, H, W) and m.dtype == torch.bool
    area = m.flatten(1).sum(1).float() / (H * W)
    assert torch.all(area[~applied] == 0)
    assert torch.all((area[applied] > 0.01) & (area[applied] < 0.45))
    for i in range(n):
        x0, y0, x1, y1 = boxes[i].tolist()
        assert m[i].sum() == (x1 - x0) * (y1 - y0)
        if applied[i]:
            assert m[i, y0, x0] and m[i, y1 - 1, x1 - 1]
    perm = sample_cutmix_partners(n, g)
    assert sorted(perm.tolist()) == list(range(n)) and all(perm[i] != i for i in range(n))
    lab = torch.randint(0, K + 1, (n, H, W), generator=g)
    img = lab[:, None].float() / K                       # image encodes its label
    onehot = torch.nn.functional.one_hot(lab, K + 1).permute(0, 3, 1, 2)[:, 1:]   # (n,K,H,W)
    mi = apply_cutmix(img, img[perm], m)
    ml = apply_cutmix(lab, lab[perm], m)
    mk = apply_cutmix(onehot, onehot[perm], m)
    assert torch.equal((mi[:, 0] * K).round().long(), ml)
    assert torch.equal(torch.nn.functional.one_hot(ml, K + 1).permute(0, 3, 1, 2)[:, 1:], mk)
    stack = img[:, None].expand(n, 4, 1, H, W)            # (n,T,C,H,W) slabs share the box
    ms = apply_cutmix(stack, stack[perm], m)
    assert torch.equal(ms[:, 2], mi)
    always, app = sample_cutmix_boxes(4, H, W, p=1.0, generator=g)
    assert app.all()
    never, app = sample_cutmix_boxes(4, H, W, p=0.0, generator=g)
    assert not app.any() and torch.all(never == 0)
