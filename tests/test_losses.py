"""Each loss against an independent transcription of its formula.

The references below follow the math literally with Python loops (and `math` or plain numpy); they
never call the library's helpers, so a wrong normalisation, sign or mask in `mtv.tasks` makes the
comparison fail. Inputs are small, seeded and mostly float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtv.tasks.depth import (
    depth_ssi_trimmed_loss,
    gradient_matching_loss,
    normalise_ssi,
    trimmed_ssi_loss,
)
from mtv.tasks.distill import DistillTaskSpec, local_to_global_loss
from mtv.tasks.ground import region_text_loss
from mtv.tasks.koleo import koleo_loss
from mtv.tasks.masked import block_mask, masked_patch_loss
from mtv.tasks.ssl_heads import Centering, teacher_probabilities, teacher_temperature
from mtv.tasks.vl import siglip_loss

DOUBLE = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit_rows(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Random L2-normalised rows (float64), as the losses receive them."""
    x = torch.randn(rows, dim, generator=_generator(seed), dtype=DOUBLE)
    return x / x.norm(dim=1, keepdim=True)


def _exp(x):
    return torch.exp(x) if isinstance(x, torch.Tensor) else math.exp(x)


def _log(x):
    return torch.log(x) if isinstance(x, torch.Tensor) else math.log(x)


def _log_sigmoid(x):
    """log σ(x) written literally as log(1 / (1 + exp(-x)))."""
    return _log(1 / (1 + _exp(-x)))


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True))


# ------------------------------------------------------------------------------------- vl (SigLIP)


def _siglip_reference(image, text, logit_scale, logit_bias, offset=0):
    """L = -(1/B) Σ_i Σ_j log σ(y_ij (exp(t) v_i·t_j + b)), y_ij = +1 iff j == offset + i else -1.

    Works on nested lists of floats (math) or on 0-d tensors (autograd).
    """
    total = 0.0
    for i in range(len(image)):
        for j in range(len(text)):
            y = 1.0 if j == offset + i else -1.0
            z = _exp(logit_scale) * _dot(image[i], text[j]) + logit_bias
            total = total + _log_sigmoid(y * z)
    return -total / len(image)


def test_siglip_square_batch_matches_transcription():
    image, text = _unit_rows(5, 8, seed=0), _unit_rows(5, 8, seed=1)
    text[2] = image[2]  # one strongly matched pair
    scale, bias = math.log(10.0), -3.0
    got = siglip_loss(
        image, text, torch.tensor(scale, dtype=DOUBLE), torch.tensor(bias, dtype=DOUBLE)
    )
    expected = _siglip_reference(image.tolist(), text.tolist(), scale, bias)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DOUBLE))


def test_siglip_gathered_text_with_offset_matches_transcription():
    """Rank 1 of 2: 3 local images against the 6 gathered captions, positives at j = 3 + i."""
    image, text = _unit_rows(3, 8, seed=2), _unit_rows(6, 8, seed=3)
    scale, bias = 1.7, -2.5
    t, b = torch.tensor(scale, dtype=DOUBLE), torch.tensor(bias, dtype=DOUBLE)
    got = siglip_loss(image, text, t, b, offset=3)
    expected = _siglip_reference(image.tolist(), text.tolist(), scale, bias, offset=3)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DOUBLE))
    # The offset really selects the positives: rank 0's positives give another value.
    wrong = _siglip_reference(image.tolist(), text.tolist(), scale, bias, offset=0)
    assert abs(got.item() - wrong) > 1e-3


def test_siglip_gradients_match_transcription():
    """d L / d(t, b, v, t_j) of the library equal autograd through the loop transcription."""
    image, text = _unit_rows(3, 4, seed=4), _unit_rows(6, 4, seed=5)
    params = {
        "image": image.clone().requires_grad_(),
        "text": text.clone().requires_grad_(),
        "scale": torch.tensor(0.9, dtype=DOUBLE, requires_grad=True),
        "bias": torch.tensor(-1.2, dtype=DOUBLE, requires_grad=True),
    }
    ref_params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    siglip_loss(params["image"], params["text"], params["scale"], params["bias"], 3).backward()
    _siglip_reference(
        ref_params["image"], ref_params["text"], ref_params["scale"], ref_params["bias"], 3
    ).backward()
    for name in params:
        torch.testing.assert_close(params[name].grad, ref_params[name].grad, msg=name)


