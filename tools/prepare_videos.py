"""Re-encode a video list for fast training: smaller frames, frequent keyframes, no audio.

    python tools/prepare_videos.py LIST OUT_DIR [--stride 4] [--short_side 320] [--workers N]
                                   [--task multi_label]

Each video of LIST (VideoMAE 'PATH LABEL' lines or CSV, as the loader reads them; --task
multi_label or counting for Charades' or UCFRep's labels) is decoded and written to OUT_DIR,
keeping its path below the inputs' common folder, as H.264 with:
- the short side scaled down to --short_side (VideoMAE's Kinetics convention; never scaled up),
- with --stride N, only every N-th frame of the source (frames 0, N, 2N, ...; the frame rate
  divided by N, so time is kept): a clip sampled every --sampling_rate frames, a multiple of
  N, then decodes no frame it does not keep. The new list says so in its first line
  (`# frame_stride N`), and the loader samples --sampling_rate / N of the kept frames: the
  same frames as from the source, up to the stride's phase,
- a keyframe every --keyint kept frames (default 16, with a stride 8): a clip's first frame
  is then at most keyint - 1 frames from a keyframe, so a random seek decodes few it drops,
- x264's fastdecode tuning (no CABAC, no deblocking filter): decoding takes about a third
  less CPU, for files about a tenth larger (bench/bench_data.py measures both); B-frames that
  nothing references, which PyAV skips when it does not keep them,
- the source's colour tags (BT.709, full range): the frames are scaled, not converted, so
  they decode to the source's colours; a video stored sideways (a phone's portrait video,
  with a display matrix) is written upright, as the loader reads the source,
- no audio. FFmpeg comes with PyAV: no system binary is needed.

A list of segments ('PATH START END LABEL', EPIC-Kitchens') gets each segment cut into a file
of its own, PATH_START_END.mp4 (one pass over each video, however many segments it has), and
a new list of whole files: a clip of a segment is then read without reading the long video's
every packet, as the loader must for a segment of it.

Resumable: an output is written as NAME.partial.mp4 and renamed when complete, so a run killed
midway redoes only the files it was writing; finished outputs are skipped. Writes
OUT_DIR/<LIST's name> (the converted entries, paths relative to OUT_DIR, labels kept) and
OUT_DIR/<LIST's name>.failed.tsv (path, or path START END of a segment, and why) naming every
input that could not be converted.
Exits 0 when every file converted, 1 when some failed, 2 for a list it cannot read.
"""
import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from fractions import Fraction

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from errors import UsageError, exit_usage  # noqa: E402
from lists import TASKS, read_list  # noqa: E402
from tools.check_videos import Progress  # noqa: E402
from video_io import quarter_turns  # noqa: E402

PARTIAL = ".partial.mp4"
COLOUR_TAGS = ("colorspace", "color_range", "color_primaries", "color_trc")


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", help="annotation list of the videos to convert")
    parser.add_argument("out_dir", help="folder for the converted videos and the new list")
    parser.add_argument("--data_root", default="",
                        help="folder relative paths start from (default: the list's folder)")
    parser.add_argument("--short_side", type=int, default=320,
                        help="scale frames down so their short side is this (pixels)")
    parser.add_argument("--stride", type=int, default=1,
                        help="keep every N-th frame (a divisor of the --sampling_rate you train "
                             "with, e.g. 4 for K400's 4 or 2 for SSv2's 2)")
    parser.add_argument("--keyint", type=int, default=None,
                        help="kept frames between keyframes (default 16; 8 with --stride)")
    parser.add_argument("--crf", type=int, default=23, help="x264 quality (lower = larger)")
    parser.add_argument("--preset", default="veryfast", help="x264 speed preset")
    parser.add_argument("--tune", default="fastdecode", choices=("fastdecode", "none"),
                        help="x264 tuning: fastdecode decodes faster, for larger files")
    parser.add_argument("--task", default="classification", choices=TASKS,
                        help="the list's labels, as for training (its --task)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="videos converted at once (default: all cores)")
    return parser.parse_args(argv)


def output_size(width, height, short_side):
    """(width, height) with the short side at most `short_side`, both even (yuv420p)."""
    scale = min(1.0, short_side / min(width, height))
    return (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))


