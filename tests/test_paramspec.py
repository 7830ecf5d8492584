import pytest
import torch

from ltdi_ray.base_nets import MLP, ConvNet, ParamSpec
from ltdi_ray.errors import DataError


def test_sinusoid_mlp_has_the_maml_size():
    assert ParamSpec.from_module(MLP(1, [40, 40], 1)).dim == 1761


def test_flat_dict_round_trip_with_batch_dims():
    net = ConvNet(ways=5, channels=8, depth=4)
    spec = ParamSpec.from_module(net)
    params = {n: p.detach() for n, p in net.named_parameters()}
    flat = spec.flatten(params)
    assert flat.shape == (spec.dim,)
    back = spec.unflatten(flat)
    assert all(torch.equal(back[n], params[n]) for n in spec.names)
    batched = torch.stack([flat, 2 * flat, 3 * flat])
    unflat = spec.unflatten(batched)
    assert unflat["head.weight"].shape == (3, 5, 8)
    assert torch.equal(spec.flatten(unflat), batched)


def test_functional_call_on_flat_vector_matches_module():
    net = MLP(1, [40, 40], 1)
    spec = ParamSpec.from_module(net)
    flat = spec.flatten(dict(net.named_parameters())).detach()
    x = torch.randn(7, 1)
    out = torch.func.functional_call(net, spec.unflatten(flat), (x,))
    assert torch.allclose(out, net(x))


def test_json_round_trip_and_mismatch_errors():
    spec = ParamSpec.from_module(MLP(1, [4], 1))
    assert ParamSpec.from_json(spec.to_json()) == spec
    with pytest.raises(DataError, match="needs 13"):
        spec.unflatten(torch.zeros(12))
    with pytest.raises(DataError, match="dim=99"):
        ParamSpec.from_json({**spec.to_json(), "dim": 99})