# ------------------------------------------------------------------------- distill / ssl heads


def _log_softmax_row(row, temperature):
    """log softmax(row / τ)_k = row_k/τ - log Σ_l exp(row_l/τ) (max-shifted for stability)."""
    scaled = [v / temperature for v in row]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_norm for v in scaled]


def _cross_entropy(teacher_row, student_row, student_temp):
    """H(P_t, softmax(p_s / τs)) = -Σ_k P_t,k log softmax(p_s / τs)_k."""
    log_p = _log_softmax_row(student_row, student_temp)
    return -sum(p * lp for p, lp in zip(teacher_row, log_p, strict=True))


def _random_probs(*shape: int, seed: int) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, generator=_generator(seed), dtype=DOUBLE) * 3, -1)


def _local_to_global_reference(teacher_probs, student_scores, student_temp):
    """(1/(B M)) Σ_i Σ_m -Σ_k P_t[i, k] log softmax(p_s[i, m] / τs)_k."""
    batch, crops = len(student_scores), len(student_scores[0])
    total = 0.0
    for i in range(batch):
        for m in range(crops):
            total += _cross_entropy(teacher_probs[i], student_scores[i][m], student_temp)
    return total / (batch * crops)


def test_local_to_global_loss_matches_transcription():
    teacher = _random_probs(3, 7, seed=6)
    student = torch.randn(3, 4, 7, generator=_generator(7), dtype=DOUBLE)
    got = local_to_global_loss(teacher, student, 0.1)
    expected = _local_to_global_reference(teacher.tolist(), student.tolist(), 0.1)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DOUBLE), rtol=1e-6, atol=1e-6)


def test_teacher_probabilities_match_transcription():
    """P_t = softmax((scores - center) / T), row by row."""
    scores = torch.randn(4, 6, generator=_generator(8))
    center = torch.randn(1, 6, generator=_generator(9)) * 0.3
    temperature = torch.tensor(0.05)
    got = teacher_probabilities(scores, center, temperature)
    expected = []
    for row in scores.tolist():
        shifted = [(s - c) / 0.05 for s, c in zip(row, center[0].tolist(), strict=True)]
        top = max(shifted)
        weights = [math.exp(v - top) for v in shifted]
        expected.append([w / sum(weights) for w in weights])
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype))


@pytest.mark.parametrize(
    ("fraction", "total_steps", "steps"),
    [(0.3, 100, [0, 1, 15, 29, 30, 31, 99]), (0.25, 10, [0, 1, 2, 3, 9]), (0.0, 50, [0, 10])],
)
def test_teacher_temperature_linear_warmup(fraction, total_steps, steps):
    """τ_t(step) = 0.04 + (0.07 - 0.04) min(step / W, 1), W = round(fraction * total) (constant
    0.07 when W = 0)."""
    spec = DistillTaskSpec(teacher_temp_warmup_fraction=fraction)
    warmup = round(fraction * total_steps)
    for step in steps:
        expected = 0.07 if warmup <= 0 else 0.04 + 0.03 * min(step / warmup, 1.0)
        got = teacher_temperature(spec, torch.tensor(step), total_steps)
        torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), msg=str(step))


def test_centering_update_matches_ema_of_weighted_row_mean():
    """c <- m c + (1 - m) Σ_r w_r s_r / Σ_r w_r (w = 1 when omitted), one process."""
    momentum = 0.9
    centering = Centering(5, momentum)
    expected = [0.0] * 5
    g = _generator(10)
    for weighted in (False, True, True):
        scores = torch.randn(6, 5, generator=g)
        weights = (torch.rand(6, generator=g) > 0.4).float() if weighted else None
        w = [1.0] * 6 if weights is None else weights.tolist()
        rows = scores.tolist()
        for k in range(5):
            mean = sum(w[r] * rows[r][k] for r in range(6)) / sum(w)
            expected[k] = momentum * expected[k] + (1 - momentum) * mean
        centering.update(scores, weights)
        torch.testing.assert_close(centering.center, torch.tensor([expected]))


