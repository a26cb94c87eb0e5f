"""SMILE pretraining: parse -> check -> build -> resume -> train -> save.

Stage 1 (motion-infused clips, trajectory masking) and stage 2 (original clips, tube masking,
started from the whole stage-1 student with `--first_stage_path`) are two runs of this script.
One process, torchrun, or SLURM srun; optional DeepSpeed.
"""
import argparse
import json
import logging
import os
import sys

import torch
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

import datasets
import masking_generator
import modeling_pretrain
import motion_infusion
import teachers
import utils
from engine_for_pretraining import NonFiniteLossError, train_one_epoch

log = logging.getLogger("smile")


def get_args_parser():
    parser = argparse.ArgumentParser("SMILE pretraining", description=__doc__)
    for module in (datasets, motion_infusion, masking_generator, teachers):
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


def finalize_args(args, world_size):
    """Derive once: the stage, its masking/infusion defaults, the grid and the scaled LRs."""
    args.stage = 2 if args.first_stage_path else 1
    if args.training_mode == "mixed" and args.infusion_prob is None:
        args.infusion_prob = 0.5
    datasets.resolve_stage(args, args.stage)
    if args.target_norm is None:
        args.target_norm = "none" if args.target_type == "pixel" else "clip_channel"
    args.grid = list(masking_generator.token_grid(args.num_frames, args.input_size,
                                                  args.patch_size, args.tubelet_size))
    utils.finalize_run_args(args, world_size)


def build_loader(args, dataset, dist_info):
    sampler = utils.ResumableSampler(len(dataset), args.batch_size, dist_info.rank,
                                     dist_info.world_size, args.seed)
    # workers are re-created each epoch (not persistent) so they see dataset.set_epoch
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.num_workers, drop_last=True,
                        pin_memory=args.pin_mem and dist_info.device.type == "cuda",
                        worker_init_fn=utils.seed_worker)
    return loader, sampler


def main(args):
    dist_info = utils.init_distributed(args.device, args.local_rank, args.enable_deepspeed)
    os.makedirs(args.output_dir, exist_ok=True)
    utils.setup_logging(dist_info, args.output_dir)
    finalize_args(args, dist_info.world_size)
    log.info("%s", utils.run_header(args, dist_info))
    if dist_info.is_main:
        with open(os.path.join(args.output_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)
    utils.seed_everything(args.seed)  # same model init on every rank

    dataset = datasets.build_pretraining_dataset(args)
    loader, sampler = build_loader(args, dataset, dist_info)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} clips make no full batch of {args.batch_size} x "
                         f"{dist_info.world_size} processes")
    teacher = teachers.build_teacher(args, tuple(args.grid)).to(dist_info.device)
    teacher = teachers.set_precision(teacher, args.precision)
    model_kwargs = dict(name=args.model, img_size=args.input_size, patch_size=args.patch_size,
                        num_frames=args.num_frames, tubelet_size=args.tubelet_size,
                        target_dim=teachers.target_dim(args), drop_path_rate=args.drop_path,
                        use_checkpoint=args.use_checkpoint)
    model = modeling_pretrain.build_student(**model_kwargs).to(dist_info.device)
    utils.seed_everything(args.seed + dist_info.rank)  # from here on, e.g. drop path, per rank
    optimizer = create_optimizer_v2(model, opt="adamw", lr=args.scaled_lr,
                                    weight_decay=args.weight_decay, betas=tuple(args.opt_betas),
                                    fused=dist_info.device.type == "cuda")  # one kernel per step
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None
    log.info("%s clips, %d steps/epoch x %d epochs, batch %d x %d processes x %d masks; "
             "lr %.3e (base %.3e per 256), stage %d: mask %s, infusion p=%.2f, teacher %s",
             len(dataset), steps_per_epoch, args.epochs, args.batch_size,
             dist_info.world_size, args.num_masks_per_clip, args.scaled_lr, args.lr, args.stage,
             args.mask_type, args.infusion_prob,
             args.target_type if args.target_type == "pixel" else args.teacher_model)

    start_epoch, first_batch = 0, 0
    resume = utils.resume_checkpoint(args)
    if resume:
        path, state = resume
        start_epoch, first_batch = utils.restore(state, model, optimizer, scaler)
        log.info("resumed from %s: epoch %d, batch %d (step %d)", path, start_epoch + 1,
                 first_batch, state["step"])
    elif args.first_stage_path:
        state = utils.load_checkpoint(args.first_stage_path)
        model.load_state_dict(state.get("model") or state["module"])
        log.info("stage 2: whole student from %s, fresh optimiser and schedule",
                 args.first_stage_path)

    model, optimizer, student = utils.wrap_for_training(model, optimizer, args, dist_info)

    warmup_steps = args.warmup_epochs * steps_per_epoch
    total_steps = args.epochs * steps_per_epoch

    def lr_at(step):
        return utils.cosine_lr(step, args.scaled_lr, args.scaled_min_lr, warmup_steps,
                               total_steps, args.scaled_warmup_lr)

    def save(name, epoch, next_batch):
        if dist_info.is_main:
            utils.save_checkpoint(os.path.join(args.output_dir, name), utils.training_state(
                student, optimizer, epoch, next_batch, steps_per_epoch, args, scaler,
                model_kwargs=model_kwargs))

    run = argparse.Namespace(steps_per_epoch=steps_per_epoch, epochs=args.epochs,
                             precision=args.precision, device=dist_info.device, dist=dist_info,
                             target_norm=args.target_norm, clip_grad=args.clip_grad,
                             print_freq=args.print_freq,
                             clips_per_batch=args.batch_size * dist_info.world_size)
    logger = utils.MetricLogger(args.output_dir, args.log_dir, dist_info.is_main)
    stop_flag = utils.StopFlag()
    for epoch in range(start_epoch, args.epochs):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, skip_batches=first_batch)
        try:
            stats, stopped_at = train_one_epoch(model, teacher, loader, optimizer, lr_at, epoch,
                                                first_batch, run, logger, stop_flag, scaler)
        except NonFiniteLossError as err:
            log.error("stopping at epoch %d: %s", epoch + 1, err)
            return 1
        if stopped_at is not None:
            save("checkpoint-latest.pth", epoch, stopped_at)
            log.info("%s received: saved epoch %d batch %d to checkpoint-latest.pth; run the "
                     "same command to resume", stop_flag.signal, epoch + 1, stopped_at)
            return 0
        first_batch = 0
        save("checkpoint-latest.pth", epoch + 1, 0)
        if dist_info.is_main:
            utils.keep_epoch_checkpoint(args.output_dir, epoch, args.epochs, args.save_ckpt_freq)
        logger.epoch({"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}})
        log.info("epoch %d done: loss %.4f", epoch + 1, stats["loss"])
    logger.close()
    log.info("finished %d epochs; checkpoints and logs in %s", args.epochs, args.output_dir)
    return 0


if __name__ == "__main__":
    cli_args = parse_args()
    try:
        check_args(cli_args)
    except ValueError as err:
        sys.exit(f"error: {err}")
    code = main(cli_args)
    if code == 0:  # every rank returns 0 together; one that failed alone (NaN) just exits
        utils.close_distributed()
    sys.exit(code)
