"""Frozen-encoder features for every video of a list, in one file numpy opens.

    python tools/extract_features.py LIST CHECKPOINT OUT.npz [--tokens] [--device cuda]
        [--model vit_base_patch16_224 --num_frames 16 --input_size 224 --sampling_rate 4]
        [--test_num_segment 5 --test_num_crop 3 --batch_size 16 --num_workers 8]

LIST: 'PATH [LABEL]' lines (VideoMAE's format; relative paths start at the list's folder or
--data_root). CHECKPOINT: anything --finetune reads (ours, the authors', VideoMAE's, a
transformers folder). Each video gets the evaluation's views (--test_num_segment x
--test_num_crop; SSv2 samples by segments); a video's feature is the mean over its views of
the encoder's token-averaged output ('features' [V, D] float32), with --tokens also its tokens
averaged over views ('tokens' [V, N, D] float16: large). OUT.npz also holds 'paths',
'labels' (-1 without) and 'ok' (False: no view could be decoded; its row is NaN, and the video
is listed in OUT.failed.tsv). Work is saved every --chunk videos (OUT.partNNNNN.npz, with what
made it): after a kill, or a stop signal (honoured after the part in hand), the same command
goes on from there; a part made by another checkpoint or setting, or cut off, is made again.
"""
import json
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import distributed  # noqa: E402
import engine_for_finetuning as engine  # noqa: E402
import lists  # noqa: E402
import run_class_finetuning as finetuning  # noqa: E402
import stop_signals  # noqa: E402
import utils  # noqa: E402
from errors import exit_usage  # noqa: E402
from utils import format_eta  # noqa: E402

log = logging.getLogger("smile")


def get_args(argv=None):
    parser = finetuning.get_args_parser()  # the evaluation's own flags and defaults
    parser.description = __doc__
    parser.add_argument("list", help="video list: 'PATH [LABEL]' lines")
    parser.add_argument("checkpoint", help="what to take the encoder from")
    parser.add_argument("output", help="the .npz to write")
    parser.add_argument("--tokens", action="store_true",
                        help="also the per-token features, averaged over views (fp16)")
    parser.add_argument("--chunk", type=int, default=256, help="videos per saved part")
    return parser.parse_args(argv)


def video_rows(views, count, tokens):
    """Per video: the mean over its decodable views (NaN where none)."""
    rows = {"features": np.full((count, views["features"].shape[1]), np.nan, np.float32)}
    if tokens:
        rows["tokens"] = np.full((count, *views["tokens"].shape[1:]), np.nan, np.float16)
    ok = np.zeros(count, bool)
    for video in range(count):
        mine = (views["video"] == video) & views["ok"].astype(bool)
        if mine.any():
            ok[video] = True
            for key in rows:
                rows[key][video] = views[key][mine].astype(np.float32).mean(0)
    return dict(rows, ok=ok)


def part_is_usable(part, key):
    """Whether a part on disk was made with `key` (else one line says why it is made again)."""
    try:
        with np.load(part) as saved:
            held = str(saved["key"]) if "key" in saved.files else None
    except Exception as err:
        log.warning("WARNING: %s is unreadable (%s): it is made again", part, type(err).__name__)
        return False
    if held != key:
        log.warning("WARNING: %s was made by another checkpoint, list or setting: it is made "
                    "again", part)
    return held == key


def main(argv=None):
    args = get_args(argv)
    cuda = args.device == "cuda" and torch.cuda.is_available()
    dist_info = distributed.Dist(device=torch.device("cuda" if cuda else "cpu"))
    args = utils.run_settings(args, 1, finetune=args.checkpoint, output=args.output + (
        "" if args.output.endswith(".npz") else ".npz"))  # read-only from here on
    utils.setup_logging(dist_info)
    try:
        finetuning.check_finetune_path(args)  # the one check --finetune gets
        entries = lists.read_list(args.list, args.data_root, require_label=False)
    except (ValueError, FileNotFoundError) as err:
        exit_usage(err)
    encoder = finetuning.build_model(args, 0, probe=True).to(dist_info.device)
    try:
        finetuning.load_weights(encoder, args)
    except ValueError as err:
        exit_usage(err)
    parts, start, done = [], time.time(), 0
    key = json.dumps(dict(model=finetuning.model_identity(args), list=entries.digest,
                          views=[args.test_num_segment, args.test_num_crop],
                          frames=args.num_frames, rate=args.sampling_rate, size=args.input_size,
                          short_side=args.short_side_size, chunk=args.chunk, tokens=args.tokens,
                          arch=args.model, model_key=args.model_key))
    stop = stop_signals.stop_flag()  # SIGTERM, Ctrl-C: stop after the part in hand
    for first in range(0, len(entries), args.chunk):
        if stop:
            log.info("%s received: stopped after %d of %d videos; run the same command to go "
                     "on", stop.signal, first, len(entries))
            return 0
        chunk = entries[first:first + args.chunk]
        part = f"{args.output}.part{first // args.chunk:05d}.npz"
        parts.append(part)
        if os.path.isfile(part) and part_is_usable(part, key):
            continue
        dataset = datasets.VideoClsDataset(args, chunk, "test", flip=False,
                                           segment_sampling=datasets.segment_sampling(args))
        views = engine.extract_features(encoder, finetuning.eval_loader(args, dataset, dist_info),
                                        dist_info, False, args.precision, tokens=args.tokens)
        np.savez(part + ".tmp.npz", key=np.array(key), **video_rows(views, len(chunk),
                                                                    args.tokens))
        os.replace(part + ".tmp.npz", part)  # a kill leaves whole parts only
        done += len(chunk)
        left = len(entries) - first - len(chunk)
        log.info("%d/%d videos  %.1f videos/s  eta %s", first + len(chunk), len(entries),
                 done / (time.time() - start), format_eta(left * (time.time() - start) / done))
    loaded = [{k: v for k, v in np.load(part).items() if k != "key"} for part in parts]
    merged = {key: np.concatenate([part[key] for part in loaded]) for key in loaded[0]}
    paths = np.array([path for path, _ in entries])
    np.savez(args.output, paths=paths, labels=np.array([label for _, label in entries]),
             **merged)
    failed = paths[~merged["ok"]]
    with open(args.output + ".failed.tsv", "w", encoding="utf-8") as f:
        f.write("path\treason\n")
        f.writelines(f"{path}\tno view could be decoded\n" for path in failed)
    for path in failed:
        log.warning("unreadable, its row is NaN: %s", path)
    for part in parts:
        os.remove(part)
    log.info("wrote %s: %d videos x %d features%s, %d unreadable (listed in %s)", args.output,
             len(paths), merged["features"].shape[1], " + tokens" if args.tokens else "",
             len(failed), args.output + ".failed.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
