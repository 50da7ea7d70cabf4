"""FIMP task: masked image reconstruction (METHODS.md, "Tasks and metrics").

Each image is a node whose tokens are its patches (ViT's tokenizer: p x p pixels per token, raster
order). A share of every image's patches is hidden, fixed per seed; the graph joins each image to
the k images closest on the patches both show, so hidden pixels never shape the graph. Hidden
patches are reconstructed; MSE on them (pixels scaled to [0, 1]).

Datasets: scikit-learn's ``digits`` (1,797 images, 8 x 8, shipped with scikit-learn) and
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (idx files, 28 x 28).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fimp.tasks.fmri import window_mask
from fimp.tasks.nodes import NodeTask
from fmgnn.cohort import CohortError
from fmgnn.config import LocalPath

FASHION_MNIST = "/usr/share/dataset-fashion-mnist"


@dataclass
class ImageTaskConfig:
    """Args:
        dataset: ``digits`` or ``fashion_mnist``.
        path: Folder of the Fashion-MNIST idx files (``train-images-idx3-ubyte[.gz]``).
        patch: Patch side in pixels (digits 8 x 8 -> 2: 16 tokens of 4 pixels).
        limit: Use the first ``limit`` images (0: all).
        k: Neighbours per image.
        mask_ratio: Share of each image's patches hidden (at least one).
    """

    dataset: str = "digits"
    path: LocalPath = FASHION_MNIST
    patch: int = 2
    limit: int = 0
    k: int = 8
    mask_ratio: float = 0.25


def read_idx_images(path: Path) -> np.ndarray:
    """Images (n, rows, cols) from an idx3-ubyte file, gzipped or not."""
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(data) < 16 or int.from_bytes(data[:4], "big") != 0x803:
        raise CohortError(f"{path}: not an idx3-ubyte image file")
    n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + n * rows * cols:
        raise CohortError(f"{path}: header says {n} images of {rows}x{cols}, file holds {len(data) - 16} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_images(config: ImageTaskConfig) -> np.ndarray:
    """Images scaled to [0, 1], (n, side, side)."""
    if config.dataset == "digits":
        from sklearn.datasets import load_digits

        images = load_digits().images / 16.0
    elif config.dataset == "fashion_mnist":
        folder = Path(config.path)
        found = [folder / name for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
                 if (folder / name).is_file()]
        if not found:
            raise CohortError(f"{folder}: no train-images-idx3-ubyte[.gz]; install Debian's dataset-fashion-mnist "
                              "or set images.path")
        images = read_idx_images(found[0]) / 255.0
    else:
        raise CohortError(f"images.dataset: {config.dataset!r} is not digits or fashion_mnist")
    return images[: config.limit or None].astype(np.float32)


def to_patches(images: np.ndarray, patch: int) -> Tensor:
    """(n, side, side) -> (n, (side / patch)^2, patch^2) in raster order."""
    n, side, _ = images.shape
    if side % patch:
        raise CohortError(f"images.patch: {patch} does not divide the image side {side}")
    g = side // patch
    tiles = images.reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4)
    return torch.as_tensor(np.ascontiguousarray(tiles).reshape(n, g * g, patch * patch))


def visible_distances(x: Tensor, masks: Tensor, others: Tensor | None = None,
                      others_masks: Tensor | None = None) -> Tensor:
    """Mean squared distance from each image of ``x`` to each of ``others`` (default: ``x``) over the patches
    both show, (len(x), len(others))."""
    others, others_masks = (x, masks) if others is None else (others, others_masks)
    visible, others_visible = (~masks).float(), (~others_masks).float()
    total, count = torch.zeros(len(x), len(others)), torch.zeros(len(x), len(others))
    for t in range(x.shape[1]):
        both = visible[:, t:t + 1] @ others_visible[:, t:t + 1].T
        total += both * torch.cdist(x[:, t], others[:, t]) ** 2
        count += both * x.shape[2]
    return total / count.clamp_min(1)


def visible_neighbours(x: Tensor, masks: Tensor, k: int, block_pairs: int = 2**22) -> Tensor:
    """``knn_edges(-visible_distances(x, masks), k)`` a block of images at a time: O(block x N) memory instead
    of the N x N matrix (60,000 Fashion-MNIST images: 14 GB in one piece). No KD-tree applies: the distance
    of a pair depends on which patches both images show."""
    n = len(x)
    k = min(k, n - 1)
    block = max(1, block_pairs // n)
    neighbours = []
    for start in range(0, n, block):
        scores = -visible_distances(x[start:start + block], masks[start:start + block], x, masks)
        rows = torch.arange(len(scores))
        scores[rows, rows + start] = float("-inf")  # not its own neighbour
        neighbours.append(scores.topk(k, dim=1).indices)
    neighbours = torch.cat(neighbours)  # (N, k)
    return torch.stack([neighbours.reshape(-1), torch.arange(n).repeat_interleave(k)])


def load_images(config: ImageTaskConfig, seed: int) -> NodeTask:
    x = to_patches(read_images(config), config.patch)
    masks = window_mask(len(x), x.shape[1], config.mask_ratio, torch.Generator().manual_seed(30_000 + seed))
    edges = visible_neighbours(x, masks, config.k)
    grid = int(round(x.shape[1] ** 0.5))
    return NodeTask(x=x, edge_index=edges, token_names=[f"patch{t}" for t in range(x.shape[1])],
                    name=config.dataset, masks=masks, shape={"grid": grid, "patch": config.patch})
