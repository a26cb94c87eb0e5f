"""Throughput of one SMILE pretraining step: clips/s, peak memory, teacher share, MFU.

    python bench/bench_pretrain_step.py                       # CPU: tiny student/teacher
    python bench/bench_pretrain_step.py --device cuda --model pretrain_videomae_base_patch16_224 \\
        --teacher_model clip_vit_b16 --num_frames 16 --input_size 224 --batch_size 32 \\
        --precision bf16 [--teacher_setup authors]

Random weights and random uint8 clips (the data path has its own benchmark). FLOPs are
counted by torch.utils.flop_counter on the real modules (teacher forward; student forward
and backward), not assumed. --teacher_setup authors runs the teacher as the authors' code
did: fp32 weights, no autocast, every block under gradient checkpointing.
MFU = counted FLOPs per second / --peak_tflops (default: H100/H200 dense bf16, 989).
"""
import argparse
import functools
import os
import sys
import time

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import batches  # noqa: E402
import engine_for_pretraining as engine  # noqa: E402
import modeling_pretrain  # noqa: E402
import run_smile_pretraining  # noqa: E402
import teachers  # noqa: E402
import training  # noqa: E402
from masking_generator import token_grid, tube_mask  # noqa: E402
from utils import normalize_video  # noqa: E402


def get_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="pretrain_videomae_tiny_patch16_224",
                   choices=sorted(modeling_pretrain.MODELS))
    p.add_argument("--teacher_model", default="clip_vit_tiny", choices=sorted(teachers.TEACHERS))
    p.add_argument("--num_frames", type=int, default=8)
    p.add_argument("--input_size", type=int, default=112)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--mask_ratio", type=float, default=0.8)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--teacher_setup", default="ours", choices=("ours", "authors"))
    p.add_argument("--teacher_frames", default="first", choices=("first", "all"))
    p.add_argument("--motion_loss_weight", type=float, default=0.0)
    p.add_argument("--use_checkpoint", action="store_true", help="student gradient checkpointing")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak_tflops", type=float, default=989.0)
    return p.parse_args()


def authors_teacher(teacher):
    """fp32, no autocast, each transformer block wrapped in gradient checkpointing."""
    for block in teacher.backbone.transformer.resblocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return teacher.float()


def count_flops(fn):
    """FLOPs of fn() with attention decomposed into counted matmuls: the fused kernels
    (nn.MultiheadAttention's fast path, some SDPA backends) are invisible to the counter."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter, sdpa_kernel(SDPBackend.MATH):
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def main():
    a = get_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    grid = token_grid(a.num_frames, a.input_size, 16, 2)
    targets = teachers.build_targets(  # as the run builds them (its input norm's default)
        grid, target_type="feature", patch_size=16, tubelet_size=2, target_norm="clip_channel",
        motion_loss_weight=a.motion_loss_weight, teacher_model=a.teacher_model,
        teacher_weights="random", teacher_frames=a.teacher_frames,
        teacher_input_norm=run_smile_pretraining.get_args_parser().get_default(
            "teacher_input_norm"))
    for target in targets:
        target.module = target.module.to(device)
        if target.name == "feature" and a.teacher_setup == "authors":
            target.module = authors_teacher(target.module)
        else:
            target.module = teachers.set_precision(target.module, a.precision)
    teacher = targets[0].module
    student = modeling_pretrain.build_student(a.model, a.input_size, 16, a.num_frames, 2,
                                              {t.name: t.dim for t in targets},
                                              use_checkpoint=a.use_checkpoint).to(device)
    optimizer = create_optimizer_v2(student, opt="adamw", lr=1e-4, weight_decay=0.05,
                                    betas=(0.9, 0.95), fused=True)  # as training
    scaler = torch.amp.GradScaler("cuda") if a.precision == "fp16" else None
    gen = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (a.batch_size, a.num_frames, a.input_size, a.input_size, 3),
                          dtype=torch.uint8, generator=gen).numpy()
    masks = [tube_mask(grid, a.mask_ratio, np.random.default_rng(i)) for i in range(a.batch_size)]
    batch = batches.collate_pretraining([([v], m[None], m[None] & False, []) for v, m in
                                         zip(video, masks)])  # as the loader makes it
    if device.type == "cuda":
        batch = batch._replace(video=batch.video.pin_memory())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    loss_fn = functools.partial(engine.train_loss, targets=targets, device=device,
                                precision=a.precision)
    parts = training.Step(student, optimizer, loss_fn, scaler)

    def step():  # as the runs take it
        return training.train_step(parts, batch, 1e-4, update=True)

    x = normalize_video(batch.video_on(device))
    teacher_flops = count_flops(lambda: teacher(x))
    step_flops = count_flops(step)  # teacher forward + student forward and backward
    if a.compile:  # after counting: the counter sees the eager modules' real operations
        student.compile()  # in place, as the runs: the step's job keeps these modules
        teacher.compile()
    for _ in range(a.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    step_time = (time.perf_counter() - start) / a.steps
    start = time.perf_counter()
    for _ in range(a.steps):
        teacher(x)
    sync()
    teacher_time = (time.perf_counter() - start) / a.steps

    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} | "
          f"{a.model} + {a.teacher_model} ({a.teacher_setup} teacher) | {a.num_frames}x"
          f"{a.input_size}^2, batch {a.batch_size}, mask {a.mask_ratio}, {a.precision}, teacher "
          f"on {a.teacher_frames} frames, motion loss x{a.motion_loss_weight:g}")
    print(f"clips/s                  {a.batch_size / step_time:10.1f}")
    print(f"step time                {1000 * step_time:10.1f} ms")
    print(f"teacher share of step    {teacher_time / step_time:10.1%}")
    print(f"GFLOPs per clip: teacher {teacher_flops / a.batch_size / 1e9:8.1f}, "
          f"student fwd+bwd {(step_flops - teacher_flops) / a.batch_size / 1e9:8.1f}")
    achieved = step_flops / step_time / 1e12
    print(f"achieved                 {achieved:10.2f} TFLOP/s"
          + (f"  (MFU {achieved / a.peak_tflops:.1%} of {a.peak_tflops:g})"
             if device.type == "cuda" else ""))
    if device.type == "cuda":
        print(f"peak memory              {torch.cuda.max_memory_allocated() / 2**30:10.2f} GiB")
    else:  # the whole process's peak resident memory (Linux reports KiB)
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak process memory      {peak:10.2f} GiB")


if __name__ == "__main__":
    main()
