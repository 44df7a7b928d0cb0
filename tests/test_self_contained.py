"""The repository works on its own: the BHSD phantom headers ship in ``dataset/``, nothing reads ``../shared``,
and both README demos run from a bare copy of the tracked files."""
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.test_train_2d import run_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2").items()
       if k != "PYTHONPATH"}


def test_every_shipped_header_row_builds_a_phantom(tmp_path):
    """Each of the 192 rows gives a qform nibabel accepts; a phantom written with it reads back with the
    row's shape, spacing and orientation (x flipped, qfac -1)."""
    from dataset.demo import HEADERS_CSV, _bhsd_volume, _save_nifti, load_headers, phantom_grid
    from dataset.io import read_nifti

    assert HEADERS_CSV.startswith(os.path.join(ROOT, "dataset") + os.sep)
    rows = load_headers()
    assert len(rows) == 192
    scale = 16                                                   # 32 x 32 in-plane: fast
    for i, row in enumerate(rows):
        Z, px, py, pz, b, c, d = row[:7]
        q = np.array([b, c, d], np.float32)                  # as stored in the header
        assert float(q @ q) <= 1.0, i
        affine, (D, H, W), spacing = phantom_grid(row, scale)
        assert (D, H, W) == (Z, 512 // scale, 512 // scale), i
        np.testing.assert_allclose(spacing, (pz, py * scale, px * scale), rtol=1e-4)
        hu, lab = _bhsd_volume(np.random.default_rng(i), D, H, W, spacing, ["IPH"])
        path = str(tmp_path / f"row{i:03d}.nii.gz")
        _save_nifti(path, hu, affine)
        img = nib.load(path)
        assert img.header.get_qform(coded=True)[1] == 1 and img.header["pixdim"][0] == -1
        back, back_spacing, _ = read_nifti(path)
        np.testing.assert_array_equal(back, hu.astype(np.float32))
        np.testing.assert_allclose(back_spacing, spacing, rtol=1e-4)
        os.remove(path)


def test_a_full_header_dump_still_loads(tmp_path):
    """``load_headers(path)`` also reads a nibabel header dump (dim/pixdim columns)."""
    from dataset.demo import load_headers
    dump = tmp_path / "dump.csv"
    dump.write_text('dim,pixdim,quatern_b,quatern_c,quatern_d,qoffset_x,qoffset_y,qoffset_z\n'
                    '"[3, 512, 512, 30, 1, 1, 1, 1]","[-1.0, 0.5, 0.5, 5.0, 0, 0, 0, 0]",0.0,1.0,0.0,1,2,3\n')
    assert load_headers(str(dump)) == [(30, 0.5, 0.5, 5.0, 0.0, 1.0, 0.0, 1.0, 2.0, 3.0)]


def _tracked_files():
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.split("\0") if f]


def test_no_code_reads_the_shared_folder():
    """Nothing the repository runs (dataset/, sam2_train/, func_*/, scripts, README commands) names ../shared."""
    offenders = []
    for f in _tracked_files():
        if f.startswith(("tests/", "docs/")) or not f.endswith((".py", ".sh", ".yaml", ".md", ".txt", ".ini")):
            continue
        text = open(os.path.join(ROOT, f), encoding="utf-8", errors="replace").read()
        if f == "README.md":     # only the commands matter (results tables may describe the shared sample)
            text = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith(("python", "bash", "torchrun")))
        if '"shared"' in text or "'shared'" in text or "../shared" in text or "shared/data" in text:
            offenders.append(f)
    assert offenders == []


@pytest.fixture(scope="module")
def bare_copy(tmp_path_factory):
    """The tracked and untracked-but-not-ignored files of this working tree copied to <tmp>/repo: no ../shared
    beside it, no data/ or logs/."""
    repo = tmp_path_factory.mktemp("clone") / "repo"
    for f in _tracked_files():
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(repo, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(repo, f))
    assert not os.path.exists(os.path.join(os.path.dirname(repo), "shared"))
    return str(repo)


@pytest.mark.parametrize("script", ["train_2d.py", "train_3d.py"])
def test_readme_demo_runs_from_a_bare_copy(bare_copy, script):
    """``python train_xd.py -dataset demo`` (the README command) from the copy, two iterations at 64 px with
    the repository's tiny test config: generates the demo data inside the copy and finishes with a test-split
    summary."""
    kind, kind_script = ("acdc", "2d") if script == "train_2d.py" else ("bhsd", "3d")
    r = subprocess.run([sys.executable, script, "-dataset", "demo", "-image_size", "64", "-max_iters", "2",
                        "-num_workers", "0", "-val_volumes", "1", "-log_dir", f"logs_{kind}",
                        "-sam_config", os.path.join("sam2_train", "configs", "sam2_hiera_test.yaml")],
                       cwd=bare_copy, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(bare_copy, "data", f"demo_{kind}", "DEMO.json"))
    (run,) = run_dirs(os.path.join(bare_copy, f"logs_{kind}"))
    assert os.path.isfile(os.path.join(run, "summary.json"))
    assert os.path.realpath(os.path.join(bare_copy, f"logs_{kind}", f"demo_{kind_script}_latest")) == \
        os.path.realpath(run)                                             # each demo has its own experiment name
    assert "test Dice, infer pcsw:" in r.stdout + r.stderr
