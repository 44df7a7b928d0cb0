"""ACDC (SSL4MIS layout): standard labeled prefixes on the real sample, items, volumes, variants."""
import os

import pytest
import torch
from torch.utils.data import default_collate

from dataset import DatasetError
from dataset.acdc import labeled_prefix, read_list
from tests._data_fixtures import build, names_of, make_acdc_root


@pytest.mark.parametrize("n,expected", [(1, 32), (3, 68), (7, 136)])
def test_real_acdc_standard_prefixes(shared_acdc, n, expected):
    names = read_list(os.path.join(shared_acdc, "train_slices.list"))
    assert len(names) == 1312
    lab, unl = labeled_prefix(names, n)
    assert len(lab) == expected and len(unl) == 1312 - expected
    assert lab == names[:expected]            # a prefix of the list
    s = build("2d", data_path=shared_acdc, labeled_num=n)
    assert len(s.labeled) == expected
    assert sum(r.num_slices() for r in s.unlabeled.refs) == 1312 - expected
    assert s.class_names == ("RV", "Myo", "LV") and s.num_classes == 3


def test_real_acdc_items_and_volumes(shared_acdc):
    s = build("2d", data_path=shared_acdc, labeled_num=3, image_size=96, slab_len=4)
    it = s.labeled[0]
    assert it["image"].shape == (1, 96, 96) and it["image"].dtype == torch.float32
    assert it["label"].shape == (96, 96) and it["label"].dtype == torch.int64
    assert it["name"] == "patient099_frame01_slice_15"
    assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
    u = s.unlabeled[0]
    for k in ("image_w", "image_s1", "image_s2"):
        assert u[k].shape == (4, 1, 96, 96) and u[k].dtype == torch.float32
    assert u["name"] == "patient100_frame01_slices_1-4"   # 4th patient of the list = first unlabeled
    batch = default_collate([s.labeled[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 96, 96)
    batch = default_collate([s.unlabeled[i] for i in range(2)])
    assert batch["image_s1"].shape == (2, 4, 1, 96, 96)
    assert len(s.val) == 20 and s.test is None
    with pytest.raises(DatasetError, match="test.list"):
        s.require_test()
    for i in (0, 7):
        v = s.val[i]
        assert v["image"].ndim == 3 and v["image"].dtype == torch.float32
        assert v["label"].shape == v["image"].shape and v["label"].dtype == torch.int64
        assert set(torch.unique(v["label"]).tolist()) <= {0, 1, 2, 3}
        assert v["spacing"] is None and v["affine"] is None
        assert abs(float(v["image"].max()) - 1.0) < 1e-6 and float(v["image"].min()) == 0.0
    assert names_of(s.val) == read_list(os.path.join(shared_acdc, "val.list"))


def test_real_acdc_3d_clips(shared_acdc):
    s = build("3d", data_path=shared_acdc, labeled_num=1, image_size=64, video_length=5)
    assert len(s.labeled) == 2           # patient099 ED and ES, built from its slices
    c = s.labeled[0]
    assert c["image"].shape == (5, 1, 64, 64) and c["label"].shape == (5, 64, 64)


def test_slab_grouping_sorting_and_padding(tmp_path):
    root = make_acdc_root(str(tmp_path / "A"), patients=(5, 3), slices=2)
    s = build("2d", data_path=root, labeled_num=1, slab_len=3, image_size=32)
    assert len(s.labeled) == 4
    refs = s.unlabeled.refs
    assert [r.name for r in refs] == ["patient003_frame01", "patient003_frame02"]
    assert refs[0].names == ["patient003_frame01_slice_1", "patient003_frame01_slice_2"]  # sorted by number
    u = s.unlabeled[0]
    assert u["image_w"].shape == (3, 1, 32, 32)
    assert torch.equal(u["image_w"][1], u["image_w"][2])     # 2-slice volume padded by repeating the edge
    assert u["name"] == "patient003_frame01_slices_1-2"


def test_flat_layout_and_test_list(tmp_path):
    root = make_acdc_root(str(tmp_path / "F"), flat=True)
    s = build("2d", data_path=root, labeled_num=2)
    assert len(s.labeled) == 16 and s.test is not None and len(s.test) == 2


def test_labeled_ratio_and_too_many(tmp_path):
    root = make_acdc_root(str(tmp_path / "R"))
    s = build("2d", data_path=root, labeled_ratio=0.34)
    assert len(s.labeled) == 8
    with pytest.raises(DatasetError, match="larger than the 3 patients"):
        build("2d", data_path=root, labeled_num=4)
    # all patients labeled: no unlabeled data -> error for SSL methods, None for supervised
    with pytest.raises(DatasetError, match=r"\(all training volumes are labeled\); -method sss needs unlabeled data"):
        build("2d", data_path=root, labeled_num=3)
    s = build("2d", data_path=root, labeled_num=3, method="supervised")
    assert s.unlabeled is None and s.unlabeled_missing
