"""--decode_on device: the training process decodes what the loader's workers only probed.

A worker reads a video's header and packet list (video_io.probe), plans its clips from them as
it would from the frames, and hands the batch over with its decodes pending
(rendering.PendingSources). `DecodeAhead` decodes them here, one batch ahead of the step, in a
few threads: torchcodec on the GPU (NVDEC) when it is the backend and the device is CUDA, else
the backend on the CPU. Then the batch is rendered on the device as --augment_on device does.
"""
import collections
import contextlib
import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rendering import PendingSources
from video_io import VideoDecodeError, decode, read_clip

log = logging.getLogger("smile")
NVDEC_TRIES = 8  # files NVDEC may reject before a run stops asking it


def decode_pending(pending, backend, device, nvdec=False):
    """uint8 [T, h, w, 3]: the cropped frames of a PendingDecode, and why NVDEC gave up on it
    ('' if it did not, or was not asked). With `nvdec` torchcodec decodes on the CUDA `device`
    and the frames stay there (a file torchcodec falls back to its CPU decoder for is kept, and
    the reason returned); a file it rejects or gives at another size than the probe's, and
    every other backend, is read on the CPU by read_clip (with its second decoder), and its
    frames are left on the host."""
    expected = (len(pending.indices), *pending.frame_size)
    choose = lambda n: np.minimum(pending.indices, n - 1)  # noqa: E731 (the probe's count)
    frames, gave_up = None, []

    def checked(frames):
        if tuple(frames.shape[:3]) != expected:
            raise VideoDecodeError(pending.path, f"decoded {tuple(frames.shape[:3])} frames, "
                                   f"and its header said {expected}")
        return frames
    if nvdec:
        try:  # another size: e.g. a torchcodec before 0.11 leaves a sideways video sideways
            frames = checked(torch.as_tensor(decode("torchcodec", pending.path, choose,
                                                    device=device, on_cpu_fallback=gave_up.append)))
        except VideoDecodeError as err:
            gave_up.append(err.reason)
    if frames is None:
        frames = checked(torch.from_numpy(read_clip(pending.path, backend, choose)))
    y0, y1, x0, x1 = pending.crop
    return frames[:, y0:y1, x0:x1], "".join(gave_up)


class DecodeAhead:
    """--decode_on device: the loader's batches with their sources (rendering.PendingSources)
    decoded in the training process by `threads` threads onto `device`, one batch ahead of the
    step (batch n + 1 decodes while step n runs). Each thread's read is on the run's read
    board (guard.ReadBoard slots from `first_slot`), so a hung read is named like a worker's.

    A file that passed its worker's probe but cannot be decoded here keeps a black background
    for its clips this once (the objects are still pasted) and is reported with the batch's
    attempts: it counts as bad and later epochs leave it out, as a worker's bad read would."""

    def __init__(self, backend, device, threads, nvdec=None):
        self.backend, self.device, self.threads = backend, device, threads
        self.nvdec = backend == "torchcodec" and torch.device(device).type == "cuda" \
            if nvdec is None else nvdec
        self.nvdec_decoded = self.nvdec_rejected = 0

    def __call__(self, batches, board=None, first_slot=0):
        slots, local = itertools.count(first_slot), threading.local()
        pool = ThreadPoolExecutor(self.threads, "decode",
                                  initializer=lambda: setattr(local, "slot", next(slots)))

        def read(pending):
            with board.reading(pending.index, local.slot) if board else contextlib.nullcontext():
                return decode_pending(pending, self.backend, self.device, self.nvdec)

        ahead = collections.deque()
        try:
            for batch in batches:
                pending = isinstance(getattr(batch, "sources", None), PendingSources)
                ahead.append((batch, [pool.submit(read, p) for p in batch.sources.crops]
                              if pending else None))
                if len(ahead) == 2:
                    yield self.finish(*ahead.popleft())
            while ahead:
                yield self.finish(*ahead.popleft())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def finish(self, batch, futures):
        """The batch with its sources decoded, on the device. Frames decoded on the CPU go
        there in one copy from pinned memory, which does not wait for the step the device is
        running (a copy from pageable memory would, and hold up this thread with it)."""
        if futures is None:
            return batch
        cuda = torch.device(self.device).type == "cuda"
        host = torch.zeros(batch.sources.shape, dtype=torch.uint8, pin_memory=cuda)
        attempts, on_device = list(batch.attempts), []
        for k, (pending, future) in enumerate(zip(batch.sources.crops, futures)):
            try:
                frames, gave_up = future.result()
            except VideoDecodeError as err:
                attempts.append((pending.index, err.path, f"{err.reason} (read by the training "
                                 "process: its clips trained on a black background this once)"))
                continue
            window = (k, slice(frames.shape[0]), slice(frames.shape[1]), slice(frames.shape[2]))
            if frames.device.type == "cpu":
                host[window] = frames
            else:  # NVDEC's
                on_device.append((window, frames))
            self.count_nvdec(pending.path, gave_up)
        sources = host.to(self.device, non_blocking=True)
        for window, frames in on_device:
            sources[window] = frames
        return batch._replace(sources=sources, attempts=attempts)

    def count_nvdec(self, path, gave_up):
        """A file NVDEC rejects is decoded on the CPU (said for the first); when it rejected
        the first NVDEC_TRIES and decoded none, NVDEC is off for the run (said once)."""
        if not self.nvdec:
            return
        if not gave_up:
            self.nvdec_decoded += 1
            return
        self.nvdec_rejected += 1
        if self.nvdec_rejected == 1:
            log.warning("NVDEC could not decode %s (%s): files it rejects are decoded on the "
                        "CPU", path, gave_up)
        if not self.nvdec_decoded and self.nvdec_rejected >= NVDEC_TRIES:
            self.nvdec = False
            log.warning("NVDEC decoded none of the first %d files (the last: %s): they are "
                        "decoded on the CPU from here on. Is torchcodec a CUDA build, and the "
                        "driver's libnvcuvid.so.1 visible (INSTALL.md)?", NVDEC_TRIES, gave_up)