def convert(job):
    """(input path, {output: why it was not written}): every output of one input video."""
    source, outputs, opts = job
    todo = {target: segment for target, segment in outputs.items() if not os.path.isfile(target)}
    partial = {target: target[:-len(".mp4")] + PARTIAL for target in todo}
    written, frames, reason = {}, 0, ""
    if todo:
        try:
            frames = encode(source, {partial[t]: seg for t, seg in todo.items()}, opts, written)
        except Exception as err:  # a decoder or encoder failure: what it finished is kept
            reason = f"{type(err).__name__}: {' '.join(str(err).split())}"
    failed = {}
    for target, segment in todo.items():
        if written.get(partial[target]):
            os.replace(partial[target], target)
            continue
        if os.path.exists(partial[target]):
            os.remove(partial[target])
        failed[target] = reason or (f"the segment starts at frame {segment[0]}, after the "
                                    f"video's {frames} frames" if segment else
                                    "no video frames decoded")
    return source, failed


def encode(source, outputs, opts, written):
    """Write each output {path: (start, end) frames, or None for all} of `source` in one pass
    over it; written[path] = its frame count once it is complete. -> frames decoded."""
    import av
    av.logging.set_level(av.logging.PANIC)
    spans = {path: segment or (0, math.inf) for path, segment in outputs.items()}
    counts, writers, frames = dict.fromkeys(outputs, 0), {}, 0
    with av.open(source) as inp:
        if not inp.streams.video:
            raise ValueError("no video stream")
        in_stream = inp.streams.video[0]
        in_stream.thread_type = "AUTO"
        rate = in_stream.average_rate or in_stream.guessed_rate or Fraction(30)
        rate = Fraction(rate).limit_denominator(1001) / opts.stride
        size = output_size(in_stream.codec_context.width, in_stream.codec_context.height,
                           opts.short_side)
        try:
            # decoded to its end: leaving a frame-threaded decode early can hang once torch
            # is imported (PyAV issue 1849)
            for i, frame in enumerate(inp.decode(in_stream)):
                frames, scaled, turns = i + 1, None, quarter_turns(frame)
                for path, (start, end) in spans.items():
                    if not start <= i <= end or (i - start) % opts.stride:
                        continue
                    if path not in writers:
                        writers[path] = open_output(path, size[::-1] if turns % 2 else size,
                                                    rate, source, opts, in_stream.codec_context)
                    scaled = scaled or upright(frame.reformat(
                        width=size[0], height=size[1], format="yuv420p", interpolation="AREA"),
                        turns)
                    # constant frame rate out; the source's keyframes would force extra ones
                    scaled.pts, scaled.time_base = counts[path], 1 / rate
                    scaled.pict_type = av.video.frame.PictureType.NONE
                    counts[path] += 1
                    writers[path][0].mux(writers[path][1].encode(scaled))
                    if i + opts.stride > end:  # its last frame: finish it, freeing its encoder
                        finish(*writers.pop(path))
                        written[path] = counts[path]
            for path in list(writers):  # the video ended: what is open ends with it
                finish(*writers.pop(path))
                written[path] = counts[path]
        finally:
            for out, _ in writers.values():  # after an error: incomplete, not kept
                out.close()
    return frames


