"""Uploaded images: read within the limits (count 413, bytes 413, type 415), decoded, embedded."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import File, UploadFile

from coins.serve.api.decode import check_content_type, decode_image
from coins.serve.api.deps import loaded
from coins.serve.api.errors import ApiError
from coins.serve.api.observability import ServiceMetrics
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import ServiceState

ImagesForm = Annotated[list[UploadFile], File(description="One or more query images.")]
Payload = tuple[str, bytes, str | None]  # file name, bytes, declared content type


async def read_images(images: list[UploadFile], settings: ServeSettings) -> list[Payload]:
    """The uploaded files' bytes; 413 over the count or size limit, 415 for a non-image type."""
    if len(images) > settings.max_images:
        raise ApiError(
            413, f"{len(images)} images is more than this server's limit of {settings.max_images}"
        )
    payloads: list[Payload] = []
    for i, upload in enumerate(images):
        name = upload.filename or f"image {i}"
        check_content_type(upload.content_type, name)
        data = await upload.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise ApiError(
                413,
                f"{name}: larger than this server's limit of {settings.max_image_bytes:,} bytes",
            )
        payloads.append((name, data, upload.content_type))
    return payloads


def embed_uploads(
    state: ServiceState,
    metrics: ServiceMetrics,
    settings: ServeSettings,
    payloads: list[Payload],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode and embed: vectors [N, D] and coarse probabilities [N, C] (or None)."""
    embedder, _ = loaded(state)
    with metrics.time_stage("decode"):
        images = [
            decode_image(
                data,
                name=name,
                content_type=ctype,
                max_pixels=settings.max_image_pixels,
                max_aspect=settings.max_image_aspect,
            )
            for name, data, ctype in payloads
        ]
    metrics.images.inc(len(images))
    try:
        with metrics.time_stage("preprocess"):
            x = np.stack([embedder.to_array(img) for img in images])  # [N, C, S, S]
        with metrics.time_stage("embed"):
            result = embedder.embed_arrays(x)
    except ValueError as err:  # EmbedError is a ValueError: images the model cannot take
        raise ApiError(422, f"could not embed the images: {err}") from err
    probs = result.coarse_probs
    return np.asarray(result.vectors, dtype=np.float32), None if probs is None else np.asarray(
        probs
    )
