"""``-compile 1`` compiles the SAM-2 image encoder with torch.compile (inductor, CPU): same features, same
state-dict keys."""
import warnings

import torch

from tests._model_fixtures import TEST_CFG


def test_compile_image_encoder_on_cpu():
    import cfg
    from sam2_train.model.levers import compile_encoders
    from sam2_train.model.sss_net import build_sss_net

    config = cfg.parse_config(["-dataset", "demo", "-sam_config", TEST_CFG, "-image_size", "64", "-compile", "1",
                               "-num_workers", "0"], script="2d")
    assert config.run.compile is True
    model_conf = config.replace(model={"num_classes": 3}).model
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = build_sss_net(model_conf).eval()
        eager = build_sss_net(model_conf).eval()
    eager.load_state_dict(net.state_dict())
    keys = list(net.state_dict())
    from torch._dynamo.utils import counters
    encoder = net.sam.sam.image_encoder
    graphs = counters["stats"]["unique_graphs"]
    assert compile_encoders(net, net) == 1
    assert encoder._compiled_call_impl is not None and list(net.state_dict()) == keys
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        got, want = net.encode(x), eager.encode(x)
    assert counters["stats"]["unique_graphs"] > graphs                      # dynamo traced the encoder
    assert len(got.feats) == len(want.feats) == 3
    for a, b in zip(got.feats, want.feats):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