# ------------------------------------------------------------------------------- masked (iBOT)


def _masked_reference(teacher_probs, student_scores, weights, student_temp):
    """(1/B) Σ_i (1/n_i) Σ_{j: w_ij = 1} H(P_t[i, j], softmax(p_s[i, j] / τs)), n_i = Σ_j w_ij; an
    image with n_i = 0 contributes 0 (but still counts in B)."""
    batch = len(weights)
    total = 0.0
    for i in range(batch):
        n_i = sum(weights[i])
        if n_i == 0:
            continue
        image_sum = 0.0
        for j, w in enumerate(weights[i]):
            if w == 1:
                image_sum += _cross_entropy(teacher_probs[i][j], student_scores[i][j], student_temp)
        total += image_sum / n_i
    return total / batch


def test_masked_patch_loss_matches_transcription():
    teacher = _random_probs(4, 5, 6, seed=11)
    student = torch.randn(4, 5, 6, generator=_generator(12), dtype=DOUBLE)
    weights = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=DOUBLE
    )
    got = masked_patch_loss(teacher, student, weights, 0.1)
    expected = _masked_reference(teacher.tolist(), student.tolist(), weights.tolist(), 0.1)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DOUBLE), rtol=1e-6, atol=1e-6)


def test_masked_patch_loss_ignores_unmasked_positions():
    teacher = _random_probs(2, 4, 6, seed=13)
    student = torch.randn(2, 4, 6, generator=_generator(14), dtype=DOUBLE)
    weights = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=DOUBLE)
    before = masked_patch_loss(teacher, student, weights, 0.1)
    changed = student.clone()
    changed[weights == 0] = torch.randn(4, 6, generator=_generator(15), dtype=DOUBLE) * 10
    torch.testing.assert_close(masked_patch_loss(teacher, changed, weights, 0.1), before)


@pytest.mark.parametrize(("rows", "cols"), [(4, 4), (6, 5), (8, 8)])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.75, 0.95])
def test_block_mask_exact_count(rows, cols, ratio):
    n_masked = round(ratio * rows * cols)
    for seed in range(6):
        mask = block_mask(rows, cols, n_masked, generator=_generator(seed))
        assert mask.shape == (rows * cols,)
        assert mask.dtype == torch.bool
        assert int(mask.sum()) == n_masked, (seed, n_masked)


def test_block_mask_edges_and_determinism():
    assert int(block_mask(5, 5, 0, generator=_generator(0)).sum()) == 0
    assert bool(block_mask(5, 5, 25, generator=_generator(0)).all())
    with pytest.raises(ValueError):
        block_mask(3, 3, 10)
    masks = [block_mask(8, 8, 30, generator=_generator(42)) for _ in range(2)]
    assert torch.equal(masks[0], masks[1])
    others = [block_mask(8, 8, 30, generator=_generator(seed)) for seed in range(5)]
    assert any(not torch.equal(masks[0], other) for other in others)


# ----------------------------------------------------------------------------------------- koleo


def _koleo_reference(x, eps):
    """-(1/n) Σ_i log(min_{j≠i} ||x̂_i - x̂_j|| + eps), x̂ = L2-normalised rows."""
    unit = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x]
    total = 0.0
    for i, xi in enumerate(unit):
        nearest = min(
            math.sqrt(sum((a - b) ** 2 for a, b in zip(xi, xj, strict=True)))
            for j, xj in enumerate(unit)
            if j != i
        )
        total += math.log(nearest + eps)
    return -total / len(unit)


@pytest.mark.parametrize(("n", "dim", "seed"), [(2, 3, 0), (6, 5, 1), (9, 4, 2)])
def test_koleo_loss_matches_transcription(n, dim, seed):
    x = torch.randn(n, dim, generator=_generator(seed), dtype=DOUBLE) * 3
    got = koleo_loss(x, 1e-8)
    expected = _koleo_reference(x.tolist(), 1e-8)
    torch.testing.assert_close(
        got.double(), torch.tensor(expected, dtype=DOUBLE), rtol=1e-5, atol=1e-5
    )


