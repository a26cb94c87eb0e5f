import argparse

import numpy as np
import pytest

import masking_generator as mg


def blob(grid, fraction, rng):
    """Object tokens: a random rectangle per slice covering about `fraction` of the grid."""
    t, h, w = grid
    cells = np.zeros(grid, bool)
    if fraction > 0:
        rh = max(1, int(round(h * np.sqrt(fraction))))
        rw = max(1, min(w, int(round(h * w * fraction / rh))))
        for i in range(t):
            r0, c0 = rng.integers(h - rh + 1), rng.integers(w - rw + 1)
            cells[i, r0:r0 + rh, c0:c0 + rw] = True
    return cells.reshape(-1)


GRIDS = [(8, 14, 14), (4, 7, 7), (2, 4, 4), (8, 12, 20), (1, 14, 14)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.38, 0.7, 1.0])
def test_trajectory_mask_budget_and_coverage(grid, ratio, fraction):
    t, h, w = grid
    budget = t * int(ratio * h * w)
    for seed in range(15):
        rng = np.random.default_rng(seed)
        objects = blob(grid, fraction, rng)
        mask = mg.trajectory_mask(grid, ratio, objects, 0.1, rng)
        assert mask.dtype == bool and mask.shape == (t * h * w,)
        assert mask.sum() == budget
        n_obj = objects.sum()
        kept_visible = int(round(0.1 * n_obj))
        masked_obj = (mask & objects).sum()
        if n_obj - kept_visible <= budget:
            # the budget allows it: at least 90 % of the object tokens are masked
            assert masked_obj >= n_obj - kept_visible
            assert masked_obj >= (1 - 0.1) * n_obj - 0.5
            background_visible = (~mask & ~objects).sum()
            if background_visible > 0:  # background absorbed the whole deficit
                assert masked_obj == n_obj - kept_visible
        else:
            # too many object tokens: every masked token is an object token
            assert (mask & ~objects).sum() == 0


def test_trajectory_mask_unmask_ratio_is_used():
    grid = (8, 14, 14)
    rng = np.random.default_rng(0)
    objects = blob(grid, 0.3, rng)
    for ratio in (0.0, 0.1, 0.3):
        mask = mg.trajectory_mask(grid, 0.8, objects, ratio, np.random.default_rng(1))
        visible = (objects & ~mask).sum()
        assert visible == int(round(ratio * objects.sum()))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9])
def test_tube_mask_same_cells_every_slice(grid, ratio):
    t, h, w = grid
    for seed in range(10):
        mask = mg.tube_mask(grid, ratio, np.random.default_rng(seed)).reshape(t, h * w)
        assert (mask == mask[0]).all()
        assert mask[0].sum() == int(ratio * h * w)


def test_videomae_interface():
    generator = mg.TubeMaskingGenerator((8, 14, 14), 0.9)
    mask = generator()
    assert mask.shape == (1568,) and mask.dtype == bool and mask.sum() == 8 * 176
    assert generator.num_masks == 1408
    assert "1408" in repr(generator)


def test_masks_deterministic_per_seed():
    grid = (8, 14, 14)
    objects = blob(grid, 0.3, np.random.default_rng(5))
    traj = mg.TrajectoryMaskingGenerator(grid, 0.8, 0.1)
    a = traj(np.random.default_rng(3), objects)
    b = traj(np.random.default_rng(3), objects)
    c = traj(np.random.default_rng(4), objects)
    assert (a == b).all() and not (a == c).all()


def test_boxes_to_tokens_rule():
    grid = (2, 4, 4)
    boxes = np.full((1, 4, 4), np.nan, np.float32)
    boxes[0, 0] = (10, 20, 40, 50)   # slice 0
    boxes[0, 1] = (12, 22, 30, 40)   # union with frame 0 -> same extent
    cells = mg.boxes_to_tokens(boxes, grid, patch_size=16, tubelet_size=2).reshape(grid)
    expected = np.zeros((4, 4), bool)
    expected[1:4, 0:4] = True  # rows floor(20/16)=1 .. ceil(50/16)+1=5 -> 4; cols 0 .. 4
    assert (cells[0] == expected).all()
    assert not cells[1].any()  # frames 2, 3 absent


def test_boxes_outside_frame_give_no_tokens():
    boxes = np.array([[[-80, -80, -40, -40]] * 2], np.float32)
    assert not mg.boxes_to_tokens(boxes, (1, 4, 4), 16, 2).any()


def test_footprint_to_tokens():
    footprint = np.zeros((4, 64, 64), bool)
    footprint[3, 17, 33] = True
    cells = mg.footprint_to_tokens(footprint, (2, 4, 4), 16, 2).reshape(2, 4, 4)
    assert cells.sum() == 1 and cells[1, 1, 2]


def test_token_grid_checks():
    assert mg.token_grid(16, 224, 16, 2) == (8, 14, 14)
    assert mg.token_grid(8, 112, 16, 2) == (4, 7, 7)
    with pytest.raises(ValueError, match="num_frames 15"):
        mg.token_grid(15, 224, 16, 2)
    with pytest.raises(ValueError, match="input_size 200"):
        mg.token_grid(16, 200, 16, 2)


@pytest.mark.parametrize("name,cls", [("tube", mg.TubeMaskingGenerator),
                                      ("tubelet", mg.TubeMaskingGenerator),
                                      ("trajectory", mg.TrajectoryMaskingGenerator)])
def test_build_mask_generator(name, cls):
    args = mg.add_args(argparse.ArgumentParser()).parse_args(["--mask_type", name])
    generator = mg.build_mask_generator((8, 14, 14), args.mask_type, args.mask_ratio,
                                        args.traj_unmask_ratio)
    assert type(generator) is cls
    assert generator(np.random.default_rng(0)).sum() == 1248
