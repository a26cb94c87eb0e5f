"""Reading clips from video files: decoders and temporal sampling.

Decoders return uint8 frames [T, H, W, 3] (RGB, upright: a display matrix's rotation applied)
for a list of frame indices chosen by a sampling function of the video's length. Every failure
is a `VideoDecodeError` naming the file, so the dataset can skip it and the run can count it
(bad_files.py).
"""
import functools
import glob
import itertools
import math
import os
import stat
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import torch

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


def in_segment(choose_indices, segment, path):
    """choose_indices over frames start..end (inclusive) of the video only: a clip of a
    segment of a long video never leaves it (its end is clipped to the video's last frame)."""
    if segment is None:
        return choose_indices
    start, end = segment

    def choose(num_video_frames):
        if start >= num_video_frames:
            raise VideoDecodeError(path, f"its segment starts at frame {start}, and the video "
                                   f"has {num_video_frames} frames")
        return start + np.asarray(choose_indices(min(end + 1, num_video_frames) - start))
    return choose


# ---------------------------------------------------------------- decoders
def _length(path, length):
    if length <= 0:
        raise VideoDecodeError(path, "no decodable frames")
    return length


def decode(backend, path, choose_indices, **options):
    """One decoder's frames; whatever it raises for a bad file (decord's DECORDError, av.error,
    torchcodec's RuntimeError) becomes a VideoDecodeError naming the file and the decoder. The
    decoders lower FFmpeg's log to panics: a bad file gives the project's one line, not dozens."""
    try:
        return DECODERS[backend](path, choose_indices, **options)
    except VideoDecodeError:
        raise
    except Exception as err:
        raise VideoDecodeError(path, f"{backend}: {type(err).__name__}: {err}") from err


def decode_decord(path, choose_indices):
    import decord
    decord.logging.set_level(decord.logging.QUIET)
    reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    return reader.get_batch(list(choose_indices(_length(path, len(reader))))).asnumpy()


def decode_pyav(path, choose_indices, probe_only=False):
    """PyAV, one thread. The packets (demuxed, not decoded) give every frame's timestamp and
    the keyframes: decoding starts at the keyframe before the first wanted frame, skips the
    non-reference frames it will not keep and stops at the last wanted one; from the start
    where timestamps are unusable or a seek misses (MPEG-TS). `probe_only`: see `probe`."""
    import av
    av.logging.set_level(av.logging.PANIC)
    with av.open(path, options=_HEADER_ONLY) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        demuxed = (packet for packet in container.demux(stream) if packet.size)
        first = next(demuxed, None)  # its frame says which way up the video is (for a probe)
        packets = [(packet.pts, packet.is_keyframe) for packet in itertools.chain(
            [first] if first else [], demuxed)]
        if 0 < len(packets) < stream.frames:
            raise VideoDecodeError(path, f"truncated: {len(packets)} of {stream.frames} frames "
                                         "in the file")
        indices = choose_indices(_length(path, len(packets)))
        if probe_only:
            size = stream.codec_context.height, stream.codec_context.width
            if not all(size):
                raise VideoDecodeError(path, "no frame size in its header")
            turns = _mp4_turns(path)
            if turns is None:  # not an MP4/MOV: its first frame says (0.7 ms at 456x256 here)
                turns = quarter_turns(_first_frame(stream, first) if first and first.is_keyframe
                                      else None)
            return PendingDecode(path, -1, np.asarray(indices), size[::-1] if turns % 2 else size)
        wanted, decoded, frame_at = set(int(i) for i in indices), {}, None
        timestamps = sorted(pts for pts, _ in packets if pts is not None)
        if len(set(timestamps)) == len(packets):
            frame_at = {pts: i for i, pts in enumerate(timestamps)}
            keys = [frame_at[pts] for pts, key in packets if key and frame_at[pts] <= min(wanted)]
            container.seek(timestamps[max(keys, default=0)], stream=stream)
            decoded = _decode_wanted(container, stream, wanted, frame_at := frame_at.get)
    if wanted.difference(decoded):  # e.g. a raw H.264 stream (no timestamps), MPEG-TS
        with av.open(path, options=_HEADER_ONLY) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            decoded = _decode_wanted(container, stream, wanted, frame_at)
    if missing := wanted.difference(decoded):
        raise VideoDecodeError(path, f"truncated: frame {min(missing)} of {len(packets)} could "
                                     "not be decoded")
    return np.stack([decoded[int(i)] for i in indices])


