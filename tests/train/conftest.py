"""Fixtures for the training tests: one thread (the machine is shared) and small configs; a stand-in SAM for the
tests of the training passes."""

import numpy as np
import pytest
import torch

from sam_core.train import interactive_loss


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def small_config():
    from sam_core.train import TrainConfig

    return TrainConfig(
        steps=6, masks_per_image=2, warmup_steps=1, correction_points=1, no_point_iterations=1, log_every=0
    )


class StubSam(torch.nn.Module):
    """A stand-in with SAM's prompt encoder and mask decoder interfaces, for tests of the training passes
    (sam_core.train.interactive_loss). A subclass says what one pass does: ``prompted(points, boxes, masks)`` sees
    the prompts of every pass, ``decode(n, multimask_output)`` answers it with low-res logits N x M x 8 x 8 and
    predicted IoU N x M. Embeddings are zeros, C = 8 on a 4 x 4 grid (``IMAGE_EMBEDDING``)."""

    def __init__(self):
        super().__init__()
        stub = self

        class PromptEncoder(torch.nn.Module):
            def get_dense_pe(self):
                return torch.zeros((1, 8, 4, 4))

            def forward(self, points, boxes, masks):
                stub.prompted(points, boxes, masks)
                n = (points[0] if points is not None else boxes).shape[0]
                k = (points[0].shape[1] if points is not None else 0) + (2 if boxes is not None else 0)
                return torch.zeros((n, k, 8)), torch.zeros((n, 8, 4, 4))

        class MaskDecoder(torch.nn.Module):
            def forward(
                self,
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings,
                dense_prompt_embeddings,
                multimask_output,
            ):
                return stub.decode(sparse_prompt_embeddings.shape[0], multimask_output)

        self.prompt_encoder, self.mask_decoder = PromptEncoder(), MaskDecoder()

    def prompted(self, points, boxes, masks) -> None:
        pass

    def decode(self, n: int, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


IMAGE_EMBEDDING = torch.zeros((1, 8, 4, 4))


def stub_interactive_loss(model: StubSam, gt, config, use_box=False, boxes=None, first_region=None):
    """sam_core.train.interactive_loss of a StubSam on masks ``gt`` (N x 16 x 16), its random generators seeded 0."""
    return interactive_loss(
        model,
        IMAGE_EMBEDDING,
        gt,
        use_box,
        boxes,
        config,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        first_region,
    )