def test_koleo_loss_finite_for_identical_rows():
    x = torch.randn(4, 6, generator=_generator(3))
    x[1] = x[0]
    x.requires_grad_()
    loss = koleo_loss(x, 1e-8)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------- ground


def _region_text_reference(
    regions,
    texts,
    region_valid,
    text_valid,
    region_names,
    text_names,
    scale,
    bias,
    offset,
    mask_identical_names,
):
    """Σ over valid rows i and valid columns j of -log σ(y_ij z_ij), z_ij = exp(t) o_i·t_j + b,
    y_ij = +1 iff j == offset + i; with mask_identical_names, negative pairs (j != offset + i) with
    equal names are skipped. Divided by the number of valid rows."""
    total = 0.0
    for i in range(len(regions)):
        if not region_valid[i]:
            continue
        for j in range(len(texts)):
            if not text_valid[j]:
                continue
            positive = j == offset + i
            if mask_identical_names and not positive and region_names[i] == text_names[j]:
                continue
            y = 1.0 if positive else -1.0
            z = math.exp(scale) * _dot(regions[i], texts[j]) + bias
            total += -_log_sigmoid(y * z)
    return total / max(sum(region_valid), 1)


def _ground_inputs():
    """Rank 1 of 2: 6 local regions (2 images x 3 slots) against 12 gathered ones; padding slots
    and repeated names on both sides."""
    regions, texts = _unit_rows(6, 5, seed=20), _unit_rows(12, 5, seed=21)
    text_valid = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    text_names = torch.tensor([3, 1, 0, 2, 0, 0, 3, 1, 0, 3, 4, 0])
    region_valid, region_names = text_valid[6:].clone(), text_names[6:].clone()
    return regions, texts, region_valid, text_valid, region_names, text_names


@pytest.mark.parametrize("mask_identical_names", [True, False])
def test_region_text_loss_matches_transcription(mask_identical_names):
    regions, texts, region_valid, text_valid, region_names, text_names = _ground_inputs()
    scale, bias = 1.5, -2.0
    got = region_text_loss(
        regions,
        texts,
        region_valid,
        text_valid,
        region_names,
        text_names,
        torch.tensor(scale, dtype=DOUBLE),
        torch.tensor(bias, dtype=DOUBLE),
        offset=6,
        mask_identical_names=mask_identical_names,
    )
    expected = _region_text_reference(
        regions.tolist(),
        texts.tolist(),
        region_valid.tolist(),
        text_valid.tolist(),
        region_names.tolist(),
        text_names.tolist(),
        scale,
        bias,
        6,
        mask_identical_names,
    )
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DOUBLE))


def test_region_text_loss_padding_and_duplicate_names():
    regions, texts, region_valid, text_valid, region_names, text_names = _ground_inputs()
    t, b = torch.tensor(1.5, dtype=DOUBLE), torch.tensor(-2.0, dtype=DOUBLE)

    def loss(regions, texts, mask=True):
        return region_text_loss(
            regions,
            texts,
            region_valid,
            text_valid,
            region_names,
            text_names,
            t,
            b,
            offset=6,
            mask_identical_names=mask,
        )

    base = loss(regions, texts)
    # Padded regions (rows) and padded texts (columns) do not reach the loss.
    moved = regions.clone()
    moved[~region_valid] = _unit_rows(int((~region_valid).sum()), 5, seed=22)
    torch.testing.assert_close(loss(moved, texts), base)
    moved_texts = texts.clone()
    moved_texts[~text_valid] = _unit_rows(int((~text_valid).sum()), 5, seed=23)
    torch.testing.assert_close(loss(regions, moved_texts), base)
    # Duplicate names exist among valid pairs, so masking them changes the value.
    assert abs(loss(regions, texts, mask=False).item() - base.item()) > 1e-3


# ----------------------------------------------------------------------------------------- depth


