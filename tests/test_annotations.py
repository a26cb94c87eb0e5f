"""tools/convert_annotations.py on small files laid out as each dataset publishes them, and
tools/subset_list.py: exact, stratified, seeded low-shot subsets."""
import collections

import numpy as np
import pytest
from scipy.io import savemat

import lists
from tools import convert_annotations, subset_list


def converted(tmp_path, dataset, *flags, task="classification"):
    out = tmp_path / "lists"
    assert convert_annotations.main([dataset, str(tmp_path / "ann"), str(out), *flags]) == 0
    return {split: lists.read_list(str(out / f"{split}.csv"), root="/v", task=task)
            for split in ("train", "val", "test")}


def test_kinetics_and_something_something_lists(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    header = "label,youtube_id,time_start,time_end,split\n"
    (ann / "train.csv").write_text(header + "riding a bike,abc,10,20,train\n"
                                   "abseiling,xyz,0,10,train\n")
    (ann / "validate.csv").write_text(header + "riding a bike,def,3,13,val\n")
    out = converted(tmp_path, "k400")
    assert out["train"] == [("/v/riding_a_bike/abc_000010_000020.mp4", 1),
                            ("/v/abseiling/xyz_000000_000010.mp4", 0)]
    assert out["test"] == [("/v/riding_a_bike/def_000003_000013.mp4", 1)]
    (ann / "something-something-v2-labels.json").write_text(
        '{"Holding something": "0", "Pushing something from left to right": "1"}')
    (ann / "something-something-v2-train.json").write_text(
        '[{"id": "78687", "template": "Pushing [something] from left to right"}]')
    (ann / "something-something-v2-validation.json").write_text(
        '[{"id": "74225", "template": "Holding [something]"}]')
    out = converted(tmp_path, "ssv2")
    assert out["train"] == [("/v/78687.webm", 1)] and out["test"] == [("/v/74225.webm", 0)]


def test_ucf101_fold_lists_count_classes_from_zero(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (ann / "trainlist02.txt").write_text("Archery/v_Archery_g08_c01.avi 2\n"
                                         "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (ann / "testlist02.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    out = converted(tmp_path, "ucf101", "--fold", "2")
    assert out["train"] == [("/v/Archery/v_Archery_g08_c01.avi", 1),
                            ("/v/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0)]
    assert out["test"] == out["val"] == [("/v/Archery/v_Archery_g01_c01.avi", 1)]


def test_hmdb51_marks_train_and_test(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    for k in range(51):
        (ann / f"class{k:02d}_test_split1.txt").write_text(
            f"a{k}.avi 1 \nb{k}.avi 2 \nc{k}.avi 0 \n")
    out = converted(tmp_path, "hmdb51")
    assert out["train"][3] == ("/v/class03/a3.avi", 3) and len(out["train"]) == 51
    assert out["test"][50] == ("/v/class50/b50.avi", 50) and len(out["test"]) == 51


def test_epic100_verbs_as_segments_from_frame_zero(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    header = "narration_id,participant_id,video_id,start_frame,stop_frame,verb,verb_class\n"
    (ann / "EPIC_100_train.csv").write_text(header + "P01_01_0,P01,P01_01,8,202,open,3\n")
    (ann / "EPIC_100_validation.csv").write_text(header + "P02_09_4,P02,P02_09,1,60,take,0\n")
    out = converted(tmp_path, "epic100")
    assert out["train"] == [("/v/P01/videos/P01_01.MP4", 3)]
    assert out["train"].segments == [(7, 201)] and out["test"].segments == [(0, 59)]


def test_finegym_subsets_keep_their_classes_relabelled_from_zero(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    rows = "".join(f"vid{label}_E_000001_000010_A_0001_0002 {label}\n" for label in (0, 6, 16, 17,
                                                                                     74, 88))
    (ann / "gym99_train_element_v1.1.txt").write_text(rows)
    (ann / "gym99_val_element.txt").write_text(rows)
    assert [label for _, label in converted(tmp_path, "gym99")["train"]] == [0, 6, 16, 17, 74, 88]
    fx = converted(tmp_path, "gym99", "--subset", "FX-S1")["test"]
    assert fx == [("/v/vid6_E_000001_000010_A_0001_0002.mp4", 0),
                  ("/v/vid16_E_000001_000010_A_0001_0002.mp4", 10)]
    assert [label for _, label in converted(tmp_path, "gym99", "--subset", "UB-S1")["train"]] == [
        0, 14]


def test_charades_videos_carry_their_action_set(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    header = "id,subject,scene,actions,length\n"
    (ann / "Charades_v1_train.csv").write_text(
        header + '46GP8,HR43,Kitchen,"c092 11.90 21.20;c147 0.00 12.60;c092 3.0 5.0",24.8\n'
        "N11GT,0KZ7,Stairs,,18.0\n")
    (ann / "Charades_v1_test.csv").write_text(header + "0A8CF,5RS2,Bedroom,c000 1.0 2.0,10.0\n")
    out = converted(tmp_path, "charades", task="multi_label")
    assert out["train"] == [("/v/46GP8.mp4", (92, 147))] and out["test"] == [("/v/0A8CF.mp4", (0,))]


def test_ucfrep_counts_repetitions_between_the_bounds(tmp_path):
    for split, name, bounds in (("train", "v_JumpRope_g01_c01", [5, 30, 60, 90]),
                                ("train", "v_Drumming_g02_c03", [1, 40]),  # one: left out
                                ("val", "v_Swing_g05_c02", [10, 20, 30])):
        folder = tmp_path / "ann" / split
        folder.mkdir(parents=True, exist_ok=True)
        savemat(str(folder / f"{name}.mat"), {"label": {
            "duration": 120, "start_frame": bounds[0], "end_frame": bounds[-1],
            "temporal_bound": np.array(bounds, float)[:, None]}})
    out = converted(tmp_path, "ucfrep", task="counting")
    assert out["train"] == [("/v/JumpRope/v_JumpRope_g01_c01.avi", 3.0)]
    assert out["train"].segments == [(4, 89)] and out["test"] == [("/v/Swing/v_Swing_g05_c02.avi",
                                                                   2.0)]


@pytest.mark.parametrize("dataset,files,message", [
    ("ucf101", {"classInd.txt": "1 Archery\n", "trainlist01.txt": "Bowling/v_B.avi 2\n",
                "testlist01.txt": ""}, r"trainlist01.txt:1: class 'Bowling' is not in classInd"),
    ("epic100", {"EPIC_100_train.csv": "participant_id,video_id,start_frame,stop_frame,"
                                       "verb_class\nP01,P01_01,start,9,3\n",
                 "EPIC_100_validation.csv": ""}, r"EPIC_100_train.csv:2: start_frame 'start' is "
                                                 r"not an integer"),
    ("charades", {"Charades_v1_train.csv": "id,actions\nX,c01 1.0\n",
                  "Charades_v1_test.csv": "id,actions\n"}, r"Charades_v1_train.csv:2: actions "
                                                           r"'c01 1.0': expected 'cNNN START END"),
    ("gym99", {"gym99_train_element_v1.1.txt": "a_E_1 x\n", "gym99_val_element.txt": ""},
     r"gym99_train_element_v1.1.txt:1: label 'x' is not an integer"),
    ("hmdb51", {"a_test_split1.txt": "x.avi 1\n"}, r"1 files \*_test_split1.txt, HMDB-51 has 51"),
    ("k400", {"train.csv": "label,youtube_id,time_start,time_end\na,x,0,10\n",
              "validate.csv": "label,youtube_id,time_start,time_end\nb,y,0,10\n"},
     r"validate.csv:2: class 'b' is not one of train.csv's"),
    ("ssv2", {"something-something-v2-labels.json": '{"Holding something": "0"}',
              "something-something-v2-train.json": '[{"id": "1", "template": "Dropping x"}]'},
     r"something-something-v2-train.json:1: template 'Dropping x' is not in the labels file"),
    ("epic100", {}, r"EPIC_100_train.csv: not found \(--help lists the files of each dataset\)"),
])
def test_a_row_the_converter_cannot_read_is_one_line(tmp_path, capsys, dataset, files, message):
    ann = tmp_path / "ann"
    ann.mkdir()
    for name, text in files.items():
        (ann / name).write_text(text)
    with pytest.raises(SystemExit) as stop:
        convert_annotations.main([dataset, str(ann), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err


def test_a_subset_is_exact_stratified_and_seeded(tmp_path):
    source = tmp_path / "train.csv"
    sizes = {0: 50, 1: 30, 2: 15, 3: 5}  # 100 rows
    source.write_text("# frame_stride 2\n" + "".join(
        f"c{label}/v{i}.mp4 {label}\n" for label, n in sizes.items() for i in range(n)))
    picks = []
    for seed in (0, 0, 1):
        out = tmp_path / f"sub{seed}.csv"
        assert subset_list.main([str(source), str(out), "17", "--seed", str(seed)]) == 0
        text = out.read_text()
        picks.append(text)
        assert text.startswith("# frame_stride 2\n")
        entries = lists.read_list(str(out))
        counts = collections.Counter(label for _, label in entries)
        # shares 8.5, 5.1, 2.55, 0.85: floors 8, 5, 2, 0 (15), the two largest remainders
        # (0.85 and 0.55) take the last two
        assert len(entries) == 17 and counts == {0: 8, 1: 5, 2: 3, 3: 1}
        assert len(set(entries)) == 17 and entries.frame_stride == 2
        order = [int(p.split("/v")[1][:-4]) + 100 * label for p, label in entries]
        assert order == sorted(order)  # the list's own order
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_a_subset_larger_than_the_list_is_one_line(tmp_path, capsys):
    source = tmp_path / "train.csv"
    source.write_text("a.mp4 0\nb.mp4 1\n")
    with pytest.raises(SystemExit):
        subset_list.main([str(source), str(tmp_path / "out.csv"), "3"])
    assert capsys.readouterr().err == (f"error: N = 3: {source} has 2 rows; N must be in "
                                       "[1, 2]\n")


def test_the_results_table_sets_a_checkpoint_beside_the_papers_rows(tmp_path):
    from tools import results_table
    runs = tmp_path / "eval"
    for experiment, results in (("probe_ucf101", dict(top1=81.25)),
                                ("severe_ucfrep", dict(task="counting", mae_normalised=0.2)),
                                ("severe_charades", dict(task="multi_label", mAP=30.0))):
        (runs / "mine" / experiment).mkdir(parents=True)
        (runs / "mine" / experiment / "results.json").write_text(__import__("json").dumps(results))
    (runs / "mine" / "probe_k400").mkdir()  # started, not finished
    assert results_table.main([str(runs), "--markdown", str(tmp_path / "t.md"), "--csv",
                               str(tmp_path / "t.csv")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert "| mine | - | 81.2 | - | - | - | - |" in table
    assert "| mine | - | - | - | - | - | - | 0.200 | 30.0 | - |" in table
    # the paper's own means come out of its own figures (UCF-RC counted as 100 (1 - error))
    assert "| SMILE (paper) | 72.1 | 90.8 | 86.4 | 35.1 | 55.1 | 88.3 | 0.170 | 32.5 | 67.9 |" \
        in table and "| VideoMAE (paper) | 68.6 |" in table and "| 57.6 |" in table
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].startswith("checkpoint,probe_k400,probe_ucf101") and rows[-1].startswith(
        "mine,,81.25,")
