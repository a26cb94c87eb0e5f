"""What a run shows besides curves: pictures as uint8 [H, W, 3] arrays, made from plain numpy
inputs (TensorBoard takes them as they are; outputs.MetricLogger.image): the loader's sample
and its mask, the teacher's target beside the student's prediction, the confusion matrix."""
import cv2
import numpy as np

GREY = 128
SEPARATOR = 2


def mask_overlay(frames, mask, object_tokens, grid, patch_size, tubelet_size):
    """Frames [T, H, W, 3] with masked tokens dimmed and object-token cells outlined in red."""
    mask, objects = mask.reshape(grid), object_tokens.reshape(grid)
    out = frames.astype(np.float32).copy()
    for t in range(len(frames)):
        cells = np.kron(mask[t // tubelet_size], np.ones((patch_size, patch_size)))
        out[t] *= np.where(cells[..., None] > 0, 0.3, 1.0)
    out = out.astype(np.uint8)
    for t in range(len(frames)):
        for r, c in zip(*np.nonzero(objects[t // tubelet_size])):
            cv2.rectangle(out[t], (int(c * patch_size), int(r * patch_size)),
                          (int((c + 1) * patch_size - 1), int((r + 1) * patch_size - 1)),
                          (255, 40, 40), 1)
    return out


def sample_picture(frames, mask, object_tokens, grid, patch_size, tubelet_size):
    """[2H, T W, 3]: the frames in a row, and under them the mask drawn over them."""
    overlay = mask_overlay(frames, mask, object_tokens, grid, patch_size, tubelet_size)
    return np.concatenate([np.concatenate(list(f), axis=1) for f in (frames, overlay)], axis=0)


def _cells(values, grid, patch_size):
    """Per-token values [T' H' W', C] -> one image per token slice [T', H' p, W' p, C]."""
    slices = values.reshape(*grid, -1)
    return slices.repeat(patch_size, axis=1).repeat(patch_size, axis=2)


def prediction_picture(target, prediction, masked, grid, patch_size):
    """target [N, D] (every token, as the loss sees it), prediction [N_masked, D] at the token
    indices `masked` -> one row per token slice, target | prediction (one colour code: the
    target's first 3 principal components as RGB) | cosine (white 1, black <= 0; visible
    tokens grey), white lines of SEPARATOR pixels between panels and rows."""
    target, prediction = target.astype(np.float64), prediction.astype(np.float64)
    centred = target - target.mean(0)
    components = np.linalg.svd(centred, full_matrices=False)[2][:3].T  # [D, 3]
    low, high = (centred @ components).min(0), (centred @ components).max(0)

    def colour(features):  # the same projection and range for both
        rgb = ((features - target.mean(0)) @ components - low) / np.maximum(high - low, 1e-9)
        return np.clip(255 * rgb, 0, 255)

    predicted = np.full_like(target[:, :3], GREY)
    predicted[masked] = colour(prediction)
    cosine = np.full((len(target), 3), GREY, np.float64)
    similarity = (target[masked] * prediction).sum(1) / np.maximum(
        np.linalg.norm(target[masked], axis=1) * np.linalg.norm(prediction, axis=1), 1e-9)
    cosine[masked] = 255 * np.clip(similarity, 0, 1)[:, None]
    panels = [_cells(values, grid, patch_size) for values in (colour(target), predicted, cosine)]
    line = np.full((*panels[0].shape[:2], SEPARATOR, 3), 255.0)  # white between panels
    rows = np.concatenate([panels[0], line, panels[1], line, panels[2]], axis=2)
    gap = np.full((SEPARATOR, rows.shape[2], 3), 255.0)  # and between token slices
    return np.concatenate([part for row in rows for part in (gap, row)][1:]).astype(np.uint8)


def confusion_matrix(probs, labels, num_classes):
    """counts [true class, predicted class] of the top-1 predictions."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, probs.argmax(1)), 1)
    return matrix


def confusion_picture(matrix, size=256):
    """Row-normalised counts, white = all of a class, nearest-neighbour scaled to at most
    `size` pixels a side (at least 1 pixel per class)."""
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    cell = max(size // len(matrix), 1)
    image = (255 * rates).astype(np.uint8).repeat(cell, 0).repeat(cell, 1)
    return np.repeat(image[..., None], 3, axis=2)


def picture_due(epoch, epochs, vis_freq):
    """Whether epoch (from 0) ends with pictures: every --vis_freq epochs (default: about 4 per
    run) and at the last one; never with --vis_freq 0."""
    every = max(epochs // 4, 1) if vis_freq is None else vis_freq
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs)
