"""Does an image embedding keep what text names? Linear probes of colour and texture words from the embedding,
against the same probes from the pixels' own colour statistics, on the synthetic scenes.

A text prompt ("the red ellipse") can only find what the image side carries: the text path (sam_core.text_model)
reads the frozen encoder's embedding. Each embedding cell (a patch of 256 / h pixels) is labelled with the colour
word (sam_core.phrases.colour_words, cells whose colour has no certain word left out) and the texture of the
smallest object covering its centre; a linear classifier is trained on ``--train`` scenes and scored on
``--test`` held-out ones, from the embedding's 3x3 neighbourhood of cells and, as the peer, from the mean and
standard deviation of RGB over the same cells.

    .venv/bin/python benchmarks/bench_embedding_probe.py                     # the embedded model
    .venv/bin/python benchmarks/bench_embedding_probe.py --checkpoint run/best.pt

The last line is the ratio of the embedding's colour accuracy to the pixels'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_core.phrases import PALETTE, colour_words  # noqa: E402
from sam_core.synthetic import TEXTURES, make_scene, split_seeds  # noqa: E402
from sam_core.train import encode  # noqa: E402

COLOURS = list(PALETTE)
SIZE = 256


def features(model, seeds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(embedding features N x 9C, pixel features N x 54, colour labels N (-1: no certain word), texture labels
    N) for every embedding cell of the scenes whose centre lies on an object."""
    embedded, pixels, colour, texture = [], [], [], []
    for seed in seeds:
        scene = make_scene(seed, SIZE)
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float()[None]
        with torch.no_grad():
            embedding = encode(model, image)
        h, w = embedding.shape[-2:]
        step = SIZE // h
        mean = F.avg_pool2d(image, step)
        std = (F.avg_pool2d(image * image, step) - mean**2).clamp(min=0).sqrt()
        # Each cell sees its 3x3 neighbourhood: a texture is a pattern across pixels.
        near_e = F.unfold(embedding, 3, padding=1)[0].reshape(-1, h, w)
        near_p = F.unfold(torch.cat([mean, std], 1), 3, padding=1)[0].reshape(-1, h, w)
        owner = np.full((SIZE, SIZE), -1)
        for i in sorted(range(len(scene.masks)), key=lambda i: -int(scene.masks[i].sum())):
            owner[scene.masks[i]] = i  # smaller objects (parts) over the wholes they lie in
        centres = owner[step // 2 :: step, step // 2 :: step]
        for y, x in zip(*np.nonzero(centres >= 0), strict=True):
            attributes = scene.attributes[centres[y, x]]
            word, _ = colour_words(attributes["colour"])
            embedded.append(near_e[:, y, x].numpy())
            pixels.append(near_p[:, y, x].numpy())
            colour.append(COLOURS.index(word) if word else -1)
            texture.append(TEXTURES.index(attributes["texture"]))
    return np.array(embedded), np.array(pixels), np.array(colour), np.array(texture)


def probe_accuracy(x_train, y_train, x_test, y_test, classes: int, steps: int = 300) -> float:
    """Test accuracy of a linear classifier (standardised inputs, Adam, full batch) over the labelled rows."""
    torch.manual_seed(0)
    keep, keep_test = y_train >= 0, y_test >= 0
    mu, sd = x_train[keep].mean(0), x_train[keep].std(0) + 1e-6
    a = torch.tensor((x_train[keep] - mu) / sd, dtype=torch.float32)
    b = torch.tensor(y_train[keep])
    linear = torch.nn.Linear(a.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), 1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(linear(a), b).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = linear(torch.tensor((x_test[keep_test] - mu) / sd, dtype=torch.float32)).argmax(1)
    return float((predicted.numpy() == y_test[keep_test]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a SAM checkpoint (default: the embedded model)")
    parser.add_argument("--config", help="the checkpoint's config when it records none (Meta's: vit_b, ...)")
    parser.add_argument("--train", type=int, default=40, help="training scenes of the probes")
    parser.add_argument("--test", type=int, default=20, help="held-out scenes they are scored on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.checkpoint:
        from sam_core.build import build_sam
        from sam_core.checkpoint import config_name, read_checkpoint

        name = args.config or config_name(read_checkpoint(args.checkpoint))
        if name is None:
            raise SystemExit(f"{args.checkpoint} records no config: pass --config (vit_b, vit_l, vit_h, ...)")
        model = build_sam(name, checkpoint=args.checkpoint).eval()
    else:
        from sam_core.embedded import load_embedded

        model = load_embedded().eval()
    train = features(model, split_seeds("train", args.train))
    test = features(model, split_seeds("test", args.test))
    print(
        f"{len(train[0])} training cells, {len(test[0])} test cells, embedding {train[0].shape[1] // 9} channels"
    )
    scores = {}
    for name, column, classes in (("colour", 2, len(COLOURS)), ("texture", 3, len(TEXTURES))):
        labels = test[column][test[column] >= 0]
        majority = np.bincount(labels).max() / len(labels)
        embedding = probe_accuracy(train[0], train[column], test[0], test[column], classes)
        pixels = probe_accuracy(train[1], train[column], test[1], test[column], classes)
        scores[name] = (embedding, pixels)
        print(f"{name:>8}: embedding {embedding:.3f}, pixels {pixels:.3f}, the majority word {majority:.3f}")
    embedding, pixels = scores["colour"]
    print(f"colour from the embedding / from the pixels: {embedding / pixels:.2f}x")


if __name__ == "__main__":
    main()