# avformat_find_stream_info decodes the first frame, on a pool of threads, to learn what the
# header says (0.8 ms of av.open's 1.2 at 456x256 here); the clip's decoder is opened without.
_HEADER_ONLY = {"skip_frame": "all", "threads": "1"}


def _decode_wanted(container, stream, wanted, frame_at):
    """{frame index: RGB frame} of the wanted frames, decoding from where the container is;
    frame_at(pts) -> index, or None to count frames from the stream's start."""
    from av import __version__
    from av.video.reformatter import VideoReformatter
    # one converter for the video (frame.to_ndarray(format=) makes one a frame), on one thread:
    # from PyAV 17 it converts on a pool of every core unless told (1.5 ms more CPU a clip here)
    to_rgb = functools.partial(VideoReformatter().reformat, format="rgb24",
                               **({"threads": 1} if int(__version__.split(".")[0]) >= 17 else {}))
    codec, decoded, count, skipping = stream.codec_context, {}, 0, None
    for packet in container.demux(stream):
        if frame_at and packet.pts is not None:  # skip_frame is read per packet (one thread)
            if skipping != (skip := frame_at(packet.pts) not in wanted):
                codec.skip_frame, skipping = "NONREF" if skip else "DEFAULT", skip
        for frame in codec.decode(packet):
            i = frame_at(frame.pts) if frame_at else count
            count += 1
            if i in wanted:  # a view of the RGB frame's plane: the clip's stack is its one copy
                rgb = to_rgb(frame)
                plane = rgb.planes[0]
                decoded[i] = np.rot90(np.frombuffer(plane, np.uint8, rgb.height * plane.line_size)
                                      .reshape(rgb.height, -1)[:, :rgb.width * 3]
                                      .reshape(rgb.height, rgb.width, 3), quarter_turns(frame))
        if len(decoded) == len(wanted):
            break
    return decoded


def _mp4_turns(path):
    """quarter_turns of an MP4/MOV file's first video track, from its track header's matrix
    (what FFmpeg makes the frames' display matrix of), read without decoding: a probe's first
    frame cost 3.7 ms at 640x360 here, more for a phone's 4K. None for another container."""
    def boxes(f, end):  # (type, end) of each box up to `end`, the file left at its contents
        while f.tell() + 8 <= end:
            start = f.tell()
            size, kind = struct.unpack(">I4s", f.read(8))
            size = struct.unpack(">Q", f.read(8))[0] if size == 1 else size or end - start
            if size < 8:
                return
            yield kind, start + size
            f.seek(start + size)
    try:
        with open(path, "rb") as f:
            for moov in (end for kind, end in boxes(f, os.fstat(f.fileno()).st_size)
                         if kind == b"moov"):
                for trak in (end for kind, end in boxes(f, moov) if kind == b"trak"):
                    matrix = handler = None
                    for kind, end in boxes(f, trak):
                        if kind == b"tkhd":  # version 1 has 64-bit times before the matrix
                            version = f.read(1)[0]
                            f.seek(f.tell() + (51 if version else 39))
                            matrix = struct.unpack(">9i", f.read(36))
                        elif kind == b"mdia":
                            for _ in (end for kind, end in boxes(f, end) if kind == b"hdlr"):
                                f.seek(f.tell() + 8)  # version, flags, pre_defined
                                handler = f.read(4)
                    if handler == b"vide" and matrix:
                        return round(-math.degrees(math.atan2(matrix[1], matrix[0])) / 90) % 4
    except (OSError, ValueError, struct.error, IndexError):  # e.g. a raw stream's "sizes"
        pass
    return None


def _first_frame(stream, keyframe):
    """A keyframe packet's frame, or None: a probe's one decode, for the rotation its display
    matrix gives."""
    import av
    try:
        return next(iter(stream.codec_context.decode(keyframe) + stream.codec_context.decode()),
                    None)
    except av.error.FFmpegError:
        return None


def quarter_turns(frame):
    """Counter-clockwise quarter turns that show a PyAV frame upright (its display matrix: a
    phone's portrait video is stored sideways), as decord and torchcodec turn theirs."""
    return round(getattr(frame, "rotation", 0) / 90) % 4 if frame else 0