def _normalise_reference(depth, valid, eps):
    """Per image over valid pixels: t = lower median (sorted[(n-1)//2], as torch.nanmedian for an
    even count), s = max(mean |d - t|, eps); d* = (d - t)/s at valid pixels, 0 elsewhere."""
    out = np.zeros_like(depth)
    for b in range(depth.shape[0]):
        values = sorted(depth[b][valid[b]].tolist())
        if not values:
            continue
        t = values[(len(values) - 1) // 2]
        s = max(sum(abs(v - t) for v in values) / len(values), eps)
        for y in range(depth.shape[1]):
            for x in range(depth.shape[2]):
                if valid[b, y, x]:
                    out[b, y, x] = (depth[b, y, x] - t) / s
    return out


def _trimmed_reference(residual, valid, trim):
    """Per image: keep the U = floor((1 - trim) M) smallest of its M valid residuals,
    L_i = Σ kept / (2M); then the mean over images."""
    losses = []
    for b in range(residual.shape[0]):
        values = sorted(residual[b][valid[b]].tolist())
        m = len(values)
        keep = math.floor((1 - trim) * m)
        losses.append(sum(values[:keep]) / (2 * max(m, 1)))
    return sum(losses) / len(losses)


def _gradient_matching_reference(difference, valid, scales):
    """Per image Σ_k (Σ |R_k[y, x+1] - R_k[y, x]| + |R_k[y+1, x] - R_k[y, x]|) / M_k over pairs
    whose two pixels are valid, R_k = R[::2^k, ::2^k], M_k its valid count; mean over images."""
    losses = []
    for b in range(difference.shape[0]):
        total = 0.0
        for k in range(scales):
            step = 2**k
            r, m = difference[b, ::step, ::step], valid[b, ::step, ::step]
            height, width = r.shape
            acc = 0.0
            for y in range(height):
                for x in range(width):
                    if x + 1 < width and m[y, x] and m[y, x + 1]:
                        acc += abs(r[y, x + 1] - r[y, x])
                    if y + 1 < height and m[y, x] and m[y + 1, x]:
                        acc += abs(r[y + 1, x] - r[y, x])
            total += acc / max(int(m.sum()), 1)
        losses.append(total)
    return sum(losses) / len(losses)


def _depth_inputs(seed: int, batch: int = 3, height: int = 13, width: int = 11):
    g = _generator(seed)
    target = torch.rand(batch, height, width, generator=g, dtype=DOUBLE) * 2 + 0.5
    prediction = (
        target * 1.7 - 0.4 + 0.3 * torch.randn(batch, height, width, generator=g, dtype=DOUBLE)
    )
    valid = torch.rand(batch, height, width, generator=g) > 0.2
    valid[1, :, : width // 2] = False  # a large hole: images have different valid counts
    return prediction, target, valid


def test_normalise_ssi_matches_transcription():
    _, target, valid = _depth_inputs(30)
    valid[2] = False
    valid[2, 0, :6] = True  # an even count: the median is the lower middle value
    got = normalise_ssi(target, valid, 1e-6)
    expected = _normalise_reference(target.numpy(), valid.numpy(), 1e-6)
    torch.testing.assert_close(got.double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)


def test_normalise_ssi_floors_scale_for_constant_image():
    depth = torch.full((1, 4, 4), 2.5, dtype=DOUBLE)
    depth[0, 0, 0] = 2.5 + 1e-9
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    got = normalise_ssi(depth, valid, 1e-3)
    expected = _normalise_reference(depth.numpy(), valid.numpy(), 1e-3)
    torch.testing.assert_close(got.double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)


def test_trimmed_ssi_loss_matches_transcription():
    _, _, valid = _depth_inputs(31)
    residual = torch.rand(valid.shape, generator=_generator(32), dtype=DOUBLE) * 3
    got = trimmed_ssi_loss(residual, valid, 0.1)
    expected = _trimmed_reference(residual.numpy(), valid.numpy(), 0.1)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DOUBLE))


@pytest.mark.parametrize("scales", [1, 2, 4])
def test_gradient_matching_loss_matches_transcription(scales):
    _, _, valid = _depth_inputs(33)
    difference = torch.randn(valid.shape, generator=_generator(34), dtype=DOUBLE)
    got = gradient_matching_loss(difference, valid, scales)
    expected = _gradient_matching_reference(difference.numpy(), valid.numpy(), scales)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DOUBLE))


