"""Task heads: the Prompter's shortcut equals a full transformer layer, the DPT head takes any
patch grid, the DINO head's prototypes are unit-normalised."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtv.tasks.depth import DPTHead, default_depth_layers, default_features
from mtv.tasks.ground import Prompter, fourier_features
from mtv.tasks.ssl_heads import DINOHead


def full_layer_at_query(
    prompter: Prompter, patches: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """The textbook pre-norm layer over [patches; corner 1; corner 2; query] per region, with
    explicit softmax attention over the whole sequence, read at the query (last) position."""
    batch, regions = boxes.shape[:2]
    width = patches.shape[-1]
    heads = prompter.attn.heads
    out = torch.empty(batch, regions, width, dtype=torch.float64)
    for b in range(batch):
        for r in range(regions):
            corners = fourier_features(
                boxes[b, r].reshape(2, 2), prompter.n_frequencies, prompter.max_frequency
            )
            corners = prompter.corner_proj(corners.double()) + prompter.corner_type
            seq = torch.cat([patches[b], corners, prompter.query[0]], dim=0)  # (N + 3, D)
            h = prompter.norm1(seq)
            q = prompter.attn.q(h).view(-1, heads, width // heads).transpose(0, 1)
            k, v = prompter.attn.kv(h).chunk(2, dim=-1)
            k = k.view(-1, heads, width // heads).transpose(0, 1)
            v = v.view(-1, heads, width // heads).transpose(0, 1)
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)
            attended = (weights @ v).transpose(0, 1).reshape(-1, width)
            x = seq + prompter.attn.proj(attended)
            x = x + prompter.mlp(prompter.norm2(x))
            out[b, r] = x[-1]
    return out


def test_prompter_equals_a_full_layer_read_at_the_query() -> None:
    torch.manual_seed(0)
    prompter = Prompter(32, 4, 4.0, 1e-6, n_frequencies=8, max_frequency=16.0).double()
    with torch.no_grad():  # make the location tokens matter
        prompter.corner_type.normal_()
    patches = torch.randn(2, 16, 32, dtype=torch.float64)
    xy = torch.rand(2, 3, 2, dtype=torch.float64) * 0.5
    boxes = torch.cat([xy, xy + 0.4], dim=-1)
    got = prompter(patches, boxes)
    torch.testing.assert_close(got, full_layer_at_query(prompter, patches, boxes))
    # the region's box changes its embedding
    moved = boxes.clone()
    moved[0, 0] = torch.tensor([0.5, 0.5, 0.9, 0.9], dtype=torch.float64)
    assert not torch.allclose(prompter(patches, moved)[0, 0], got[0, 0])
    torch.testing.assert_close(prompter(patches, moved)[1], got[1])


@pytest.mark.parametrize(
    ("grid", "patch"), [((14, 14), 16), ((7, 7), 32), ((5, 9), 8), ((37, 37), 14), ((4, 4), 8)]
)
def test_dpt_head_predicts_at_the_input_size_for_any_patch_grid(
    grid: tuple[int, int], patch: int
) -> None:
    torch.manual_seed(0)
    head = DPTHead(32, 16, (4, 8, 16, 32))
    rows, cols = grid
    layers = [torch.randn(2, rows * cols, 32) for _ in range(4)]
    size = (rows * patch, cols * patch)
    out = head(layers, grid, size)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_dpt_defaults_follow_depth_anything_v2_base() -> None:
    assert default_depth_layers(12) == [3, 6, 9, 12]
    assert default_depth_layers(24) == [6, 12, 18, 24]
    assert default_features(768) == 128


def test_dino_head_scores_are_cosines_to_unit_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, 32, 8, n_prototypes=10)
    x = torch.randn(5, 16)
    scores = head(x)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(scores, bottleneck @ F.normalize(head.prototypes, dim=-1).T)
    assert scores.shape == (5, 10) and scores.abs().max() <= 1.0 + 1e-6
    with torch.no_grad():
        head.prototypes.mul_(7.0)  # weight norm with the norm fixed at 1: scale is irrelevant
    torch.testing.assert_close(head(x), scores)
