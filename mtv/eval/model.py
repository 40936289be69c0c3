"""A trained run, frozen for evaluation: its encoder, text tower, tokenizer and depth head, in
`eval()` mode under `no_grad`, fed exactly as in training (same resize and normalisation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtv.graph import TaskGraph
from mtv.models.tokenizer import TextTokenizer
from mtv.runs.restore import load_trained_run
from mtv.specs import ExperimentSpec
from mtv.tasks.base import PredictsDepth


@dataclass
class Features:
    pooled: Tensor  # (N, D) image embeddings (the joint space)
    patches: Tensor  # (N, rows, cols, D) final-normed patch tokens


class TextEncoder(Protocol):
    def texts(self, texts: list[str]) -> Tensor: ...


def class_embeddings(model: TextEncoder, names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """(len(names), D): per class, the mean of the normalised text embeddings of every
    template filled with its name (prompt ensembling for zero-shot classification)."""
    prompts = [t.format(name) for name in names for t in templates]
    text = F.normalize(model.texts(prompts).float(), dim=-1)
    return text.reshape(len(names), len(templates), -1).mean(1)


class FrozenModel:
    def __init__(
        self,
        spec: ExperimentSpec,
        graph: TaskGraph,
        tokenizer: TextTokenizer | None,
        step: int,
        run_dir: Path | None = None,
    ):
        self.spec, self.graph, self.tokenizer, self.step = spec, graph, tokenizer, step
        self.run_dir = run_dir
        graph.student.eval()
        self.size = graph.plan.env.global_size
        self.device = next(graph.student.parameters()).device

    @property
    def samples_seen(self) -> int:
        return self.step * self.spec.data.batch_size

    @property
    def has_text(self) -> bool:
        return self.graph.student.text is not None and self.tokenizer is not None

    def random_init(self) -> FrozenModel:
        """The same model as the run had it at step 0 without training or `init_from`: the
        weights `runtime.seed` draws (the reference every evaluation is read against)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.runtime.seed)
            graph = TaskGraph(self.spec, pretrained=False)
        return FrozenModel(self.spec, graph.to(self.device), self.tokenizer, 0)

    @classmethod
    def from_run(cls, path: str | Path) -> FrozenModel:
        """A run directory (its latest complete checkpoint) or one checkpoint directory of a run
        (`RUN/checkpoints/step-00000400`)."""
        run = load_trained_run(path)
        return cls(run.spec, run.graph, run.tokenizer, run.step, run.run_dir)

    def _pixels(self, images: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return x.to(self.device)

    @torch.no_grad()
    def images(self, images: np.ndarray, batch: int = 64) -> Features:
        """(N, H, W, 3) uint8 -> pooled embeddings and patch-token maps."""
        pooled, patches = [], []
        encoder = self.graph.student.encoder
        for start in range(0, len(images), batch):
            out = encoder(self._pixels(images[start : start + batch]))
            rows, cols = out.grid
            pooled.append(out.pooled.float().cpu())
            patches.append(out.tokens.reshape(len(out.tokens), rows, cols, -1).float().cpu())
        return Features(torch.cat(pooled), torch.cat(patches))

    @torch.no_grad()
    def layers(
        self, images: np.ndarray, layers: list[int], batch: int = 64
    ) -> tuple[list[Tensor], tuple[int, int]]:
        """(N, H, W, 3) uint8 -> the normed tokens (N, T, D) of each 1-based layer, and the
        patch grid."""
        encoder = self.graph.student.encoder
        out: list[list[Tensor]] = [[] for _ in layers]
        grid = (0, 0)
        for start in range(0, len(images), batch):
            result = encoder(self._pixels(images[start : start + batch]), layers=layers, pool=False)
            grid = result.grid
            for i, layer in enumerate(layers):
                out[i].append(result.layers[layer].float().cpu())
        return [torch.cat(chunks) for chunks in out], grid

    @torch.no_grad()
    def texts(self, texts: list[str], batch: int = 256) -> Tensor:
        if not self.has_text:
            raise ValueError("this run has no text tower (no vl or ground task)")
        out = [
            self.graph.student.text(self.tokenizer(texts[i : i + batch]).to(self.device))
            .float()
            .cpu()
            for i in range(0, len(texts), batch)
        ]
        return torch.cat(out)

    @property
    def has_depth_head(self) -> bool:
        return self.graph.student.task_with(PredictsDepth) is not None

    @torch.no_grad()
    def disparity(self, images: np.ndarray, batch: int = 64) -> Tensor:
        """(N, H, W) relative disparity from the run's own depth head, at the input size."""
        task = self.graph.student.task_with(PredictsDepth)
        if task is None:
            raise ValueError("this run has no task that predicts depth")
        encoder = self.graph.student.encoder
        out = []
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            result = encoder(self._pixels(chunk), layers=task.depth_layers(), pool=False)
            prediction = task.predict_depth(result.layers, result.grid, chunk.shape[1:3])
            out.append(prediction[:, 0].float().cpu())
        return torch.cat(out)
