"""SamPredictor: embed an image once, then answer prompts fast.

A drop-in for segment_anything.SamPredictor (same methods and return shapes), plus:
- set_embedding(...) to reuse an embedding computed elsewhere (the embeddings store);
- predict(..., best_only=True): the interactive click, only the highest-IoU mask is upsampled;
- predict_batch(...): many prompts on one image in one decoder pass, optionally low-res only (upsample=False),
  which is what the automatic mask generator wants; upscale_logits(...) upsamples survivors later;
- predict(text=...): a phrase as the prompt, alone or with points and a box, for a model with a text path and
  the text encoder it was trained with (SamPredictor(model, text_encoder=...), see sam_core.text_model); it
  also returns the presence score, the probability that what the phrase names is in the image. A text model
  with a mask recognizer (sam_core.text_recognition) first finds which of the image's masks the phrase names:
  text alone is then answered with the best-scored masks themselves (as the decoder gave them for their grid
  click: mask, predicted IoU, low-res logits), and the presence score is the best one's; score_candidates(text)
  gives every candidate's. It reads the image's pixels, so set_embedding needs image= for it.

Everything that does not depend on the prompt (dense position encoding, the "no mask" dense embedding added to
the image embedding, the first decoder layer's projections of the image tokens, the position terms of every
layer) is computed once in set_image / set_embedding; see MaskDecoder.prepare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .mask_decoder import DecoderContext
from .predictor_inputs import check_boxes, check_mask_input, check_points, to_rgb_uint8
from .sam import Sam
from .text_encoder import TextEncoder
from .text_recognition import (
    Candidates,
    candidate_outputs,
    instance_probabilities,
    mask_descriptors,
    presence_logits,
)
from .transforms import ResizeLongestSide


class SamPredictor:
    def __init__(self, sam_model: Sam, text_encoder: TextEncoder | None = None) -> None:
        """text_encoder: the encoder the model's text path was trained with (needed for predict(text=...));
        its embedding size must be the model's text_dim."""
        self.model = sam_model
        self.text_encoder = text_encoder
        if text_encoder is not None:
            text_dim = sam_model.prompt_encoder.text_dim
            if text_dim == 0:
                raise ValueError(
                    "a text encoder was given but the model has no text path (text_dim=0); load a text model "
                    "(sam_core.text_model.load_text_model)"
                )
            if text_encoder.embed_dim != text_dim:
                raise ValueError(
                    f"the {text_encoder.name} gives {text_encoder.embed_dim}-d embeddings but the model's text "
                    f"path takes {text_dim}-d ones: use the encoder it was trained with"
                )
            text_encoder.eval()
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and everything cached for it."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._context: DecoderContext | None = None
        # H x W x 3 uint8 RGB: what a mask recognizer describes the candidate masks from.
        self._rgb: np.ndarray | None = None
        self._candidates: tuple[list[np.ndarray], torch.Tensor] | None = None
        self._candidate_outputs: Candidates | None = None

    @property
    def recognizes_text(self) -> bool:
        """Whether the model's text path has a mask recognizer (sam_core.text_recognition)."""
        return getattr(self.model.prompt_encoder, "text_recognizer", None) is not None

    # --- setting the image ------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image: H x W x 3 uint8 in image_format ("RGB" or "BGR").

        Also accepted (see sam_core.predictor_inputs): H x W or H x W x 1 grayscale (replicated), H x W x 4
        (alpha dropped), other integer dtypes with values in 0..255, floats in [0, 1]. Refused with a
        ValueError/TypeError: empty images, floats outside [0, 1], NaN, other channel counts and dtypes.
        """
        rgb = to_rgb_uint8(image, image_format, self.model.image_format)
        resized = self.transform.apply_image(rgb)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, rgb.shape[:2])
        if self.recognizes_text:  # the recognizer reads RGB whatever order the image encoder takes
            self._rgb = rgb if self.model.image_format == "RGB" else np.ascontiguousarray(rgb[..., ::-1])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """transformed_image 1 x 3 x h x w (0-255, long side already resized to img_size)."""
        size = self.model.image_encoder.img_size
        if (
            transformed_image.dim() != 4
            or transformed_image.shape[:2] != (1, 3)
            or max(transformed_image.shape[2:]) != size
        ):
            raise ValueError(
                f"set_torch_image expects 1 x 3 x h x w with long side {size}, got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        features = self.model.image_encoder(self.model.preprocess(transformed_image.float()))
        self._set_features(features, tuple(original_image_size), tuple(transformed_image.shape[-2:]))

    @torch.no_grad()
    def set_embedding(
        self,
        embedding: np.ndarray | torch.Tensor,
        original_size: tuple[int, int],
        image: np.ndarray | None = None,
        image_format: str = "RGB",
    ) -> None:
        """Use an image embedding computed elsewhere: C x h x w or 1 x C x h x w (torch or numpy, any float
        dtype), for an image of original_size (H, W). image: the image itself (as set_image takes it, H x W
        matching original_size), which a text model with a mask recognizer reads beside the embedding; other
        prompts do not need it."""
        tensor = torch.as_tensor(
            np.asarray(embedding) if not isinstance(embedding, torch.Tensor) else embedding
        )
        if tensor.dim() == 3:
            tensor = tensor[None]
        pe = self.model.prompt_encoder
        want = (1, pe.embed_dim, *pe.image_embedding_size)
        if tuple(tensor.shape) != want:
            raise ValueError(
                f"embedding must be {want[1:]} or {want} for this model, got {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ValueError("embedding must be finite floating-point values")
        if len(original_size) != 2 or min(int(s) for s in original_size) <= 0:
            raise ValueError(f"original_size must be (H, W) with positive sides, got {original_size}")
        original = (int(original_size[0]), int(original_size[1]))
        input_size = self.transform.get_preprocess_shape(*original, self.model.image_encoder.img_size)
        rgb = None
        if image is not None:
            rgb = to_rgb_uint8(image, image_format, "RGB")
            if rgb.shape[:2] != original:
                raise ValueError(f"image is {rgb.shape[0]} x {rgb.shape[1]} but original_size is {original}")
        self.reset_image()
        self._set_features(tensor.to(self.device, torch.float32), original, input_size)
        if self.recognizes_text:
            self._rgb = rgb

    def _set_features(self, features: torch.Tensor, original_size, input_size) -> None:
        pe = self.model.prompt_encoder
        self.features = features
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._context = self.model.mask_decoder.prepare(features, pe.get_dense_pe(), pe.no_mask_embed.weight)
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The current embedding, 1 x C x h x w (C=256; h=w=64 for the official models)."""
        self._require_image()
        return self.features

    # --- prompting --------------------------------------------------------------------------------------
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        best_only: bool = False,
        text: str | bytes | None = None,
    ) -> tuple[np.ndarray, ...]:
        """One prompt in original-image pixels: point_coords N x 2 (x, y) with point_labels N (1 foreground,
        0 background), box (x0, y0, x1, y1), mask_input 1 x 4h x 4w (a previous low_res_logits), text a phrase
        (str, or UTF-8 bytes; needs a text encoder, see __init__), each optional and combinable.

        Returns numpy (masks M x H x W bool, or float logits if return_logits; iou_predictions M (the scores);
        low_res_logits M x 4h x 4w), and with text a fourth item: the presence score, a float in [0, 1], the
        probability that what the phrase names is in the image (masks for a phrase judged absent are not to be
        trusted). M = 3 with multimask_output, else 1; multimask_output defaults to True (the reference's
        default) without text and to False with it (the text path trains the single-mask output). best_only
        keeps only the mask with the highest predicted IoU (M = 1) and upsamples only that one.
        """
        self._require_image()
        coords, labels = check_points(point_coords, point_labels, self.original_size)
        boxes = check_boxes(box, self.original_size)  # 1 x 4
        mask = check_mask_input(mask_input, self._low_res_size())  # 1 x 1 x h x w
        if multimask_output is None:
            multimask_output = text is None
        # One prompt is a batch of one: its points gain the batch dimension that boxes and mask already have.
        batch = self.predict_batch(
            None if coords is None else coords[None],
            None if labels is None else labels[None],
            boxes,
            mask,
            multimask_output=multimask_output,
            return_logits=return_logits,
            best_only=best_only,
            text=text,
        )
        # numpy has no bfloat16: under autocast (a GPU in bf16) the logits and scores come back as float32.
        outputs = tuple(
            (output[0].float() if output.is_floating_point() else output[0]).cpu().numpy()
            for output in batch[:3]
        )
        if text is None:
            return outputs
        return (*outputs, float(batch[3][0]))

    @torch.no_grad()
    def encode_text(self, texts) -> torch.Tensor:
        """Phrases -> B x text_dim text embeddings with this predictor's text encoder (checked as
        sam_core.text_encoder.check_phrase says)."""
        if self.text_encoder is None:
            raise ValueError(
                "text prompts need a text encoder: SamPredictor(model, text_encoder=...) with the encoder the "
                "model's text path was trained with (sam_core.text_model.load_text_model returns both)"
            )
        return self.text_encoder.encode(texts).to(self.device, torch.float32)

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reference signature: B prompts already in the resized frame (ResizeLongestSide.apply_coords_torch):
        point_coords B x N x 2, point_labels B x N, boxes B x 4, mask_input B x 1 x 4h x 4w.
        Returns (masks B x M x H x W, iou_predictions B x M, low_res_logits B x M x 4h x 4w)."""
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None and tuple(point_labels.shape) != tuple(point_coords.shape[:-1]):
            raise ValueError(
                f"point_labels {tuple(point_labels.shape)} does not match point_coords {tuple(point_coords.shape)}"
            )
        points = (
            None if point_coords is None else (point_coords.to(self.device), point_labels.to(self.device))
        )
        return self._predict(points, boxes, mask_input, multimask_output, return_logits)[:3]

    def predict_batch(
        self,
        point_coords: np.ndarray | torch.Tensor | None = None,
        point_labels: np.ndarray | torch.Tensor | None = None,
        boxes: np.ndarray | torch.Tensor | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        upsample: bool = True,
        best_only: bool = False,
        text: str | bytes | Sequence[str | bytes] | None = None,
    ) -> tuple[torch.Tensor | None, ...]:
        """B prompts on the current image in ONE decoder pass, in original-image pixels:
        point_coords B x N x 2 with point_labels B x N (use label -1 to pad shorter prompts), boxes B x 4,
        mask_input B x 1 x 4h x 4w. Numpy or torch. text: one phrase for every prompt (a grid of clicks asking
        "the striped ellipse here?"), or B phrases, one a prompt; alone, B is the number of phrases.

        Returns torch (masks B x M x H x W or None when upsample=False, iou_predictions B x M,
        low_res_logits B x M x 4h x 4w), and with text the presence probabilities B as a fourth item.
        upsample=False skips the full-resolution masks entirely (the automatic mask generator filters at low
        resolution, then calls upscale_logits on the survivors).
        """
        self._require_image()
        coords, labels = check_points(point_coords, point_labels, self.original_size, batched=True)
        box_array = check_boxes(boxes, self.original_size, batched=True)
        mask = check_mask_input(mask_input, self._low_res_size(), batched=True)
        sizes = {len(a) for a in (coords, box_array, mask) if a is not None}
        if len(sizes) > 1:
            raise ValueError(
                f"point_coords, boxes and mask_input disagree on the number of prompts: {sorted(sizes)}"
            )
        text_embeddings = recognized = recognized_presence = None
        points, box_tensor = self._to_points(coords, labels), self._to_boxes(box_array)
        if text is not None:
            phrases = [text] if isinstance(text, str | bytes | bytearray) else list(text)
            if sizes and len(phrases) not in (1, *sizes):
                raise ValueError(
                    f"{len(phrases)} phrases for {sizes.pop()} prompts: give one phrase for all, or one a prompt"
                )
            text_embeddings = self.encode_text(phrases)
            if self.recognizes_text:
                recognized = self.recognize(text_embeddings)  # one row a phrase, before any expansion
                bias = self.model.prompt_encoder.text_recognizer.presence_bias
                recognized_presence = presence_logits(recognized, bias)  # B, one a phrase
                if not sizes and recognized.shape[1]:  # text alone: the best-scored candidates themselves
                    answer = self._recognized_answer(
                        recognized, multimask_output, return_logits, best_only, upsample
                    )
                    return (*answer, torch.sigmoid(recognized_presence))
                if not sizes:  # no candidate on the image: asked at its whole box (the presence says absent)
                    points, box_tensor = self._whole_image_prompt(len(phrases))
            if sizes and len(phrases) == 1:
                text_embeddings = text_embeddings.expand(next(iter(sizes)), -1)
        masks, iou, low_res, presence = self._predict(
            points,
            box_tensor,
            self._to_tensor(mask),
            multimask_output,
            return_logits,
            best_only=best_only,
            upsample=upsample,
            text=text_embeddings,
        )
        if text is None:
            return masks, iou, low_res
        if recognized is not None:
            presence = recognized_presence.expand(len(iou))
        return masks, iou, low_res, torch.sigmoid(presence)

    def candidates(self) -> tuple[list[np.ndarray], torch.Tensor]:
        """The current image's candidate masks for a mask recognizer (a grid of clicks' masks, H x W bool
        each, largest first) and their descriptors K x DESCRIPTOR_DIM; computed once an image. ValueError for a
        model without a recognizer, or an image set without its pixels."""
        self._require_image()
        if not self.recognizes_text:
            raise ValueError("this model's text path has no mask recognizer (SamConfig.text_recognizer = 0)")
        if self._rgb is None:
            raise ValueError(
                "this text model recognises masks by their pixels, which the predictor was not given: "
                "set_image(image), or set_embedding(embedding, size, image=image)"
            )
        if self._candidates is None:
            found = candidate_outputs(self)
            descriptors = torch.as_tensor(
                mask_descriptors(self._rgb, found.masks, found.quality()), device=self.device
            )
            self._candidates, self._candidate_outputs = (found.masks, descriptors), found
        return self._candidates

    def candidate_outputs(self) -> Candidates:
        """The current image's candidates as the decoder gave them (masks, predicted IoU, low-res logits,
        stability score: sam_core.text_recognition.Candidates); computed once an image, as ``candidates``."""
        self.candidates()
        return self._candidate_outputs

    @torch.no_grad()
    def recognize(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """B x text_dim text embeddings -> B x K logits, one per candidate mask (``candidates``): that the mask is
        (one of) what the phrase names."""
        _, descriptors = self.candidates()
        return self.model.prompt_encoder.text_recognizer(descriptors, text_embeddings.to(self.device))

    @torch.no_grad()
    def score_candidates(self, text: str | bytes) -> tuple[list[np.ndarray], np.ndarray]:
        """The candidate masks (H x W bool each) and the probability K that each is (one of) what ``text`` names,
        with the recognizer's calibrated instance bias (an instance at 0.5 or more)."""
        masks, _ = self.candidates()
        logits = self.recognize(self.encode_text([text]))[0]
        recognizer = self.model.prompt_encoder.text_recognizer
        return masks, instance_probabilities(logits, recognizer).cpu().numpy()

    def _recognized_answer(
        self,
        logits: torch.Tensor,
        multimask_output: bool,
        return_logits: bool,
        best_only: bool,
        upsample: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Logits B x K (K >= 1 candidates) -> (masks B x M x H x W, or None without upsample; predicted IoU
        B x M; low-res logits B x M x 4h x 4w): each phrase's M best-scored candidates, best first, as the decoder
        gave them for their grid click (the masks are exactly ``candidates()``'s). M = 3 with multimask_output
        (an image with fewer candidates repeats its last), else 1, as best_only."""
        found = self._candidate_outputs
        count = 3 if multimask_output and not best_only else 1
        order = logits.argsort(dim=1, descending=True)[:, :count].cpu()
        if order.shape[1] < count:
            order = torch.cat([order, order[:, -1:].expand(-1, count - order.shape[1])], dim=1)
        iou = found.predicted_iou[order].to(self.device)
        low_res = found.low_res_logits[order.to(found.low_res_logits.device)].to(self.device)
        if not upsample:
            return None, iou, low_res
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _whole_image_prompt(self, count: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``count`` prompts of a click at the image's centre and its whole box (points count x 1 x 2 with
        labels count x 1, boxes count x 4, in the encoder's input frame): text alone on an image without
        candidates still gets a mask, which its presence (then 0) marks as not to be trusted."""
        h, w = self.original_size
        clicks = np.tile(np.array([[[w // 2, h // 2]]], np.float64), (count, 1, 1))
        boxes = np.tile(np.array([[0, 0, w - 1, h - 1]], np.float64), (count, 1))
        return self._to_points(clicks, np.ones((count, 1), np.int64)), self._to_boxes(boxes)

    @torch.no_grad()
    def upscale_logits(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits B x M x 4h x 4w -> logits B x M x H x W at the current image's original size."""
        self._require_image()
        return self.model.postprocess_masks(low_res_logits, self.input_size, self.original_size)

    # --- internals --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(
        self,
        points,
        boxes,
        mask_input,
        multimask_output,
        return_logits,
        best_only=False,
        upsample=True,
        text=None,
    ):
        """-> (masks or None, iou, low_res, presence logits B or None)."""
        # Text keywords only where there is text: a prompt encoder or decoder without a text path (a stand-in
        # of the reference's interface) is called exactly as before.
        with_text = {} if text is None else {"text": text}
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input, **with_text)
        low_res, iou, *presence = self.model.mask_decoder.predict_masks(
            self._context,
            sparse,
            dense if mask_input is not None else None,
            multimask_output=multimask_output,
            best_only=best_only,
            **({} if text is None else {"presence": True}),
        )
        presence = presence[0] if presence else None
        if not upsample:
            return None, iou, low_res, presence
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res, presence

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image(...) or set_embedding(...) first")

    def _low_res_size(self) -> tuple[int, int]:
        return tuple(self.model.prompt_encoder.mask_input_size)

    def _to_tensor(self, array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.as_tensor(array, dtype=torch.float32, device=self.device)

    def _to_points(self, coords, labels):
        if coords is None:
            return None
        coords = self.transform.apply_coords(coords, self.original_size)
        points = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
        return points, torch.as_tensor(labels, dtype=torch.int64, device=self.device)

    def _to_boxes(self, boxes):
        if boxes is None:
            return None
        return torch.as_tensor(
            self.transform.apply_boxes(boxes, self.original_size), dtype=torch.float32, device=self.device
        )
