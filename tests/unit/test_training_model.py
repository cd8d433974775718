"""A seed ensemble fused into one grouped network computes what the ensemble computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.model import GroupedResNet9, LogitMean, ResNet9, fuse_members  # noqa: E402


def _trained_looking(width: int, seed: int) -> ResNet9:
    """A ResNet9 whose BatchNorms hold statistics of their own, so that a member mixed up would show."""
    torch.manual_seed(seed)
    network = ResNet9(2, width=width)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return network


@pytest.mark.parametrize("count", [2, 3])
def test_a_fused_ensemble_gives_the_mean_of_its_members_logits(count: int) -> None:
    ensemble = LogitMean([_trained_looking(4, seed) for seed in range(count)]).eval()
    fused = fuse_members(ensemble)
    assert isinstance(fused, GroupedResNet9) and fused.members == count and not fused.training
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert (fused(images) - ensemble(images)).abs().max() < 1e-5
        # Swapping two members' weights changes nothing in the ensemble, but the fusion must follow the members.
        assert (
            fused(images) - fuse_members(LogitMean(list(reversed(ensemble.members))).eval())(images)
        ).abs().max() < 1e-5


def test_what_cannot_be_fused_is_served_as_it_is() -> None:
    single = _trained_looking(4, 0)
    assert fuse_members(single) is single
    one_member = LogitMean([single])
    assert fuse_members(one_member) is one_member
    mixed_widths = LogitMean([_trained_looking(4, 0), _trained_looking(8, 1)])
    assert fuse_members(mixed_widths) is mixed_widths