def test_depth_ssi_trimmed_loss_matches_transcription():
    prediction, target, valid = _depth_inputs(35)
    ssi, gm = depth_ssi_trimmed_loss(prediction, target, valid, 0.1, 4, 2.0, 1e-6)
    p, t, v = prediction.numpy(), target.numpy(), valid.numpy()
    difference = _normalise_reference(p, v, 1e-6) - _normalise_reference(t, v, 1e-6)
    expected_ssi = _trimmed_reference(np.abs(difference), v, 0.1)
    expected_gm = _gradient_matching_reference(difference, v, 4)
    torch.testing.assert_close(
        ssi.double(), torch.tensor(expected_ssi, dtype=DOUBLE), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        gm.double(), torch.tensor(expected_gm, dtype=DOUBLE), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.0), (3.0, -2.0), (10.0, 5.0), (1.0, 0.7)])
def test_depth_loss_invariant_to_affine_prediction(a, b):
    """d^ -> a d^ + b (a > 0) leaves both L_ssitrim and L_gm unchanged."""
    prediction, target, valid = _depth_inputs(36)
    ssi, gm = depth_ssi_trimmed_loss(prediction, target, valid)
    ssi_affine, gm_affine = depth_ssi_trimmed_loss(a * prediction + b, target, valid)
    torch.testing.assert_close(ssi_affine, ssi, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gm_affine, gm, rtol=1e-5, atol=1e-5)


def test_trimming_drops_exactly_the_largest_residuals_per_image():
    """U = floor(0.9 M) kept per image: scaling the M - U dropped (largest) residuals by 1000
    changes nothing, scaling any kept one does, and trimming is per image, not over the batch."""
    g = _generator(37)
    valid = torch.ones(2, 6, 7, dtype=torch.bool)
    valid[0, :, :2] = False  # M = 30 -> U = 27, 3 dropped
    valid[1, 0, :3] = False  # M = 39 -> U = 35, 4 dropped
    # Distinct positive residuals, so "largest" is unambiguous.
    residual = (torch.randperm(84, generator=g).view(2, 6, 7).double() + 1) / 10
    base = trimmed_ssi_loss(residual, valid, 0.1)

    order = [torch.argsort(torch.where(valid[i], residual[i], -1.0).flatten()) for i in range(2)]
    counts = [int(valid[i].sum()) for i in range(2)]
    keeps = [math.floor(0.9 * m) for m in counts]
    assert keeps == [27, 35]

    blown = residual.clone()
    for i in range(2):
        dropped = order[i][-(counts[i] - keeps[i]) :]
        blown[i].view(-1)[dropped] *= 1000
    torch.testing.assert_close(trimmed_ssi_loss(blown, valid, 0.1), base)

    for i in range(2):
        # Each kept residual (the U smallest valid ones), scaled alone, moves the loss.
        for position in order[i][-counts[i] : -(counts[i] - keeps[i])].tolist():
            changed = residual.clone()
            changed[i].view(-1)[position] *= 3
            assert trimmed_ssi_loss(changed, valid, 0.1).item() > base.item() + 1e-6

    # The batch loss is the mean of the per-image losses, each trimmed on its own: image 1's huge
    # residuals change neither image 0's contribution nor which of image 0's residuals are kept.
    huge = residual.clone()
    huge[1] *= 1e6
    single = trimmed_ssi_loss(huge[:1], valid[:1], 0.1)
    torch.testing.assert_close(single, trimmed_ssi_loss(residual[:1], valid[:1], 0.1))
    both = trimmed_ssi_loss(huge, valid, 0.1)
    other = trimmed_ssi_loss(huge[1:], valid[1:], 0.1)
    torch.testing.assert_close(both, (single + other) / 2)
    expected = _trimmed_reference(huge.numpy(), valid.numpy(), 0.1)
    torch.testing.assert_close(both, torch.tensor(expected, dtype=DOUBLE))
