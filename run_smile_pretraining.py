"""SMILE pretraining: parse -> check -> build -> resume -> train -> save.

Stage 1 (motion-infused clips, trajectory masking) and stage 2 (original clips, tube masking,
started from the whole stage-1 student with `--first_stage_path`) are two runs of this script.
One process, torchrun, or SLURM srun; optional DeepSpeed.
"""
from stop_signals import installed  # noqa: F401  first: a stop signal during the imports is kept

import argparse
import functools
import logging
import os
import sys

import torch
from timm.optim import create_optimizer_v2

import batches
import checkpoint
import datasets
import decode_ahead
import distributed
import masking_generator
import modeling_pretrain
import motion_infusion
import object_banks
import outputs
import pictures
import teachers
import guard
import training
import utils
from engine_for_pretraining import target_and_prediction, train_loss
from video_transforms import to_tensor

log = logging.getLogger("smile")


def get_args_parser():
    parser = argparse.ArgumentParser("SMILE pretraining", description=__doc__)
    for module in (datasets, motion_infusion, object_banks, masking_generator, teachers):
        module.add_args(parser)
    datasets.add_pretraining_args(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--training_mode", default="progressive",
                   choices=("progressive", "mixed", "single"),
                   help="progressive: stage 1 infused + trajectory masks, then stage 2 (with "
                        "--first_stage_path) original + tube masks; mixed: each clip infused "
                        "with --infusion_prob (default 0.5); single: every clip infused")
    g.add_argument("--first_stage_path", default=None,
                   help="stage-1 checkpoint: stage 2 starts from its whole student")
    g.add_argument("--model", default="pretrain_videomae_base_patch16_224",
                   choices=sorted(modeling_pretrain.MODELS))
    g.add_argument("--use_checkpoint", action=argparse.BooleanOptionalAction, default=False,
                   help="gradient checkpointing of the student (less memory, slower)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile student and teacher (one graph each: the masks travel "
                        "as token indices)")
    utils.add_run_args(parser)
    parser.set_defaults(batch_size=32, epochs=800, lr=1.5e-4, min_lr=1e-5, warmup_lr=1e-6,
                        warmup_epochs=40, opt_betas=(0.9, 0.95), output_dir="runs/pretrain")
    return parser


def parse_args(argv=None):
    return utils.parse_with_config(get_args_parser(), argv)


def check_args(args):
    """Every unusable combination as one ValueError line, before anything is built."""
    datasets.check_args(args)
    teachers.check_args(args)
    if args.first_stage_path and args.training_mode != "progressive":
        raise ValueError("--first_stage_path is for --training_mode progressive (stage 2)")
    if args.first_stage_path and not os.path.isfile(args.first_stage_path):
        raise ValueError(f"--first_stage_path {args.first_stage_path} does not exist; stage 2 "
                         "starts from a stage-1 checkpoint (OUTPUT_DIR/checkpoint-N.pth)")
    utils.check_run_args(args)
    if args.batch_size % args.repeated_sampling:
        raise ValueError(f"--batch_size {args.batch_size} must be a multiple of "
                         f"--repeated_sampling {args.repeated_sampling} (clips per video)")


def settle(args, world_size=1):
    """The run's read-only settings (utils.Settings): the flags, with what the stage implies
    where they were left unset, the token grid and the run-wide values (utils.run_settings)."""
    stage = 2 if args.first_stage_path else 1
    implied = datasets.implied_by_stage(args, stage)
    if args.target_norm is None:
        implied["target_norm"] = "none" if args.target_type == "pixel" else "clip_channel"
    grid = masking_generator.token_grid(args.num_frames, args.input_size, args.patch_size,
                                        args.tubelet_size)
    return utils.run_settings(args, world_size, stage=stage, grid=grid, **implied)