def upright(frame, turns):
    """A yuv420p frame turned `turns` quarter turns counter-clockwise, plane by plane (no
    colour conversion): a phone's portrait video is written upright, with no display matrix,
    so that a reader which ignores one (PyAV by itself does) gets it upright too."""
    if not turns:
        return frame
    import av
    planes = frame.to_ndarray()  # I420: the Y rows, then U's and V's (two chroma rows a row)
    height, width = frame.height, frame.width
    y, u, v = np.split(planes.ravel(), [height * width, height * width * 5 // 4])
    turned = [np.rot90(plane.reshape(rows, -1), turns).ravel()
              for plane, rows in ((y, height), (u, height // 2), (v, height // 2))]
    shape = (width, height) if turns % 2 else (height, width)
    return av.VideoFrame.from_ndarray(np.concatenate(turned).reshape(shape[0] * 3 // 2,
                                                                     shape[1]), format="yuv420p")


def open_output(path, size, rate, source, opts, decoder):
    import av
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = av.open(path, mode="w", format="mp4")
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
    # the frames keep the source's colour matrix and range (scaled, not converted): so must
    # the file's tags, or a BT.709 or full-range video decodes to other colours once prepared
    for tag in COLOUR_TAGS:
        if hasattr(decoder, tag):  # an older PyAV may lack some
            setattr(stream.codec_context, tag, getattr(decoder, tag))
    stream.options = {"crf": str(opts.crf), "preset": opts.preset,
                      "x264-params": f"keyint={opts.keyint}:min-keyint={opts.keyint}"
                                     ":scenecut=0:b-pyramid=none",
                      **({} if opts.tune == "none" else {"tune": opts.tune})}
    out.metadata["comment"] = f"one frame in {opts.stride} of {source}"
    return out, stream


def finish(out, stream):
    out.mux(stream.encode(None))
    out.close()


def same_settings(out_dir, args):
    """Finished files are skipped at a rerun: a rerun with other settings would mix two kinds
    of files in one folder, so OUT_DIR/prepare_settings.json keeps what made them."""
    settings = {k: getattr(args, k) for k in ("short_side", "stride", "keyint", "crf", "preset",
                                              "tune")}
    path = os.path.join(out_dir, "prepare_settings.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        if changed := [f"--{k} {before.get(k)} (now {v})" for k, v in settings.items()
                       if before.get(k) != v]:
            exit_usage(f"OUT_DIR {out_dir} holds videos prepared with {', '.join(changed)}; "
                       "choose another OUT_DIR")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f)


def main(argv=None):
    args = get_args(argv)
    if args.short_side < 2 or (args.keyint is not None and args.keyint < 1) or args.stride < 1:
        exit_usage("--short_side must be >= 2, --keyint and --stride >= 1")
    args = argparse.Namespace(**{**vars(args), "keyint": args.keyint or (
        8 if args.stride > 1 else 16)})  # the default depends on --stride
    try:  # as the loader reads it: relative paths from --data_root, else the list's folder
        entries = read_list(args.list, args.data_root, require_label=False, task=args.task)
    except (UsageError, FileNotFoundError) as err:
        exit_usage(err)
    out_dir = os.path.abspath(args.out_dir)
    common = os.path.commonpath([os.path.dirname(p) for p, _ in entries])
    if any(os.path.abspath(p).startswith(out_dir + os.sep) for p, _ in entries):
        exit_usage(f"OUT_DIR {args.out_dir} holds inputs of the list; choose another")
    same_settings(out_dir, args)
    segments = entries.segments or [None] * len(entries)
    rows, outputs = [], {}  # (output, label) per entry; {input: {output: segment}}
    for (path, label), segment in zip(entries, segments):
        stem = os.path.splitext(os.path.relpath(path, common))[0]
        output = os.path.join(out_dir, stem + ("_%d_%d" % segment if segment else "") + ".mp4")
        outputs.setdefault(path, {})[output] = segment
        rows.append((output, label))
    jobs = [(path, targets, args) for path, targets in outputs.items()]
    total = sum(len(targets) for targets in outputs.values())
    done_before = len({output for output, _ in rows if os.path.isfile(output)})

    failed, start, progress = {}, time.time(), Progress(len(jobs), args.workers)
    with multiprocessing.get_context("spawn").Pool(max(args.workers, 1)) as pool:
        for done, (source, reasons) in enumerate(pool.imap_unordered(convert, jobs), 1):
            failed.update({output: (source, outputs[source][output], reason)
                           for output, reason in reasons.items()})
            progress(done, len({source for source, _, _ in failed.values()}))

    name = os.path.basename(args.list)
    new_list, failed_tsv = os.path.join(out_dir, name), os.path.join(out_dir, name + ".failed.tsv")
    with open(new_list, "w", encoding="utf-8") as f:
        f.write(f"# frame_stride {args.stride}\n" if args.stride > 1 else "")
        f.writelines(os.path.relpath(output, out_dir) + label_text(label) + "\n"
                     for output, label in rows if output not in failed)
    with open(failed_tsv, "w", encoding="utf-8") as f:
        f.write("path\treason\n")
        f.writelines(f"{source}{' %d %d' % segment if segment else ''}\t{reason}\n"
                     for source, segment, reason in sorted(failed.values(), key=str))
    kind = "segments" if entries.segments else "videos"
    print(f"{total - len(failed)} of {total} {kind} ready in {out_dir} ({done_before} "
          f"done before this run; {time.time() - start:.0f} s, {args.workers} workers)\n"
          f"  new list: {new_list}")
    if failed:
        print(f"  {len(failed)} could not be converted, listed with the reason in {failed_tsv}")
    return 1 if failed else 0


def label_text(label):
    """' LABEL' as the list wrote it ('1,5,9' for several), '' for a row without one."""
    if isinstance(label, tuple):
        return " " + ",".join(map(str, label))
    return "" if label == -1 else f" {label}"


if __name__ == "__main__":
    sys.exit(main())
