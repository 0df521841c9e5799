import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coins.train.proxies import InstanceProxies, proxies_per_class


def test_proxies_are_split_by_coarse_class_size() -> None:
    coarse = np.array([0] * 60 + [1] * 30 + [2] * 10)
    assert proxies_per_class(coarse, 20) == {0: 12, 1: 6, 2: 2}
    assert proxies_per_class(np.array([0] * 99 + [1]), 10) == {0: 10, 1: 1}  # at least one each


def test_per_coarse_clustering_never_mixes_coarse_classes() -> None:
    torch.manual_seed(0)
    coarse = np.repeat(np.arange(3), 20)
    proxies = InstanceProxies(coarse, dim=8, P=12, per_coarse=True)
    proxies.recluster(seed=0)
    pseudo = proxies.pseudo.numpy()
    assert (pseudo >= 0).all() and pseudo.max() < len(proxies.proxies)
    for c in range(3):  # each class owns its own block of proxies
        assert set(pseudo[coarse == c]) <= set(range(4 * c, 4 * c + 4))


def test_clustering_recovers_well_separated_groups() -> None:
    centres = F.normalize(torch.eye(4, 16), dim=1)  # 4 orthogonal directions
    bank = F.normalize(centres.repeat_interleave(5, 0) + 0.01 * torch.randn(20, 16), dim=1)
    proxies = InstanceProxies(np.zeros(20, dtype=np.int64), dim=16, P=4, per_coarse=False)
    proxies.bank.copy_(bank)
    proxies.recluster(seed=0)
    groups = proxies.pseudo.view(4, 5)
    assert all(len(set(g.tolist())) == 1 for g in groups)  # each group one pseudo-label
    assert len(set(groups[:, 0].tolist())) == 4  # and different groups different labels


def test_bank_update_moves_entries_towards_keys_and_stays_normalised() -> None:
    proxies = InstanceProxies(np.zeros(6, dtype=np.int64), dim=4, P=2, momentum=0.5)
    key = F.normalize(torch.ones(1, 4), dim=1)
    before = (proxies.bank[2] @ key[0]).item()
    proxies.update(torch.tensor([2]), key)
    assert (proxies.bank[2] @ key[0]).item() > before
    torch.testing.assert_close(proxies.bank.norm(dim=1), torch.ones(6))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_recluster_with_buffers_on_the_gpu() -> None:
    # k-means runs on the CPU; a GPU run of coinsp once failed here on mixed devices
    proxies = InstanceProxies(np.repeat(np.arange(2), 10), dim=8, P=4, per_coarse=True).cuda()
    proxies.recluster(seed=0)
    assert proxies.pseudo.is_cuda and (proxies.pseudo >= 0).all()
