"""A researcher's first hour (issue 34): user mistakes end in one line, never a traceback, and no flag is guessed
or ignored in silence."""
import os

import pytest
import torch

import cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")


def parse_error(capsys, argv, script="2d"):
    with pytest.raises(SystemExit) as e:
        cfg.parse_config(argv, script)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_an_abbreviated_flag_is_a_typo_not_a_guess(capsys):
    assert "unrecognized arguments: -max_iter 3" in parse_error(capsys, ["-dataset", "demo", "-max_iter", "3"])
    assert cfg.parse_config(["-dataset", "demo", "-max_iters=3"], "2d").run.max_iters == 3


def test_evaluate_and_predict_take_no_abbreviation(capsys):
    import evaluate
    import predict
    for main, argv, typo in ((evaluate.main, ["-ckpt", "x.pt"], "-spli"),
                             (predict.main, ["-ckpt", "x.pt", "-input", "a", "-out", "b"], "-overla")):
        with pytest.raises(SystemExit) as e:
            main([*argv, typo, "1"])
        assert e.value.code == 2 and f"unrecognized arguments: {typo} 1" in capsys.readouterr().err


def test_prompt_freq_in_2d_is_said_to_be_ignored(capsys):
    config = cfg.parse_config(["-dataset", "demo", "-prompt_freq", "3"], "2d")
    assert config.infer.prompt_freq == 2                            # the default: 2D does not read it
    assert "warning: -prompt_freq is read by train_3d.py only; train_2d.py ignores it" in capsys.readouterr().err
    assert cfg.parse_config(["-dataset", "demo", "-prompt_freq", "3"], "3d").infer.prompt_freq == 3


def test_an_unknown_sam_config_is_refused_while_parsing(capsys, tmp_path):
    """Before the data check or any other work: the data path does not even exist."""
    line = parse_error(capsys, ["-dataset", "acdc", "-data_path", str(tmp_path / "nowhere"), "-sam_config",
                                "sam2_hiera_x"])
    assert "unknown -sam_config 'sam2_hiera_x'; allowed: sam2_hiera_t" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    import run_training
    status = run_training.main(["-dataset", "demo", "-data_path", str(tmp_path / "demo"), "-sam_config", TINY,
                                "-image_size", "64", "-device", "cuda", "-log_dir", str(tmp_path / "logs")], "2d")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == [err[0]] and err[0].startswith("error: -device cuda was requested but CUDA is "
                                                                 "not available"), err
    from sam2_train.engine.device import DeviceError, select_device
    with pytest.raises(DeviceError):
        select_device("cuda")
    assert issubclass(DeviceError, RuntimeError)                  # what callers caught before still catches it
