"""The PIB objective and the unit-wise optimiser."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from labpnn import info
from labpnn.batches import sampler
from labpnn.objectives.pib import pib_optimiser
from labpnn.pib import PIBSettings, StepRecord, pib_terms


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 classes separated in 2 of 20 dimensions, hidden under large noise in the rest."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 3.0, (n, 20))
    x[:, :2] = np.array([[0, 0], [2.0, 0], [0, 2.0]])[y] + rng.normal(0, 0.5, (n, 2))
    return x.astype(np.float32), y


def unit(seed: int = 0, d_in: int = 20, d_out: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, d_out), torch.nn.ReLU())


def test_terms_match_separately_computed_mutual_information():
    x, y = blobs(60, 0)
    z = torch.from_numpy(x[:, :5]) ** 2
    for alpha in (1.01, 2.0):
        t = pib_terms(x, y, z, beta=0.3, alpha=alpha, sigma_z=2.0)
        i_xz = info.mutual_information(x, z, alpha, sigma_z=2.0).item()
        i_yz = info.mutual_information(y, z, alpha, sigma_z=2.0).item()
        assert t.i_xz.item() == pytest.approx(i_xz, abs=1e-5)
        assert t.i_yz.item() == pytest.approx(i_yz, abs=1e-5)
        assert t.objective.item() == pytest.approx(i_yz - 0.3 * i_xz, abs=1e-5)
        assert t.loss.item() == -t.objective.item()


@pytest.mark.parametrize("kwargs, name", [
    (dict(beta=-0.1), "beta"),
    (dict(beta=0.01, alpha=0), "alpha"),
    (dict(beta=0.01, sigma_z=0.0), "sigma_z"),
    (dict(beta=0.01, sigma_x=-1.0), "sigma_x"),
])
def test_terms_reject_bad_settings(kwargs, name):
    x, y = blobs(10, 0)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        pib_terms(x, y, x[:, :3], **kwargs)


def test_terms_reject_bad_data():
    x, y = blobs(10, 0)
    with pytest.raises(ValueError, match=r"^y: labels must be a 1-D integer"):
        pib_terms(x, y.astype(float), x, beta=0.0)
    with pytest.raises(ValueError, match=r"^z: has 9 samples"):
        pib_terms(x, y, x[:9], beta=0.0)
    with pytest.raises(ValueError, match=r"^y: has 9 samples"):
        pib_terms(x, y[:9], x, beta=0.0)


def test_settings_defaults_and_validation():
    s = PIBSettings()
    assert (s.alpha, s.beta, s.steps, s.batch_size, s.lr, s.optimiser) == (1.01, 0.01, 300, 256,
                                                                           0.01, "adam")
    assert s.sigma_x is None and s.sigma_z is None and s.weight_decay == 0.0
    for bad in (dict(alpha=0), dict(beta=-1), dict(steps=0), dict(batch_size=1), dict(lr=0),
                dict(optimiser="rmsprop"), dict(weight_decay=-1), dict(sigma_z=0), dict(bogus=1)):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            PIBSettings(**bad)


def test_one_step_improves_the_objective_on_a_fixed_batch():
    x, y = blobs(64, 1)
    model = unit(1)
    opt = pib_optimiser(model, x, x, y, PIBSettings(batch_size=64, lr=1e-3), seed=0)
    with torch.no_grad():
        before = pib_terms(x, y, model(torch.from_numpy(x)), beta=0.01).objective.item()
    record = opt.step(0)
    with torch.no_grad():
        after = pib_terms(x, y, model(torch.from_numpy(x)), beta=0.01).objective.item()
    assert record.loss == pytest.approx(-before, rel=1e-4)   # float32, summed in another order
    assert after > before


def test_training_makes_label_informative_features():
    x, y = blobs(600, 2)
    x_test, y_test = blobs(600, 3)
    model = unit(2)

    def evaluate():
        with torch.no_grad():
            z, z_test = model(torch.from_numpy(x)), model(torch.from_numpy(x_test))
        probe = LogisticRegression(max_iter=1000).fit(z.numpy(), y)
        return info.mutual_information(y_test, z_test).item(), probe.score(z_test.numpy(), y_test)

    i_before, acc_before = evaluate()
    opt = pib_optimiser(model, x, x, y, PIBSettings(batch_size=128, lr=0.02), seed=0)
    records = [opt.step(s) for s in range(40)]
    i_after, acc_after = evaluate()
    assert all(isinstance(r, StepRecord) and isinstance(r.values["I_YZ"], float) for r in records)
    assert i_after > i_before + 0.3
    assert acc_after > 0.75 and acc_after > acc_before + 0.2  # chance is 1/3


def test_resume_from_state_bytes_reproduces_the_uninterrupted_run():
    x, y = blobs(200, 4)
    h = x[:, :12]  # the unit's own input differs from the network input x
    settings = PIBSettings(batch_size=50, lr=0.05)
    full = pib_optimiser(unit(0, 12), h, x, y, settings, seed=7)
    reference = [full.step(s) for s in range(8)]

    first = pib_optimiser(unit(0, 12), h, x, y, settings, seed=7)
    assert [first.step(s) for s in range(4)] == reference[:4]
    saved = first.state_bytes()
    resumed = pib_optimiser(unit(99, 12), h, x, y, settings, seed=7)  # other initial weights
    resumed.load_state_bytes(saved)
    assert [resumed.step(s) for s in range(4, 8)] == reference[4:]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_batches_depend_on_seed_and_step_only():
    x, y = blobs(100, 5)
    rows = np.arange(100, dtype=np.float32)[:, None]  # the unit's input: each row its index

    def batch(size, seed, step):
        b = sampler(x, rows, {"y": y}, size, seed)(step)
        assert torch.equal(b.x, torch.from_numpy(x)[b.h[:, 0].long()])  # the rows stay together
        assert torch.equal(b.targets["y"], torch.from_numpy(y)[b.h[:, 0].long()])
        return b.h[:, 0].long().tolist()

    assert batch(30, 3, 5) == batch(30, 3, 5)
    assert batch(30, 3, 5) != batch(30, 3, 6)
    assert batch(30, 3, 5) != batch(30, 4, 5)
    assert len(set(batch(30, 3, 5))) == 30
    assert sorted(batch(500, 3, 0)) == list(range(100))


def test_sgd_with_weight_decay_trains_too():
    x, y = blobs(64, 6)
    model = unit(3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = pib_optimiser(model, x, x, y, PIBSettings(optimiser="sgd", weight_decay=1e-3,
                                                    batch_size=64), seed=0)
    assert isinstance(opt.optimiser, torch.optim.SGD)
    opt.step(0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_optimiser_rejects_bad_arguments():
    x, y = blobs(20, 0)
    s = PIBSettings()
    with pytest.raises(ValueError, match=r"^y: has 19 samples"):
        pib_optimiser(unit(), x, x, y[:19], s, seed=0)
    with pytest.raises(ValueError, match=r"^x: has 19 samples"):
        pib_optimiser(unit(), x, x[:19], y, s, seed=0)
    with pytest.raises(ValueError, match=r"^inputs: contains NaN"):
        pib_optimiser(unit(), np.full_like(x, np.nan), x, y, s, seed=0)
    with pytest.raises(ValueError, match=r"^seed: "):
        pib_optimiser(unit(), x, x, y, s, seed=-1)
    with pytest.raises(ValueError, match=r"^model: has no trainable parameters"):
        pib_optimiser(torch.nn.ReLU(), x, x, y, s, seed=0)
    opt = pib_optimiser(unit(), x, x, y, s, seed=0)
    with pytest.raises(ValueError, match=r"^step: "):
        opt.step(-1)
    with pytest.raises(ValueError, match=r"^b: the optimiser state is damaged"):
        opt.load_state_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"^b: not a state saved"):
        opt.load_state_bytes(pib_optimiser(unit(0, 20, 5), x, x, y, s, seed=0).state_bytes())


def test_state_bytes_hold_no_pickle_and_damage_is_reported_as_such():
    """The state is an HDF5 image of plain arrays and attributes; a tampered copy is
    reported as damaged (never advice to unpickle it), and older torch archives load."""
    import io

    import h5py

    x, y = blobs(64, 0)
    s = PIBSettings(steps=3, batch_size=32, lr=0.02)
    opt = pib_optimiser(unit(), x, x, y, s, seed=0)
    opt.step(0)
    raw = opt.state_bytes()
    assert raw.startswith(b"\x89HDF\r\n\x1a\n") and b"PK\x03\x04" not in raw[:8]
    with h5py.File(h5py.h5f.open_file_image(raw)) as f:
        assert f.attrs["format"] == "labpnn-state" and f["tensors"].dtype == np.uint8
        data_at = f["tensors"].id.get_chunk_info(0).byte_offset
    tampered = bytearray(raw)
    tampered[data_at + 5] ^= 0x10            # one weight changed: the checksum fails
    with pytest.raises(ValueError, match=r"^b: the optimiser state is damaged"):
        pib_optimiser(unit(), x, x, y, s, seed=0).load_state_bytes(bytes(tampered))
    refused = 0
    for seed in range(20):      # a flipped bit anywhere: restored exactly, or refused as damage
        bad = bytearray(raw)
        rng = np.random.default_rng(seed)
        bad[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        other = pib_optimiser(unit(), x, x, y, s, seed=0)
        try:
            other.load_state_bytes(bytes(bad))
        except ValueError as exc:
            assert str(exc).startswith("b: the optimiser state is damaged"), exc
            refused += 1
            continue
        assert other.state_bytes() == raw
    assert refused >= 3           # (most of a small image is unused space)
    legacy = io.BytesIO()        # what run files held before: a torch.save archive
    torch.save({"model": opt.model.state_dict(), "optimiser": opt.optimiser.state_dict()}, legacy)
    old = pib_optimiser(unit(), x, x, y, s, seed=0)
    old.load_state_bytes(legacy.getvalue())
    assert old.state_bytes() == raw
    evil = io.BytesIO()          # an archive that needs more than tensors unpickled
    torch.save({"model": Payload()}, evil)
    with pytest.raises(ValueError) as info:
        pib_optimiser(unit(), x, x, y, s, seed=0).load_state_bytes(evil.getvalue())
    assert "damaged" in str(info.value) and "weights_only" not in str(info.value)


class Payload:
    """Stands for a crafted object in a tampered archive (unpickling it would run code)."""
