"""Loader-worker CPU per clip, and what is left for the training device, on files like yours.

    python bench/bench_data.py [--videos 8] [--samples 24] [--repeats 1,2,4]
                               [--baseline e96f1c4] [--target_clips_per_s 212,680]
    python bench/bench_data.py --list LIST [--objects DIR] [--backend pyav]

Without --list it writes footage-like videos (tools/synthetic_videos.footage_frames: a camera
panning and zooming over texture, with grain; 10 s of 640x360 at 30 fps, x264 at 1.2 Mbit/s,
what Kinetics downloads average, a keyframe every 250 frames as x264's default) and prepares
them with tools/prepare_videos.py (short side 256), once as they are and once with --stride 4.
Objects: `--objects_count` RGBA PNGs of 256-600 px (--objects DIR for yours, `procedural`
for the built-in bank), which this code reads from the bundle tools/prepare_objects.py makes
of them (--objects_as folder: from the folder).

Each pipeline is the stage-1 sample of the recipe (16 frames of 224², --sampling_rate 4, 2
objects, trajectory mask) as a loader worker makes it (the batched fetch where the code has
one, and the collate), timed in CPU seconds (time.process_time) of a process with one
thread; `device` is --augment_on device, whose render (timed apart) is the device's share;
`dev-dec` is --augment_on device --decode_on device: the workers read headers, the training
process decodes (NVDEC with --backend torchcodec on a CUDA --device) and renders.
`decode` is the decode of the clip's frames alone. With --baseline REV the same samples run through that commit's code too (git archive
into a temporary folder; it cannot read stride-baked lists), and on `prepared then`: the
videos prepared by that commit's own tools/prepare_videos.py. Every pipeline runs in a child
process of its code; samples are handed out in rounds, so drift in the machine's load hits
all alike. Cores per GPU = target clips/s x worker CPU seconds per clip.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve(tree, specs):
    """Child: build each pipeline from the code in `tree`, then time the samples asked for on
    stdin ({"pipeline": name, "samples": [i, ...]}), answering seconds of worker CPU and of
    device render per line."""
    sys.path.insert(0, tree)
    import cv2
    import torch
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    import batches
    import datasets
    import video_io
    try:  # --decode_on device (a baseline may predate it)
        import decode_ahead
    except ImportError:
        decode_ahead = None
    built = {}
    for name, spec in specs.items():
        values = dict(data_path=spec["list"], num_frames=16, sampling_rate=4, input_size=224,
                      objects_path=spec["objects"], repeated_sampling=spec["repeats"])
        if spec["backend"]:  # else the code's own default
            values["video_backend"] = spec["backend"]
        if spec["augment_on"] != "workers":  # "device", or "device-decode": decoded there too
            values["augment_on"] = "device"
        if spec["augment_on"] == "device-decode":
            values["decode_on"] = "device"
        built[name] = datasets.build_pretraining_dataset(datasets.data_settings(1, **values))
    collate = batches.collate_pretraining
    for dataset in built.values():  # first calls (imports, codec set-up) are not a rate
        dataset.set_epoch(10**6)
        dataset[0]
    device = torch.device(specs and next(iter(specs.values()))["device"])
    print("ready", flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        spec, dataset = specs[ask["pipeline"]], built[ask["pipeline"]]
        videos = len(dataset)
        worker = render = 0.0
        for i in ask["samples"]:
            dataset.set_epoch(i // videos)
            start = time.process_time()
            if spec["decode_only"]:
                rng = dataset.rng(i % videos)  # the window a sample draws first
                video_io.read_clip(dataset.entries[i % videos][0], spec["backend"],
                                   lambda n: video_io.dense_indices(n, 16, dataset.step, rng))
            else:
                # as a loader worker fetches: torch's batched fetch where the code has one
                fetch = getattr(dataset, "__getitems__", lambda ids: [dataset[k] for k in ids])
                samples = fetch([i % videos])
                batch = (collate(samples) if "repeats" not in collate.__code__.co_varnames
                         else collate(samples, repeats=spec["repeats"]))
            worker += time.process_time() - start
            if spec["augment_on"] != "workers" and not spec["decode_only"]:
                start = time.perf_counter() if device.type == "cuda" else time.process_time()
                if spec["augment_on"] == "device-decode":  # CPU time counts the decoder thread
                    batch, = decode_ahead.DecodeAhead(spec["backend"], device, 1)([batch])
                batch.video_on(device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                render += (time.perf_counter() if device.type == "cuda"
                           else time.process_time()) - start
        print(json.dumps({"worker": worker, "render": render}), flush=True)


def object_pngs(folder, count, seed=0):
    """`count` RGBA PNGs of 256-600 px (textured shapes, with grain: they compress as photos
    of objects do), laid out <category>/<instance>.png."""
    import cv2
    import numpy as np
    sys.path.insert(0, ROOT)
    from object_banks import ProceduralObjectBank
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        rgba = ProceduralObjectBank.draw(rng)
        side = int(rng.integers(256, 601))
        scale = side / max(rgba.shape[:2])
        rgba = cv2.resize(rgba, (max(int(rgba.shape[1] * scale), 1),
                                 max(int(rgba.shape[0] * scale), 1)),
                          interpolation=cv2.INTER_CUBIC)
        rgba[..., :3] = np.clip(rgba[..., :3] + rng.normal(0, 12, rgba.shape[:2] + (3,)), 0,
                                255).astype(np.uint8)
        rgba = cv2.copyMakeBorder(rgba, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=0)
        path = os.path.join(folder, f"category{i % 20}", f"{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    return folder


def footage(folder, videos, baseline=None):
    """Originals, prepared and stride-baked copies: {files: list path}; with a baseline tree
    also the copies its own prepare_videos.py makes ("prepared then")."""
    sys.path.insert(0, ROOT)
    from tools.synthetic_videos import footage_frames, write_video
    originals = os.path.join(folder, "original")
    paths = [write_video(os.path.join(originals, f"v{i}.mp4"), footage_frames(300, 640, 360, i),
                         fps=30, bit_rate=1_200_000) for i in range(videos)]
    listing = os.path.join(originals, "train.csv")
    with open(listing, "w") as f:
        f.writelines(f"{os.path.basename(p)}\n" for p in paths)
    sets = {"original": listing}
    for name, tree, extra in (("prepared", ROOT, []), ("stride-baked", ROOT, ["--stride", "4"]),
                              ("prepared then", baseline, [])):
        if tree:
            out = os.path.join(folder, name.replace(" ", "_"))
            subprocess.run([sys.executable, os.path.join(tree, "tools", "prepare_videos.py"),
                            listing, out, "--short_side", "256"] + extra, check=True,
                           capture_output=True)
            sets[name] = os.path.join(out, "train.csv")
    return sets


def describe(listing):
    import av
    lines = [line.split()[0] for line in open(listing) if line.strip() and line[0] != "#"]
    paths = [os.path.join(os.path.dirname(listing), p) for p in lines]
    size = sum(os.path.getsize(p) for p in paths)
    with av.open(paths[0]) as container:
        stream = container.streams.video[0]
        seconds = float(stream.duration * stream.time_base)
        shape = f"{stream.codec_context.width}x{stream.codec_context.height}"
        rate = float(stream.average_rate)
    return (f"{len(paths)} videos, {shape} at {rate:g} fps, "
            f"{size * 8 / seconds / len(paths) / 1e6:.2f} Mbit/s, "
            f"{size / len(paths) / 1e6:.2f} MB each")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8, help="videos generated or sampled")
    parser.add_argument("--samples", type=int, default=24, help="samples timed per pipeline")
    parser.add_argument("--rounds", type=int, default=4, help="the samples come in this many "
                        "rounds over all pipelines")
    parser.add_argument("--repeats", default="1,2,4", help="--repeated_sampling values")
    parser.add_argument("--backend", default="pyav", help="the pipelines' --video_backend")
    parser.add_argument("--decoders", default="decord,pyav",
                        help="backends timed decoding alone ('' for none)")
    parser.add_argument("--list", default=None, help="your video list (else generated footage)")
    parser.add_argument("--objects", default=None,
                        help="object PNG folder (else --objects_count generated PNGs), or "
                             "'procedural'")
    parser.add_argument("--objects_count", type=int, default=200)
    parser.add_argument("--objects_as", default="bundle", choices=("bundle", "folder"),
                        help="this code reads the objects from tools/prepare_objects.py's "
                             "bundle of them, or from the PNG folder (the baseline: the folder)")
    parser.add_argument("--baseline", default=None,
                        help="a commit whose data path runs beside this one (e.g. e96f1c4), "
                             "with its own default decoder")
    parser.add_argument("--paths", default="workers,device,device-decode",
                        help="--augment_on values; device-decode: with --decode_on device")
    parser.add_argument("--device", default="cpu", help="where the device path renders")
    parser.add_argument("--target_clips_per_s", default="212,680",
                        help="clip rates to size the CPUs for (212: the released recipe in a "
                             "day on 8 GPUs; 680: an H100's appetite)")
    opts = parser.parse_args()
    repeats = [int(r) for r in opts.repeats.split(",")]
    targets = [float(t) for t in opts.target_clips_per_s.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        trees = {"now": ROOT}
        if opts.baseline:
            trees[opts.baseline] = os.path.join(tmp, "baseline")
            os.makedirs(trees[opts.baseline])
            archive = subprocess.run(["git", "-C", ROOT, "archive", opts.baseline],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", trees[opts.baseline]], input=archive, check=True)
        if opts.list:
            sets = {"yours": os.path.abspath(opts.list)}
        else:
            sets = footage(tmp, opts.videos, trees.get(opts.baseline))
        objects = None if opts.objects == "procedural" else opts.objects or object_pngs(
            os.path.join(tmp, "objects"), opts.objects_count)
        bundle = objects
        if objects and opts.objects_as == "bundle":
            bundle = os.path.join(tmp, "bundle")
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prepare_objects.py"),
                            objects, bundle], check=True, capture_output=True)
        specs = {tree: {} for tree in trees}
        for files, listing in sets.items():
            for backend in filter(None, opts.decoders.split(",")):
                specs["now"][(files, "decode", backend, 1)] = dict(
                    list=listing, backend=backend, repeats=1, augment_on="workers",
                    objects=None, decode_only=True, device=opts.device)
            for tree in trees:
                paths = opts.paths.split(",") if tree == "now" else ["workers"]
                if files == ("prepared then" if tree == "now" else "stride-baked"):
                    continue  # the baseline reads no stride-baked list; the files its own
                    # tool prepared are for the baseline
                for path in paths:
                    for r in repeats:
                        specs[tree][(files, path, opts.backend, r)] = dict(
                            list=listing, backend=opts.backend if tree == "now" else None,
                            repeats=r, augment_on=path,
                            objects=bundle if tree == "now" else objects, decode_only=False,
                            device=opts.device)
        children = {}
        for tree, tree_specs in specs.items():
            child = subprocess.Popen(
                [sys.executable, __file__, "--serve", trees[tree]], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, cwd=trees[tree],
                env={**os.environ, "OMP_NUM_THREADS": "1"})
            child.stdin.write(json.dumps({"|".join(map(str, k)): v for k, v in
                                          tree_specs.items()}) + "\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "ready", f"{tree}: the child failed"
            children[tree] = child
        totals = {(tree, key): [0.0, 0.0, 0] for tree in specs for key in specs[tree]}
        per_round = -(-opts.samples // opts.rounds)
        for round_ in range(opts.rounds):
            samples = list(range(round_ * per_round, min((round_ + 1) * per_round, opts.samples)))
            for (tree, key), total in totals.items():
                children[tree].stdin.write(json.dumps({"pipeline": "|".join(map(str, key)),
                                                       "samples": samples}) + "\n")
                children[tree].stdin.flush()
                answer = json.loads(children[tree].stdout.readline())
                clips = len(samples) * (1 if key[1] == "decode" else key[3])
                total[0] += answer["worker"]
                total[1] += answer["render"]
                total[2] += clips
        for child in children.values():
            child.stdin.close()
            child.wait()
        print(f"stage-1 samples: 16x224x224, --sampling_rate 4, 2 objects "
              f"({opts.objects or f'{opts.objects_count} generated PNGs of 256-600 px'}; this "
              f"code reads them {'from their bundle' if bundle != objects else 'as they are'}"
              f"), trajectory mask; --video_backend {opts.backend}; CPU time of one thread; "
              f"{opts.samples} samples per pipeline ({time.time() - start:.0f} s in all)")
        for files, listing in sets.items():
            print(f"  {files}: {describe(listing)}")
        head = "".join(f"{'cores @' + format(t, 'g'):>11s}" for t in targets)
        print(f"\n{'files':13s} {'code':8s} {'pipeline':8s} {'R':>2s} {'worker ms':>10s} "
              f"{'device ms':>10s}{head}   (per clip)")
        for (tree, (files, path, backend, r)), (worker, render, clips) in totals.items():
            name = f"decode {backend}" if path == "decode" else path.replace("device-decode",
                                                                             "dev-dec")
            cores = "".join(f"{t * worker / clips:11.1f}" for t in targets)
            device = f"{1000 * render / clips:10.1f}" if path.startswith("device") else \
                f"{'':10s}"
            print(f"{files:13s} {tree:8s} {name:8s} {r:2d} {1000 * worker / clips:10.1f} "
                  f"{device}{cores}")
        if "device" in opts.paths:
            print(f"\ndevice ms: the render of --augment_on device on {opts.device} (dev-dec: "
                  "the decode too)"
                  + (" (torch on one CPU thread: a GPU's time is not measured here)"
                     if opts.device == "cpu" else ""))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], json.loads(sys.stdin.readline()))
    else:
        main()
