"""Fine-tuning, evaluation and linear probing of SMILE / VideoMAE encoders.

    fine-tune:     --finetune PRETRAINED.pth                (train, validate, final multi-view test)
    test only:     --eval --finetune FINETUNED.pth
    linear probe:  --linear_probe --finetune PRETRAINED.pth (frozen encoder, cached features)

Every mode writes OUTPUT_DIR/results.json (top1, top5, class_mean_top1 in percent, num_videos,
num_failed, ...).
"""
from stop_signals import installed  # noqa: F401  first: a stop signal during the imports is kept

import argparse
import contextlib
import functools
import json
import logging
import os
import sys

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

import checkpoint
import batches
import datasets
import distributed
import engine_for_finetuning as engine
import hf_videomae
import modeling_finetune
import outputs
import pictures
import stop_signals
import guard
import tasks
import training
import utils
from errors import DataAbort

log = logging.getLogger("smile")
MODELS = tuple(f"vit_{size}_patch16_224" for size in modeling_finetune.SIZES)


def get_args_parser():
    parser = argparse.ArgumentParser("SMILE fine-tuning and evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets.add_args(parser)
    datasets.add_finetune_args(parser)
    utils.add_run_args(parser)
    parser.set_defaults(batch_size=16, epochs=100, lr=1e-3, min_lr=1e-6, warmup_lr=1e-8,
                        warmup_epochs=5, opt_betas=(0.9, 0.999), drop_path=0.1,
                        output_dir="runs/finetune", save_ckpt_freq=10)
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="vit_base_patch16_224", choices=MODELS)
    g.add_argument("--finetune", default=None,
                   help="checkpoint to start from (or to test): ours, the authors', VideoMAE's, "
                        "or a transformers VideoMAE folder; 'random': no weights (baseline)")
    g.add_argument("--model_key", default="model|module", help="keys that hold the weights")
    g.add_argument("--raw_weights", action="store_true",
                   help="of a run fine-tuned with --model_ema, read the raw weights instead of "
                        "the EMA ones it scored")
    g.add_argument("--use_mean_pooling", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--init_scale", type=float, default=0.001, help="head initialisation scale")
    g.add_argument("--fc_drop_rate", type=float, default=0.0)
    g = parser.add_argument_group("recipe")
    g.add_argument("--layer_decay", type=float, default=0.75, help="0.75 K400, 0.7 SSv2")
    g.add_argument("--smoothing", type=float, default=0.1)
    g.add_argument("--mixup", type=float, default=0.8)
    g.add_argument("--cutmix", type=float, default=1.0)
    g.add_argument("--mixup_prob", type=float, default=1.0)
    g.add_argument("--mixup_switch_prob", type=float, default=0.5)
    g.add_argument("--model_ema", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--model_ema_decay", type=float, default=0.9999)
    g = parser.add_argument_group("evaluation and linear probe")
    g.add_argument("--eval", action="store_true", help="only run the multi-view test")
    g.add_argument("--dist_eval", action=argparse.BooleanOptionalAction, default=True,
                   help="split evaluation views over the processes (off: each does all)")
    g.add_argument("--linear_probe", action="store_true")
    g.add_argument("--probe_train_segments", type=int, default=2,
                   help="probe: clips per training video (centre crop each)")
    g.add_argument("--probe_epochs", type=int, default=100)
    g.add_argument("--probe_lr", type=float, default=1e-3)
    g.add_argument("--probe_weight_decay", type=float, default=1e-4)
    g.add_argument("--probe_batch_size", type=int, default=256)
    g.add_argument("--probe_repeats", type=int, default=1,
                   help="train this many probes (seeds seed, seed+1, ...) on the cached "
                        "features; results.json reports the mean and each seed's top-1")
    return parser


def check_args(args):
    datasets.check_args(args, pretraining=False)
    utils.check_run_args(args)
    if not args.data_path or not os.path.isdir(args.data_path):
        raise ValueError(f"--data_path {args.data_path}: not a folder of train/val/test.csv")
    for name in ["test.csv"] + ([] if args.eval else ["train.csv"]) + (
            [] if args.eval or args.linear_probe else ["val.csv"]):
        if not os.path.isfile(os.path.join(args.data_path, name)):
            raise ValueError(f"--data_path {args.data_path} has no {name}")
    if (args.eval or args.linear_probe) and not args.finetune:
        raise ValueError("--eval and --linear_probe need --finetune CHECKPOINT")
    check_finetune_path(args)
    if args.probe_repeats < 1:
        raise ValueError("--probe_repeats must be >= 1")


def model_kwargs(args, nb_classes, probe=False):
    """modeling_finetune.build_encoder's keywords (also stored in every checkpoint)."""
    return dict(size=args.model.split("_")[1], img_size=args.input_size, patch_size=args.patch_size,
                num_frames=args.num_frames, tubelet_size=args.tubelet_size,
                num_classes=0 if probe else nb_classes,
                use_mean_pooling=args.use_mean_pooling and not probe,
                drop_path_rate=0.0 if probe else args.drop_path, fc_drop_rate=args.fc_drop_rate,
                init_scale=args.init_scale)


def check_finetune_path(args):
    if args.finetune and args.finetune != "random" and not (
            os.path.isfile(args.finetune) or hf_videomae.is_folder(args.finetune)):
        raise ValueError(f"--finetune {args.finetune} does not exist (a checkpoint file, or a "
                         "transformers VideoMAE folder with model.safetensors)")


def build_model(args, nb_classes, probe=False):
    return modeling_finetune.build_encoder(**model_kwargs(args, nb_classes, probe))


def load_weights(model, args):
    if args.finetune == "random":
        log.warning("--finetune random: the encoder keeps its random initialisation (a baseline)")
        return None
    state, which = checkpoint.scored(hf_videomae.read(args.finetune) if hf_videomae.is_folder(
        args.finetune) else checkpoint.load_checkpoint(args.finetune), args.raw_weights)
    try:
        report = modeling_finetune.load_pretrained(model, state, args.model_key)
    except ValueError as err:
        raise checkpoint.CheckpointError(args.finetune, f"{err} ({checkpoint.describe(state)})")
    if args.eval and {"head.weight", "fc_norm.weight"} & set(report["missing"]):
        raise checkpoint.CheckpointError(args.finetune, f"it is {checkpoint.describe(state)} "
                                         "without a classifier head; --eval needs a fine-tuned "
                                         "checkpoint (OUTPUT_DIR/checkpoint-N.pth of fine-tuning)")
    if args.eval and (made_for := (state.get("args") or {}).get("task", args.task)) != args.task:
        raise checkpoint.CheckpointError(args.finetune, f"it was fine-tuned with --task "
                                         f"{made_for}; this run has --task {args.task}")
    skipped = sorted({k.split(".")[0] for k in report["skipped"]})
    log.info("loaded %s of %s\n  missing: %s\n  unexpected: %s\n  skipped: %d keys (%s)",
             which, args.finetune, report["missing"] or "none", report["unexpected"] or "none",
             len(report["skipped"]), ", ".join(skipped) or "none")
    return report


def model_identity(args):
    """What --finetune names, for the caches: its path and time, and which weights were read."""
    path = args.finetune
    return (f"{os.path.abspath(path)} {os.path.getmtime(path)} raw={args.raw_weights}"
            if os.path.exists(path) else path)


def eval_loader(args, dataset, dist_info, skip=frozenset()):
    """Evaluation views in order; with --dist_eval each rank takes every world_size-th; the
    views in `skip` were done before a stop."""
    indices = list(range(len(dataset)))
    if args.dist_eval and dist_info.world_size > 1:
        indices = indices[dist_info.rank::dist_info.world_size]
    indices = [i for i in indices if i not in skip]
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=args.batch_size,
                      num_workers=args.num_workers, shuffle=False,
                      worker_init_fn=distributed.seed_worker)  # workers outlive stop signals


def name_failures(args, failed, entries, split):
    """Every video that could not be read, by path; past --max_bad_fraction a data abort (no
    result is written: a score over what was left would look like a real one)."""
    paths = [entries[i][0] for i in failed]
    for path in paths:
        log.warning("%s video could not be read, left out of the score: %s", split, path)
    if len(paths) > args.max_bad_fraction * len(entries):
        raise DataAbort(f"{len(paths)} of {len(entries)} {split} videos could not be read "
                        f"(e.g. {paths[0]}), more than --max_bad_fraction "
                        f"{args.max_bad_fraction}; no results written")
    return paths


def write_results(args, dist_info, results, predictions, entries):
    """results.json, and predictions.npz: each scored video's `video` (list index), `path`,
    `prediction` (mean over views) and `label`; with several probe seeds `prediction_per_seed`."""
    log.info("results: %s", json.dumps(results))
    if dist_info.is_main:
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        (values, labels, videos), *more = predictions
        np.savez(os.path.join(args.output_dir, "predictions.npz"), video=videos, label=labels,
                 path=np.array([entries[v][0] for v in videos]), prediction=values,
                 **{"prediction_per_seed": np.stack([p[0] for p in predictions])} if more else {})


def linear_probe(args, dist_info, nb_classes):
    encoder = build_model(args, nb_classes, probe=True).to(dist_info.device)
    load_weights(encoder, args)
    sharded = args.dist_eval and dist_info.world_size > 1
    # every label checked before any feature is computed
    entries = {split: datasets.labelled_list(args, f"{split}.csv")[0] for split in ("train",
                                                                                   "test")}
    features = {}
    for split, segments, crops in (("train", args.probe_train_segments, 1),
                                   ("test", args.test_num_segment, args.test_num_crop)):
        cache = os.path.join(args.output_dir, f"features_{split}.pt")
        key = dict(checkpoint=model_identity(args), task=args.task, segments=segments,
                   crops=crops, frames=args.num_frames, size=args.input_size,
                   model_key=args.model_key, list=getattr(entries[split], "digest", None))
        if saved := engine.read_keyed(cache, key, f"{split} features"):  # plain data on disk
            features[split] = engine.as_arrays(saved["views"])
            log.info("probe: cached %s features from %s", split, cache)
            continue
        dataset = datasets.VideoClsDataset(args, entries[split], "test", views=(segments, crops),
                                           segment_sampling=datasets.segment_sampling(args),
                                           flip=False)
        features[split] = engine.extract_features(encoder, eval_loader(args, dataset, dist_info),
                                                  dist_info, sharded, args.precision)
        features[split]["num_videos"] = len(dataset.entries)
        if dist_info.is_main:
            checkpoint.save_checkpoint(cache, dict(key=key,
                                                   views=engine.as_tensors(features[split])))
    train, test = features["train"], dict(features["test"])
    failed = {split: name_failures(args, engine.failed_videos(views, views["num_videos"]),
                                   entries[split], split)
              for split, views in (("train", train), ("test", test))}
    runs, merged, headline = [], [], tasks.HEADLINE[args.task]  # several seeds: their spread
    for seed in range(args.seed, args.seed + args.probe_repeats):
        ok = train["ok"]
        probe = engine.train_probe(train["features"][ok], train["label"][ok], nb_classes,
                                   args.probe_epochs, args.probe_lr, args.probe_weight_decay,
                                   args.probe_batch_size, seed, args.task)
        with torch.no_grad():
            test["logits"] = probe(torch.from_numpy(test["features"]).float()).numpy()
        merged.append(tasks.merge_views(test, test["num_videos"], args.task))
        runs.append(tasks.metrics(args.task, *merged[-1][:2]))
    results = {k: {c: float(np.mean([r[k][c] for r in runs])) for c in v} if isinstance(
        v, dict) else float(np.mean([r[k] for r in runs])) for k, v in runs[0].items()}
    results.update({f"{headline}_per_seed": [r[headline] for r in runs]}, task=args.task,
                   num_videos=test["num_videos"], num_failed=len(failed["test"]),
                   failed_videos=failed["test"], failed_train_videos=failed["train"],
                   mode="linear_probe", checkpoint=args.finetune,
                   protocol=f"{args.probe_train_segments} train clips/video, "
                            f"{args.test_num_segment}x{args.test_num_crop} test views, "
                            f"{args.probe_epochs} epochs AdamW lr {args.probe_lr}, mean of "
                            f"{args.probe_repeats} seeds")
    write_results(args, dist_info, results, merged, entries["test"])
    return results


def resumable_evaluation(model, args, dist_info, dataset, nb_classes, name, identity):
    """engine.evaluate of `dataset`, or None at a stop signal: the views done are kept in
    OUTPUT_DIR/{name}_views.rankR.pt, keyed by `identity` (the model) and the settings, for the
    next call to do the rest; the caller removes the file (`views_file`) once it is used."""
    key = dict(model=identity, task=args.task, views=[dataset.num_segments, dataset.num_crops],
               frames=args.num_frames, size=args.input_size, processes=dist_info.world_size,
               dist_eval=args.dist_eval, list=getattr(dataset.entries, "digest", None))
    path = os.path.join(args.output_dir, f"{name}_views.rank{dist_info.rank}.pt")
    earlier, done = engine.views_done(path, key, name, len(dataset) // len(dataset.entries))
    try:
        results = engine.evaluate(
            model, eval_loader(args, dataset, dist_info, done), dist_info, args.dist_eval,
            len(dataset.entries), nb_classes, args.precision, args.task,
            stop=stop_signals.stop_flag(),
            earlier=earlier, keep=lambda views: checkpoint.save_checkpoint(path, dict(
                key=key, views=engine.as_tensors(views))))
    except engine.Stopped:
        log.info("%s received during the %s: the views done are kept in %s; run the same "
                 "command to finish it", stop_signals.stop_flag().signal, name, path)
        return None
    return dict(results, views_file=path)


def test(model, args, dist_info, nb_classes, mode, identity):
    """The multi-view test of `model` (`identity`: what it is, for the views kept at a stop)
    -> results, or None when a stop signal came first (its views are kept: run again)."""
    dataset, _ = datasets.build_dataset(is_train=False, test_mode=True, args=args)
    if (results := resumable_evaluation(model, args, dist_info, dataset, nb_classes, "test",
                                        identity)) is None:
        return None
    results["failed_videos"] = name_failures(args, results["failed_videos"], dataset.entries,
                                             "test")
    results.update(mode=mode, task=args.task, checkpoint=args.finetune,
                   views=f"{args.test_num_segment}x{args.test_num_crop}")
    confusion = results.pop("confusion", None)
    if args.vis_freq != 0 and confusion is not None:  # in TensorBoard; the counts stay out
        logger = outputs.MetricLogger(args.output_dir, args.log_dir, dist_info.is_main)
        logger.image("test/confusion", pictures.confusion_picture(confusion), 0)
        logger.close()
    views_file = results.pop("views_file")
    write_results(args, dist_info, results, [results.pop("predictions")], dataset.entries)
    with contextlib.suppress(FileNotFoundError):  # the views are in results.json now
        os.remove(views_file)
    return results


def main(args):
    dist_info = distributed.init_distributed(args.device, args.local_rank, args.enable_deepspeed,
                                             args.dist_timeout_s)
    outputs.open_output_dir(args, dist_info)
    args = utils.run_settings(args, dist_info.world_size)  # read-only from here on
    log.info("%s", utils.run_header(args, dist_info))
    distributed.seed_everything(args.seed)
    nb_classes = tasks.outputs(args.task, datasets.class_count(args))
    if args.linear_probe:
        linear_probe(args, dist_info, nb_classes)
        return 0
    model = build_model(args, nb_classes).to(dist_info.device)
    distributed.seed_everything(args.seed + dist_info.rank)  # same init everywhere, then per rank
    if args.eval:
        load_weights(model, args)
        test(model, args, dist_info, nb_classes, "test", model_identity(args))
        return 0
    report = load_weights(model, args) if args.finetune else None
    train_set, nb_classes = datasets.build_dataset(is_train=True, test_mode=False, args=args)
    if args.task == "counting" and "head.bias" in (report or {"missing": "head.bias"})["missing"]:
        torch.nn.init.constant_(model.head.bias, np.mean([c for _, c in train_set.entries]))
    val_set, _ = datasets.build_dataset(is_train=False, test_mode=False, args=args)
    loader, sampler = distributed.train_loader(train_set, args, dist_info,
                                               batches.collate_classification)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=args.scaled_lr,
                                    weight_decay=args.weight_decay, layer_decay=args.layer_decay,
                                    betas=tuple(args.opt_betas),
                                    fused=True)  # one kernel; skips non-finite steps on device
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None
    mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                     switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing,
                     num_classes=nb_classes) if args.task == "classification" and (
                         args.mixup > 0 or args.cutmix > 0) else None
    if args.task != "classification" and max(args.mixup, args.cutmix, args.smoothing) > 0:
        log.info("--task %s: mixup, cutmix and label smoothing are off", args.task)
    criterion = (tasks.loss(args.task) if args.task != "classification" else
                 SoftTargetCrossEntropy() if mixup_fn else LabelSmoothingCrossEntropy(
                     args.smoothing) if args.smoothing > 0 else torch.nn.CrossEntropyLoss())
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    loss_fn = functools.partial(engine.train_loss, criterion=criterion, device=dist_info.device,
                                precision=args.precision, mixup_fn=mixup_fn)

    def validate(net, epoch, logger):  # None when stopped: training.fit finishes it later
        if (val := resumable_evaluation(net, args, dist_info, val_set, nb_classes, "validation",
                                        f"the model after epoch {epoch + 1} of this run")) is None:
            return None
        with contextlib.suppress(FileNotFoundError):  # a cut resume validates from the start
            os.remove(val.pop("views_file"))
        log.info("epoch %d: val %s", epoch + 1, tasks.headline(args.task, val))
        if "confusion" in val and pictures.picture_due(epoch, args.epochs, args.vis_freq):
            logger.image("val/confusion", pictures.confusion_picture(val["confusion"]), epoch + 1)
        return {f"val_{k}": v for k, v in val.items() if isinstance(v, (int, float))}

    step = training.Step(model, optimizer, loss_fn, scaler, model_ema, args.update_freq,
                         args.clip_grad)
    net = training.fit(args, dist_info, training.Job(
        "fine-tuning", step, loader, sampler, train_set,
        model_kwargs=model_kwargs(args, nb_classes), after_epoch=validate))
    if net is None:  # stopped by a signal, saved: run the same command to resume
        return 0
    final = model_ema.module if model_ema is not None else net
    test(final, args, dist_info, nb_classes, "finetune",
         f"the fine-tuned model after {args.epochs} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(guard.run_cli(main, utils.parse_with_config(get_args_parser()), check_args))