def main(args):
    dist_info = distributed.init_distributed(args.device, args.local_rank, args.enable_deepspeed,
                                             args.dist_timeout_s)
    outputs.open_output_dir(args, dist_info)
    args = settle(args, dist_info.world_size)  # read-only from here on
    log.info("%s", utils.run_header(args, dist_info))
    distributed.seed_everything(args.seed)  # same model init on every rank

    dataset = datasets.build_pretraining_dataset(args)
    loader, sampler = distributed.train_loader(dataset, args, dist_info,
                                               batches.collate_pretraining, args.repeated_sampling)
    targets = teachers.build_targets(  # what the student regresses
        args.grid, target_type=args.target_type, patch_size=args.patch_size,
        tubelet_size=args.tubelet_size, target_norm=args.target_norm,
        motion_loss_weight=args.motion_loss_weight, teacher_model=args.teacher_model,
        teacher_weights=args.teacher_weights, teacher_input_norm=args.teacher_input_norm,
        teacher_frames=args.teacher_frames)
    for target in targets:
        target.module = teachers.set_precision(target.module.to(dist_info.device),
                                               args.precision)
    model_kwargs = dict(name=args.model, img_size=args.input_size, patch_size=args.patch_size,
                        num_frames=args.num_frames, tubelet_size=args.tubelet_size,
                        heads={t.name: t.dim for t in targets}, drop_path_rate=args.drop_path,
                        use_checkpoint=args.use_checkpoint)
    model = modeling_pretrain.build_student(**model_kwargs).to(dist_info.device)
    if args.compile:  # in place: the state dict keeps its keys
        model.compile()
        for target in targets:
            target.module.compile()
    distributed.seed_everything(args.seed + dist_info.rank)  # from here on (drop path) per rank
    optimizer = create_optimizer_v2(model, opt="adamw", lr=args.scaled_lr,
                                    weight_decay=args.weight_decay, betas=tuple(args.opt_betas),
                                    fused=True)  # one kernel; skips non-finite steps on device
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None
    target = args.target_type if args.target_type == "pixel" else (
        f"{args.teacher_model} on {'every' if args.teacher_frames == 'all' else 'the first'} "
        "frame of each tubelet")
    if args.motion_loss_weight:
        target += f", motion loss x{args.motion_loss_weight:g}"
    log.info("%s videos, %d steps/epoch x %d epochs, batch %d clips (%d per video) x %d "
             "processes x %d masks, %d clips per update (--update_freq %d); lr %.3e (base %.3e "
             "per 256), stage %d: mask %s, infusion p=%.2f, teacher %s", len(dataset),
             len(loader), args.epochs, args.batch_size, args.repeated_sampling,
             dist_info.world_size, args.num_masks_per_clip, args.total_batch_size,
             args.update_freq, args.scaled_lr, args.lr, args.stage, args.mask_type,
             args.infusion_prob, target)
    prefetch = decode_ahead.DecodeAhead(args.video_backend, dist_info.device,
                                        args.decode_threads) if args.decode_on == "device" else None
    if args.augment_on == "device":
        decoder = prefetch and (f"NVDEC on {dist_info.device}" if prefetch.nvdec else
                                f"{args.video_backend} on the CPU")
        log.info("pixel work on %s; videos decoded by %s", dist_info.device,
                 "the loader workers" if prefetch is None else
                 f"this process a batch ahead, {args.decode_threads} threads, {decoder}")

    def load_first_stage(model):  # stage 2 starts here, unless fit finds this run to resume
        state = checkpoint.load_checkpoint(args.first_stage_path)
        if checkpoint.kind_of(state) not in ("stage-1 pretraining", None):  # None: the authors'
            raise checkpoint.CheckpointError(
                args.first_stage_path, f"it is {checkpoint.describe(state)}; stage 2 needs a "
                "stage-1 pretraining checkpoint (checkpoint-N.pth of a run without "
                "--first_stage_path)")
        weights = checkpoint.model_weights(state)
        own = model.state_dict()
        # a target stage 1 did not have (--motion_loss_weight) or of another width
        # (--teacher_frames all) gets a fresh head; the encoder and the decoder's blocks load
        head = {k: k.split(".")[1] for k in {**weights, **own} if k.startswith("decoder.")
                and k.split(".")[1].endswith("head")}  # key -> its head's name
        ours = {modeling_pretrain.head_name(t.name) for t in targets}
        fresh = sorted({head[k] for k in own if k in head and (
            k not in weights or weights[k].shape != own[k].shape)})
        unused = sorted({head[k] for k in weights if k in head and head[k] not in ours})
        checkpoint.load_model_weights(model, {
            **{k: v for k, v in weights.items() if head.get(k) not in fresh + unused},
            **{k: v for k, v in own.items() if head.get(k) in fresh}}, args.first_stage_path)
        log.info("stage 2: whole student from %s, fresh optimiser and schedule%s%s",
                 args.first_stage_path,
                 f"; new heads start fresh: decoder.{', decoder.'.join(fresh)}" if fresh else "",
                 f"; stage 1's decoder.{', decoder.'.join(unused)} not used" if unused else "")

    # a held-aside sample for the pictures (rank 0): the same clip every time, with its first
    # mask (bool per token, True = masked) and that mask's token indices
    sample = dataset.retrying(0, dataset.stages)[0] if dist_info.is_main and (
        args.vis_freq != 0) else None

    def show(net, epoch, logger):  # TensorBoard pictures at an epoch's end, off the step
        if sample is None or not pictures.picture_due(epoch, args.epochs, args.vis_freq):
            return {}
        token_mask = sample["mask"].reshape(-1, sample["mask"].shape[-1])[0]
        logger.image("pretrain/sample", pictures.sample_picture(
            sample["infused"], token_mask, sample["object_tokens"], args.grid, args.patch_size,
            args.tubelet_size), epoch + 1)
        visible, masked = (torch.from_numpy(i) for i in masking_generator.mask_indices(
            token_mask))
        target, prediction = target_and_prediction(
            net, targets[0], to_tensor(sample["infused"]), visible, masked, dist_info.device,
            args.precision)
        logger.image("pretrain/prediction", pictures.prediction_picture(
            target, prediction, masked.numpy(), args.grid, args.patch_size), epoch + 1)
        return {}

    loss_fn = functools.partial(train_loss, targets=targets, device=dist_info.device,
                                precision=args.precision)
    step = training.Step(model, optimizer, loss_fn, scaler, accumulation=args.update_freq,
                         clip_grad=args.clip_grad)
    training.fit(args, dist_info, training.Job(
        f"stage-{args.stage} pretraining", step, loader, sampler, dataset,
        model_kwargs=model_kwargs, after_epoch=show,
        initialize=load_first_stage if args.first_stage_path else None, prefetch=prefetch))
    return 0  # finished, or stopped by a signal after saving


if __name__ == "__main__":
    sys.exit(guard.run_cli(main, parse_args(), check_args))