def decode_torchcodec(path, choose_indices, device="cpu", on_cpu_fallback=None):
    """torchcodec (optional: `pip install torchcodec`, with FFmpeg's shared libraries from the
    system, e.g. Debian's libavcodec59); one FFmpeg thread, as the other decoders. On a CUDA
    `device` it decodes there (NVDEC) and returns the device tensor. torchcodec decodes on the
    CPU, and says nothing, where the driver's NVDEC library is missing or the stream is one
    NVDEC cannot read: `on_cpu_fallback(reason)` is then called."""
    from torchcodec.decoders import VideoDecoder
    reader = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1, device=device)
    if on_cpu_fallback and (fallback := getattr(reader, "cpu_fallback", None)):  # newer versions
        on_cpu_fallback(str(fallback).split("due to: ")[-1])
    indices = choose_indices(_length(path, reader.metadata.num_frames or 0))
    frames = reader.get_frames_at([int(i) for i in indices]).data
    return frames if torch.device(device).type == "cuda" else frames.numpy()


DECODERS = {"decord": decode_decord, "pyav": decode_pyav, "torchcodec": decode_torchcodec}


def check_backend(backend):
    """ValueError (one line) when the chosen decoder is not installed."""
    try:
        __import__({"torchcodec": "torchcodec.decoders", "pyav": "av"}.get(backend, backend))
    except (ImportError, OSError, RuntimeError) as err:  # torchcodec: no FFmpeg libraries
        raise ValueError(f"--video_backend {backend} is not usable here ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); use decord or pyav") from err


def unreadable(path):
    """Why `path` cannot be a video or image without opening it, else '': opening a FIFO
    would block until a writer comes, and a folder or device is no file either."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return err.strerror
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)"
                if stat.S_ISFIFO(info.st_mode) else "a device or socket")
        return f"not a regular file: it is {kind}"
    return "" if info.st_size else "empty file"


def read_clip(path, backend, choose_indices):
    """uint8 [T, H, W, 3] of the frames `choose_indices(video_length)` picks.

    A file one decoder cannot read is tried once more with another before it counts as bad:
    decord rejects some valid streams (e.g. certain small frame sizes) that PyAV reads, PyAV
    (or torchcodec) some that decord reads."""
    if reason := unreadable(path):
        raise VideoDecodeError(path, reason)
    try:
        frames = decode(backend, path, choose_indices)
    except VideoDecodeError as err:
        second = "decord" if backend == "pyav" else "pyav"
        try:
            check_backend(second)
        except ValueError:
            raise err from None  # e.g. no decord wheel for this machine
        try:
            frames = decode(second, path, choose_indices)
        except VideoDecodeError as also:
            raise VideoDecodeError(path, err.reason if also.reason == err.reason else
                                   f"{err.reason}; {also.reason}") from err
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise VideoDecodeError(path, f"decoded an unexpected array of shape {frames.shape}")
    return frames


# ---------------------------------------------------------------- probing (--decode_on device)
@dataclass
class PendingDecode:
    """A clip's frames as a loader worker planned them without decoding (--decode_on device):
    frames `indices` of sample `index`'s file `path`, whose frames are `frame_size` (H, W), of
    which the window `crop` (y0, y1, x0, x1) is kept. It stands in for the decoded array
    (`shape`, `len`, `[:, y0:y1, x0:x1]`) until decode_ahead.decode_pending decodes it."""
    path: str
    index: int
    indices: np.ndarray
    frame_size: tuple
    crop: tuple = None

    def __post_init__(self):
        self.crop = self.crop or (0, self.frame_size[0], 0, self.frame_size[1])

    @property
    def shape(self):
        y0, y1, x0, x1 = self.crop
        return len(self.indices), y1 - y0, x1 - x0, 3

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, window):
        _, rows, columns = window
        (y0, y1, _), (x0, x1, _) = (part.indices(n) for part, n in zip((rows, columns),
                                                                        self.shape[1:3]))
        top, _, left, _ = self.crop
        return PendingDecode(self.path, self.index, self.indices, self.frame_size,
                             (top + y0, top + y1, left + x0, left + x1))


def probe(path, choose_indices):
    """A PendingDecode of the frames choose_indices(video length) picks, from the header, the
    packets (demuxed, counted as PyAV's decode counts) and which way up the video is (an
    MP4's track header, else its first frame)."""
    if reason := unreadable(path):
        raise VideoDecodeError(path, reason)
    return decode("pyav", path, choose_indices, probe_only=True)


# ---------------------------------------------------------------- still images
def list_images(folder):
    paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return paths


def read_image(path):
    if reason := unreadable(path):
        raise VideoDecodeError(path, reason)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise VideoDecodeError(path, "not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None]
