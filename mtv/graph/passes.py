"""Running a plan's encoder passes (`ViewPass`) through an encoder: the student's and the EMA
teacher's alike, each through its own encoder."""

from __future__ import annotations

import torch

from mtv.data.batch import Batch
from mtv.graph.plan import ViewPass
from mtv.models.vit import EncoderOutput, VisionTransformer
from mtv.tasks.base import GLOBAL, MASKED


def encode_pass(encoder: VisionTransformer, view: ViewPass, batch: Batch) -> EncoderOutput:
    """One pass of `encoder` over the view `view` names, with the outputs it asks for."""
    if view.view == GLOBAL:
        return encoder(batch.images, layers=view.layers, pool=view.pooled)
    if view.view == MASKED:
        if batch.patch_mask is None:
            raise ValueError("the masked view needs batch.patch_mask")
        return encoder(batch.images, mask=batch.patch_mask, pool=view.pooled)
    if batch.local_images is None:
        raise ValueError("the local view needs batch.local_images")
    return encoder(batch.local_images.flatten(0, 1), pool=view.pooled)


def encode_passes(
    encoder: VisionTransformer, passes: tuple[ViewPass, ...], batch: Batch
) -> dict[str, EncoderOutput]:
    """Every pass of `passes`, by view name. The clean and the masked global view, when both are
    asked for, go through the encoder as one batch of 2B (the same FLOPs in larger matmuls; a
    zero mask leaves the clean half exactly as an unmasked pass would)."""
    views = {p.view: p for p in passes}
    out: dict[str, EncoderOutput] = {}
    if GLOBAL in views and MASKED in views:
        clean, masked = views.pop(GLOBAL), views.pop(MASKED)
        if batch.patch_mask is None:
            raise ValueError("the masked view needs batch.patch_mask")
        both = encoder(
            torch.cat([batch.images, batch.images]),
            mask=torch.cat([torch.zeros_like(batch.patch_mask), batch.patch_mask]),
            layers=tuple(sorted({*clean.layers, *masked.layers})),
            pool=clean.pooled or masked.pooled,
        )
        out[GLOBAL], out[MASKED] = both.split(batch.size)
    for view in views.values():
        out[view.view] = encode_pass(encoder, view, batch)
    return {p.view: out[p.view] for p in passes}
