"""Kernel-width rules (labpnn.info.Width, `pib: width_*`): what they score, the isolation guard,
scale invariance, and their options."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from labpnn import info
from labpnn.errors import ConfigError
from labpnn.objectives import OBJECTIVES, ObjectiveContext
from labpnn.pib import PIBSettings, pib_terms

N, C = 256, 10


def clustered(spread: float = 0.05, seed: int = 0):
    """Z perfectly clustered by class (one-hot centres, small spread), balanced labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % C
    return torch.eye(C)[y] + spread * torch.randn(N, C, generator=g), y


def i_yz(z, y, width=None, sigma=None):
    x = torch.randn(N, 5, generator=torch.Generator().manual_seed(1))
    return pib_terms(x, y, z, beta=0.0, width_z=width, sigma_z=sigma).i_yz.item()


def test_clustered_z_scores_h_y_under_the_rules_not_under_the_median():
    z, y = clustered()
    h_y = info.label_entropy(y).item()
    assert h_y == pytest.approx(np.log2(C), abs=1e-3)
    median = i_yz(z, y)                    # the median width: under its 2.05-bit ceiling (docs/pib-tuning.md)
    assert median == pytest.approx(2.00, abs=0.02) and median < 2.05 < h_y - 1
    for rule in ("class", "knn"):
        assert i_yz(z, y, info.Width(rule)) > h_y - 0.05


def test_isolation_is_not_rewarded_by_the_rules():
    """Every pair at one distance (the isolation optimum of a fixed narrow width): a rule's width
    follows that distance, so the score stays that of the median width, far below a clustered Z."""
    y = torch.arange(N) % C
    isolated = torch.eye(N)
    narrow = 0.35 * info.default_sigma(isolated)
    assert i_yz(isolated, y, sigma=narrow) > 3.2       # a fixed narrow width rewards it
    at_median = i_yz(isolated, y)
    z, _ = clustered()
    for rule in ("class", "knn"):
        score = i_yz(isolated, y, info.Width(rule))
        assert score == pytest.approx(at_median, abs=1e-4) and score < 1.5
        assert i_yz(z, y, info.Width(rule)) > score + 1.5


def test_floor_guards_collapsed_clusters():
    y = torch.arange(N) % C
    collapsed = torch.eye(C)[y]                # within-class distances all 0
    median = info.default_sigma(collapsed)
    for floor in (0.1, 0.5):
        w = info.kernel_width(collapsed, info.Width("class", floor=floor), y)
        assert w == pytest.approx(floor * median)
    assert info.kernel_width(collapsed, info.Width("knn", floor=0.2)) == pytest.approx(0.2 * median)


def test_widths_follow_the_scale_in_value_and_gradient():
    z, y = clustered(0.3)
    for w in (info.Width("class"), info.Width("knn", k=5), info.Width("class", scale=2.0)):
        assert info.kernel_width(3 * z, w, y) == pytest.approx(3 * info.kernel_width(z, w, y), rel=1e-5)
        zz = z.clone().requires_grad_(True)
        x = torch.randn(N, 5, generator=torch.Generator().manual_seed(2))
        pib_terms(x, y, zz, beta=0.1, width_z=w, width_x=info.Width("knn")).objective.backward()
        g = zz.grad
        radial = torch.dot(g.reshape(-1), (z - z.mean(0)).reshape(-1)) / (g.norm() * (z - z.mean(0)).norm())
        assert g.norm() > 0 and abs(radial.item()) < 1e-4   # no gain from inflating z
    assert info.kernel_width(z, info.Width("class", scale=2.0), y) == pytest.approx(
        2 * info.kernel_width(z, info.Width("class"), y))


def test_rule_errors_name_what_is_wrong():
    z, y = clustered()
    with pytest.raises(ValueError, match="^sigma_z: width rule 'class' needs the labels"):
        info._gaussian(z, None, "sigma_z", info.Width("class"))
    with pytest.raises(ValueError, match="^y: has 10 samples"):
        info.gram(z, width=info.Width("class"), y=y[:10])
    for bad, what in ((dict(rule="mean"), "rule"), (dict(scale=0), "scale"), (dict(k=0), "k"),
                      (dict(floor=2), "floor")):
        with pytest.raises(ValueError, match=f"^width: {what}"):
            info.Width(**bad)
    # mutual_information reads the labels of a label side for the rule "class"
    assert info.mutual_information(y, z, width_z=info.Width("class")).item() > 3.2


def test_settings_options_and_their_errors():
    s = PIBSettings()
    assert (s.width_x, s.width_z, s.width_floor, s.copies, s.cycles) == ("median", "median", 0.1, 1, 0)
    assert s.width("z") == info.Width() and s.steps_per_cycle == 75
    assert PIBSettings(steps=2).steps_per_cycle == 1 and PIBSettings(cycle_steps=9).steps_per_cycle == 9
    t = PIBSettings(width_z="class", width_scale_z=1.5, width_k=7, width_floor=0.2)
    assert t.width("z") == info.Width("class", 1.5, 7, 0.2) and t.width("x").is_median
    for bad in (dict(width_z="wide"), dict(width_scale_x=0), dict(width_k=0), dict(width_floor=1.5),
                dict(copies=0), dict(cycles=-1), dict(cycle_steps=0)):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            PIBSettings(**bad)
    with pytest.raises(ValidationError, match="sigma_z fixes the width of Z"):
        PIBSettings(sigma_z=1.0, width_z="knn")
    ctx = ObjectiveContext(index=1, in_features=4, out_features=3, n_classes=2, settings=PIBSettings(sigma_z=1.0),
                           seed=0, last=True)
    with pytest.raises(ConfigError, match=r"objective pib \(unit 1\):.*sigma_z fixes"):
        OBJECTIVES.build({"name": "pib", "width_z": "class"}, "objective", ctx)
    obj = OBJECTIVES.build({"name": "pib", "width_z": "class"}, "objective",
                           ObjectiveContext(index=0, in_features=4, out_features=3, n_classes=2,
                                            settings=PIBSettings(width_k=3), seed=0, last=True))
    assert obj.width_z == info.Width("class", k=3) and obj.width_x.is_median
