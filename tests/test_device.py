"""`pib.device`: auto picks CUDA when present; the CUDA path equals the CPU path (skipped
without a GPU)."""

import pytest
import torch

from labpnn.batches import sampler
from labpnn.objectives.pib import PIBObjective
from labpnn.pib import PIBSettings, UnitOptimiser, pib_terms, resolve_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return x, (x[:, 0] > 0).long(), torch.randn(n, 6, generator=g)


def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="pib.device.*'cuda'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device"):
        PIBSettings(device="gpu")
    assert PIBSettings().device == "auto"


def _trained(device: str) -> torch.nn.Module:
    x, y, h = _data(80)
    settings = PIBSettings(steps=3, batch_size=40, device=device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU())
    opt = UnitOptimiser(model, PIBObjective(beta=0.1), sampler(x, h, {"y": y}, 40, 0), settings, 0)
    for s in range(3):
        opt.step(s)
    opt.finish()
    return model


def test_cpu_device_trains_on_the_cpu():
    model = _trained("cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


@CUDA
@pytest.mark.parametrize("estimator", ["exact", "fast"])
def test_pib_terms_on_cuda_equal_the_cpu(estimator):
    x, y, z = _data()
    cpu = pib_terms(x, y, z, beta=0.1, estimator=estimator)
    gpu = pib_terms(x.cuda(), y.cuda(), z.cuda(), beta=0.1, estimator=estimator)
    for a, b in zip(cpu, gpu):
        assert b.item() == pytest.approx(a.item(), abs=1e-4)


@CUDA
def test_unit_optimisation_on_cuda_equals_the_cpu():
    cpu, gpu = _trained("cpu"), _trained("cuda")
    assert all(p.device.type == "cpu" for p in gpu.parameters())  # finish() brought it back
    for a, b in zip(cpu.parameters(), gpu.parameters()):
        assert torch.allclose(a, b, atol=1e-4)
