import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_PROBE = os.path.join(ROOT, "tests", "exit_probe")
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

from media import moving_square_frames, write_video  # noqa: E402


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    """Real H.264 files: 4 normal clips in 2 classes, one 3-frame clip and several broken files."""
    root = tmp_path_factory.mktemp("videos")
    paths = {}
    for i in range(4):
        label = i % 2
        direction = (1, 0) if label == 0 else (0, 1)
        paths[f"clip{i}"] = write_video(str(root / f"class{label}" / f"clip{i}.mp4"),
                                        moving_square_frames(40, 80, 64, seed=i,
                                                             direction=direction))
    paths["short"] = write_video(str(root / "short.mp4"), moving_square_frames(3, 80, 64))
    paths["missing"] = str(root / "does_not_exist.mp4")
    paths["empty"] = str(root / "empty.mp4")
    open(paths["empty"], "wb").close()
    paths["text"] = str(root / "not_a_video.mp4")
    with open(paths["text"], "w") as f:
        f.write("this is not a video\n")
    data = open(paths["clip0"], "rb").read()
    paths["truncated"] = str(root / "truncated.mp4")
    with open(paths["truncated"], "wb") as f:
        f.write(data[:len(data) // 2])
    return paths


def write_list(path, entries):
    with open(path, "w") as f:
        f.writelines(f"{p} {label}\n" for p, label in entries)
    return str(path)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run_script(script, *argv, processes=1, wait=True, timeout=600, new_session=False,
               launcher=None, file_size_limit=None, env=None):
    """Run a project script as a user would (torchrun for several processes, or the given
    `launcher` command). With wait, the (exit code, stdout + stderr); without, the running
    Popen. new_session: in a process group of its own, to be signalled as a whole.
    file_size_limit: bytes no file written may exceed (RLIMIT_FSIZE: a disk that fills up).
    env: variables added to the environment."""
    if launcher is None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if len(launcher) > 1:  # each rank reports at exit its process group and gloo threads
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [EXIT_PROBE, env.get("PYTHONPATH")]))

    def limit_files():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    proc = subprocess.Popen([*launcher, script, *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=new_session,
                            preexec_fn=limit_files if file_size_limit else None)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def signal_every_process(proc, sig, times=1, interval=0.2):
    """`sig` to a process and all its descendants (launcher, ranks, DataLoader workers), as
    SLURM does to a job step, `times` times in a row."""
    import psutil
    for _ in range(times):
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        time.sleep(interval)


def assert_process_groups_closed(log, processes=2):
    """Every rank destroyed its process groups, threads included, before exiting (exit_probe/)."""
    closed = re.findall(r"exit probe: rank (\d+) process group closed, 0 gloo threads", log)
    assert sorted(closed) == [str(rank) for rank in range(processes)], log


def save_random_student(path, seed=0):
    """A randomly initialised tiny pretraining checkpoint (4 frames, 32 px), written and later
    loaded through the same path as a real one."""
    import torch

    import modeling_pretrain
    torch.manual_seed(seed)
    student = modeling_pretrain.build_student("pretrain_videomae_tiny_patch16_224", 32, 16, 4, 2,
                                              192)
    torch.save({"model": student.state_dict()}, path)
    return str(path)


def tensorboard_images(log_dir):
    """{tag: [(step, height, width)]} of the pictures in a run's TensorBoard folder, read with
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: [(i.step, i.height, i.width) for i in events.Images(tag)]
            for tag in events.Tags()["images"]}
