"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny tensors run faster on one thread than on shared, oversubscribed CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_networks(monkeypatch):
    """``trainer.train.build`` builds a 2-block ViT and a small head; call it to resize the head."""
    from tests.tiny_run import patch_tiny_networks

    patch_tiny_networks(monkeypatch)
    return lambda **dims: patch_tiny_networks(monkeypatch, **dims)
