"""Reading clips from video files: decoders and temporal sampling.

Decoders return uint8 frames [T, H, W, 3] (RGB) for a list of frame indices chosen by a
sampling function of the video's length. Every failure is a `VideoDecodeError` naming the file,
so the dataset can skip it and the run can count it (bad_files.py).
"""
import glob
import os

import cv2
import numpy as np

from errors import BadInputError


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoDecodeError(BadInputError):
    """A video (or still image) that cannot be decoded."""


# ---------------------------------------------------------------- temporal sampling
def dense_indices(num_video_frames, num_frames, sampling_rate, rng=None, view=0, num_views=1):
    """`num_frames` frames `sampling_rate` apart (K400-style; all pretraining).

    With `rng` the window starts at a uniformly random frame; without, view `view` of
    `num_views` starts at evenly spaced positions (the centre for one view). A video shorter
    than the window repeats its last frame, as VideoMAE's loader does.
    """
    window = (num_frames - 1) * sampling_rate + 1
    slack = max(num_video_frames - window, 0)
    if rng is not None:
        start = int(rng.integers(slack + 1))
    elif num_views == 1:
        start = slack // 2
    else:
        start = int(round(slack * view / (num_views - 1)))
    return np.minimum(start + np.arange(num_frames) * sampling_rate, num_video_frames - 1)


def segment_indices(num_video_frames, num_frames, rng=None, view=0, num_views=1):
    """One frame per equal segment (TSN-style, SSv2 fine-tuning).

    With `rng` a random frame within each segment; without, view `view` of `num_views` takes
    the frame at offset (view + 0.5) / num_views through each segment.
    """
    segment = num_video_frames / num_frames
    if rng is not None:
        offsets = rng.uniform(0, 1, size=num_frames)
    else:
        offsets = np.full(num_frames, (view + 0.5) / num_views)
    index = np.floor((np.arange(num_frames) + offsets) * segment).astype(int)
    return np.clip(index, 0, num_video_frames - 1)


# ---------------------------------------------------------------- decoders
def _check_file(path):
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file")


def _quiet(library):
    """FFmpeg's own log lowered to panics: a bad file gives the project's one line (with the
    reason), not the library's dozens."""
    if library.__name__ == "decord":
        library.logging.set_level(library.logging.QUIET)
    else:
        library.logging.set_level(library.logging.PANIC)
    return library


def decode_decord(path, choose_indices):
    import decord
    _quiet(decord)
    _check_file(path)
    try:
        reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
        length = len(reader)
        if length <= 0:
            raise VideoDecodeError(path, "no decodable frames")
        indices = choose_indices(length)
        frames = reader.get_batch(list(indices)).asnumpy()
    except VideoDecodeError:
        raise
    except Exception as err:  # decord raises its own DECORDError and plain RuntimeErrors
        raise VideoDecodeError(path, f"decord: {type(err).__name__}: {err}") from err
    return frames


def decode_pyav(path, choose_indices):
    import av
    _quiet(av)
    _check_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            length = stream.frames
            if length <= 0:  # header without a count: count packets, no decoding needed
                length = sum(1 for packet in container.demux(stream) if packet.size)
                container.seek(0)
            if length <= 0:
                raise VideoDecodeError(path, "no decodable frames")
            indices = choose_indices(length)
            wanted = set(int(i) for i in indices)
            last = max(wanted)
            decoded = {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    decoded[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except VideoDecodeError:
        raise
    except Exception as err:  # av.error.* for broken containers and streams
        raise VideoDecodeError(path, f"pyav: {type(err).__name__}: {err}") from err
    missing = wanted.difference(decoded)
    if missing:
        raise VideoDecodeError(path, f"truncated: frame {min(missing)} of {length} could not "
                                     "be decoded")
    return np.stack([decoded[int(i)] for i in indices])


def decode_torchcodec(path, choose_indices):
    """torchcodec (optional: `pip install torchcodec`, with FFmpeg's shared libraries from the
    system, e.g. Debian's libavcodec59); one FFmpeg thread, as the other decoders."""
    from torchcodec.decoders import VideoDecoder
    _check_file(path)
    try:
        reader = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1)
        length = reader.metadata.num_frames or 0
        if length <= 0:
            raise VideoDecodeError(path, "no decodable frames")
        indices = choose_indices(length)
        frames = reader.get_frames_at([int(i) for i in indices]).data.numpy()
    except VideoDecodeError:
        raise
    except Exception as err:  # torchcodec raises RuntimeError / ValueError for bad files
        raise VideoDecodeError(path, f"torchcodec: {type(err).__name__}: {err}") from err
    return frames


DECODERS = {"decord": decode_decord, "pyav": decode_pyav, "torchcodec": decode_torchcodec}


def check_backend(backend):
    """ValueError (one line) when the chosen decoder is not installed."""
    try:
        __import__({"torchcodec": "torchcodec.decoders", "pyav": "av"}.get(backend, backend))
    except (ImportError, OSError, RuntimeError) as err:  # torchcodec: no FFmpeg libraries
        raise ValueError(f"--video_backend {backend} is not usable here ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); use decord or pyav") from err


def read_clip(path, backend, choose_indices):
    """uint8 [T, H, W, 3] of the frames `choose_indices(video_length)` picks.

    A file decord cannot read (it rejects some valid streams, e.g. certain small frame sizes)
    is tried once more with PyAV before it counts as bad (so is one torchcodec rejects)."""
    try:
        frames = DECODERS[backend](path, choose_indices)
    except VideoDecodeError as err:
        if backend == "pyav" or err.reason in ("file not found", "empty file"):
            raise
        try:
            frames = decode_pyav(path, choose_indices)
        except VideoDecodeError as second:
            raise VideoDecodeError(path, f"{err.reason}; {second.reason}") from err
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise VideoDecodeError(path, f"decoded an unexpected array of shape {frames.shape}")
    return frames


# ---------------------------------------------------------------- still images
def list_images(folder):
    paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return paths


def read_image(path):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise VideoDecodeError(path, "not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None]
