"""FSCIL sessions: invariants, the draw order, CEC/TOPIC index files of both line styles, the
registered ``fscil`` scenario and ``describe --json``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clplat.data import build_dataset, data_config
from clplat.errors import UserError
from clplat.scenarios import ScenarioConfig, build_scenario
from clplat.scenarios.fscil import fscil_classes, fscil_sessions, read_index_files
from tests.fscil_trees import MINI_WNIDS, make_cub, make_mini_csv, make_mini_tree


def labels(n_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


# --- fscil_sessions ------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(C=st.integers(3, 20), per=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
       order=st.sampled_from(["seeded", "contiguous"]), data=st.data())
def test_invariants(C, per, seed, order, data):
    shots = data.draw(st.integers(1, per))
    base = data.draw(st.integers(1, C - 1))
    ways = data.draw(st.integers(1, C - base))
    n_sessions = data.draw(st.integers(0, (C - base) // ways))
    t = labels(C, per, seed % 7)
    sessions = fscil_sessions(t, base, ways, shots, n_sessions, seed, class_order=order)
    classes = fscil_classes(C, base, ways, n_sessions, seed, order)
    assert len(sessions) == n_sessions + 1
    flat = [i for s in sessions for i in s]
    assert len(flat) == len(set(flat))  # no sample twice
    owner = [set(t[s].tolist()) for s in sessions]
    assert all(not (owner[a] & owner[b]) for a in range(len(owner)) for b in range(a))  # disjoint classes
    assert owner[0] == set(classes[0]) and len(classes[0]) == base
    assert sessions[0] == np.flatnonzero(np.isin(t, classes[0])).tolist()  # every base sample, dataset order
    for s in range(1, n_sessions + 1):
        assert owner[s] == set(classes[s]) and len(classes[s]) == ways
        assert np.bincount(t[sessions[s]], minlength=C)[classes[s]].tolist() == [shots] * ways
    if order == "contiguous":
        assert classes[0] == list(range(base))


def test_hand_worked_draw_order():
    t = np.array([0, 1, 2, 3, 2, 3, 2, 3, 0, 1])
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(4, generator=g).tolist()
    base, novel = order[:2], order[2:]
    expected = [np.flatnonzero(np.isin(t, base)).tolist(), []]
    for c in novel:  # one session of 2 ways: per class, randperm over its indices, first 2
        idx = np.flatnonzero(t == c)
        expected[1] += idx[torch.randperm(len(idx), generator=g)[:2].numpy()].tolist()
    assert fscil_sessions(t, 2, 2, 2, 1, seed=3) == expected
    assert fscil_classes(4, 2, 2, 1, 3) == [base, novel]


def test_seeded_determinism():
    t = labels(12, 10)
    a = fscil_sessions(t, 4, 2, 3, 4, seed=7)
    assert a == fscil_sessions(t, 4, 2, 3, 4, seed=7)
    assert a != fscil_sessions(t, 4, 2, 3, 4, seed=8)
    c = fscil_sessions(t, 4, 2, 3, 4, seed=7, class_order="contiguous")
    d = fscil_sessions(t, 4, 2, 3, 4, seed=8, class_order="contiguous")
    assert c[0] == d[0] and c[1:] != d[1:]  # label order: same classes, other shots


def test_unused_classes_allowed():
    t = labels(10, 5)
    sessions = fscil_sessions(t, 4, 2, 1, 2, seed=0, class_order="contiguous")
    assert set(t[[i for s in sessions for i in s]].tolist()) == set(range(8))


def test_too_few_samples_for_shots():
    t = np.concatenate([np.repeat(np.arange(5), 6), [5, 5]])
    with pytest.raises(UserError, match=r"session 2 needs 3 shots of class 5, but it has only 2"):
        fscil_sessions(t, 2, 2, 3, 2, seed=0, class_order="contiguous")


def test_too_many_classes_requested():
    with pytest.raises(UserError, match=r"4 \+ 3 x 2 = 10 is larger than the dataset's 8 classes"):
        fscil_sessions(labels(8, 5), 4, 3, 1, 2, seed=0)


# --- index files ---------------------------------------------------------------------------------

def write_sessions(folder, sessions: list[list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, lines in enumerate(sessions, start=1):
        (folder / f"session_{k}.txt").write_text("".join(f"{line}\n" for line in lines))


def test_integer_lines(tmp_path):
    split = SimpleNamespace(targets=labels(4, 3))
    write_sessions(tmp_path, [["0", "5", "11"], ["", "2 ", "7"]])  # blank lines and spaces are fine
    assert read_index_files(tmp_path, split) == [[0, 5, 11], [2, 7]]
    assert read_index_files(tmp_path, split, n_files=1) == [[0, 5, 11]]


def test_cifar100_integer_lines_index_the_pickle_order(tmp_path):
    import pickle

    from tests.test_local_datasets import fake_cifar100

    fine = fake_cifar100(tmp_path / "data", n_train=7)
    data = build_dataset(data_config(dataset="cifar100", root=str(tmp_path / "data"), normalize=False), seed=0)
    write_sessions(tmp_path / "idx", [["6", "0", "3"], ["5"]])
    sessions = read_index_files(tmp_path / "idx", data.train)
    assert sessions == [[6, 0, 3], [5]]
    raw = pickle.loads((tmp_path / "data" / "cifar-100-python" / "train").read_bytes())["data"]
    x, y = data.train.__getitems__(sessions[0])
    torch.testing.assert_close(x, torch.from_numpy(raw[[6, 0, 3]].reshape(3, 3, 32, 32)).float() / 255)
    assert y.tolist() == fine[[6, 0, 3]].tolist()


def test_integer_line_out_of_range(tmp_path):
    write_sessions(tmp_path, [["0", "1"], ["4", "12"]])
    with pytest.raises(UserError, match=r"session_2.txt line 2: sample index 12 is outside"):
        read_index_files(tmp_path, SimpleNamespace(targets=labels(4, 3)))


def test_cub_path_lines_match_by_class_and_file(tmp_path):
    exp = make_cub(tmp_path / "data")
    data = build_dataset(data_config(dataset="cub200", root=str(tmp_path / "data")), seed=0)
    train = [p for p, _ in exp["train"]]
    # the CEC form, and the same files under some other prefix: both match by class/file
    write_sessions(tmp_path / "idx", [[train[4], train[0]], [f"/elsewhere/CUB/images/{train[7].split('/', 2)[2]}"]])
    assert read_index_files(tmp_path / "idx", data.train) == [[4, 0], [7]]


@pytest.mark.parametrize("layout", ["tree", "csv"])
def test_mini_path_lines_both_layouts(tmp_path, layout):
    (make_mini_tree if layout == "tree" else make_mini_csv)(tmp_path / "data")
    data = build_dataset(data_config(dataset="mini_imagenet", root=str(tmp_path / "data")), seed=0)
    w = MINI_WNIDS
    write_sessions(tmp_path / "idx", [[f"MINI-ImageNet/train/{w[0]}/{w[0]}00000003.jpg"],
                                      [f"MINI-ImageNet/train/{w[2]}/{w[2]}00000001.jpg"]])
    assert read_index_files(tmp_path / "idx", data.train) == [[3], [9]]


def test_unknown_path_line_names_file_and_line(tmp_path):
    make_mini_csv(tmp_path / "data")
    data = build_dataset(data_config(dataset="mini_imagenet", root=str(tmp_path / "data")), seed=0)
    w = MINI_WNIDS
    # right file name, wrong class folder: no match
    write_sessions(tmp_path / "idx", [[f"x/{w[0]}/{w[0]}00000000.jpg", f"x/{w[1]}/{w[0]}00000001.jpg"]])
    with pytest.raises(UserError, match=r"session_1.txt line 2: .* matches no training sample"):
        read_index_files(tmp_path / "idx", data.train)


def test_path_lines_need_a_file_backed_dataset(tmp_path):
    write_sessions(tmp_path, [["0", "-1"]])
    with pytest.raises(UserError, match="session_1.txt line 2: '-1' is not a sample index.*no image files"):
        read_index_files(tmp_path, SimpleNamespace(targets=labels(2, 2)))


def test_ambiguous_path_line(tmp_path):
    split = SimpleNamespace(targets=np.array([0, 1]), paths=["a/cls/x.jpg", "b/cls/x.jpg"])
    write_sessions(tmp_path, [["root/cls/x.jpg"]])
    with pytest.raises(UserError, match="line 1: .* matches several"):
        read_index_files(tmp_path, split)


def test_missing_index_dir_and_files(tmp_path):
    split = SimpleNamespace(targets=labels(4, 3))
    with pytest.raises(UserError, match="is not a folder"):
        read_index_files(tmp_path / "none", split)
    (tmp_path / "idx").mkdir()
    with pytest.raises(UserError, match=r"session_1.txt not found"):
        read_index_files(tmp_path / "idx", split)
    write_sessions(tmp_path / "idx", [["0"], ["1"]])
    with pytest.raises(UserError, match=r"session_3.txt not found \(the scenario has 3 sessions\)"):
        read_index_files(tmp_path / "idx", split, n_files=3)


# --- the registered scenario ---------------------------------------------------------------------

def digits():
    return build_dataset(data_config(dataset="digits"), seed=0)


def fscil_cfg(**kw) -> ScenarioConfig:
    return ScenarioConfig.model_validate({"kind": "fscil", **kw})


def test_scenario_plan_is_the_sessions():
    data = digits()
    cfg = fscil_cfg(base_classes=4, ways=2, shots=5, n_sessions=3, class_order="seeded")
    plan = build_scenario(cfg, data, seed=11, eval_period=50)
    assert plan.kind == "fscil" and plan.n_tasks == 4
    assert plan.tasks == fscil_sessions(data.train_targets, 4, 2, 5, 3, 11, class_order="seeded")
    assert plan.disjoint_classes == fscil_classes(10, 4, 2, 3, 11, "seeded")
    fixed = build_scenario(fscil_cfg(base_classes=4, ways=2, n_sessions=3, seed=5), data, seed=99, eval_period=50)
    assert fixed.tasks == build_scenario(fscil_cfg(base_classes=4, ways=2, n_sessions=3), data, 5, 50).tasks


def test_scenario_config_errors():
    with pytest.raises(Exception, match="n_tasks"):
        fscil_cfg(n_tasks=3)  # a key of another scenario kind
    with pytest.raises(UserError, match="larger than the dataset's 10 classes"):
        build_scenario(fscil_cfg(base_classes=4, ways=2, n_sessions=4), digits(), 0, 50)


def test_scenario_from_index_files(tmp_path):
    t = digits().train_targets
    base = np.flatnonzero(t < 6).tolist()
    s1 = [int(i) for c in (6, 7) for i in np.flatnonzero(t == c)[:2]]
    s2 = [int(i) for c in (9, 8) for i in np.flatnonzero(t == c)[-2:]]
    write_sessions(tmp_path, [[str(i) for i in s] for s in (base, s1, s2)])
    cfg = dict(base_classes=6, ways=2, shots=2, n_sessions=2, index_dir=str(tmp_path))
    plan = build_scenario(fscil_cfg(**cfg), digits(), 0, 50)
    assert plan.tasks == [base, s1, s2] and plan.disjoint_classes == [list(range(6)), [6, 7], [9, 8]]
    with pytest.raises(UserError, match=r"session_2.txt lists 2 samples of class 6, but scenario.shots is 3"):
        build_scenario(fscil_cfg(**{**cfg, "shots": 3}), digits(), 0, 50)
    with pytest.raises(UserError, match=r"session_1.txt has 6 classes, but scenario.base_classes is 5"):
        build_scenario(fscil_cfg(**{**cfg, "base_classes": 5}), digits(), 0, 50)
    write_sessions(tmp_path, [[str(i) for i in base], [str(i) for i in s1 + [base[0]]]])
    with pytest.raises(UserError, match=f"sample {base[0]} is listed twice"):
        build_scenario(fscil_cfg(**cfg), digits(), 0, 50)


# --- describe ------------------------------------------------------------------------------------

def write_config(tmp_path, data: str, scenario: str) -> str:
    path = tmp_path / "fscil.yaml"
    path.write_text(f"name: f\nseed: 3\nregime: sessions\ndata: {data}\nstrategy: finetune\nscenario: {scenario}\n")
    return str(path)


def test_describe_json_cub_paths(tmp_path, capsys):
    from clplat.scenarios.__main__ import main

    make_cub(tmp_path / "data", n_classes=5, train_per=4, test_per=1)
    cfg = write_config(tmp_path, f"{{dataset: cub200, root: {tmp_path / 'data'}}}",
                       "{kind: fscil, base_classes: 3, ways: 1, shots: 2, n_sessions: 2, class_order: seeded}")
    assert main(["describe", cfg, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = build_dataset(data_config(dataset="cub200", root=str(tmp_path / "data")), seed=0)
    expected = fscil_sessions(data.train_targets, 3, 1, 2, 2, seed=3, class_order="seeded")
    assert [s["samples"] for s in out["sessions"]] == expected
    assert [s["classes"] for s in out["sessions"]] == fscil_classes(5, 3, 1, 2, 3, "seeded")
    for s in out["sessions"]:
        assert s["paths"] == [data.train.paths[i] for i in s["samples"]]
        assert all((tmp_path / "data" / p).is_file() for p in s["paths"])
        assert {data.class_names.index(p.split("/")[-2]) for p in s["paths"]} == set(s["classes"])


def test_describe_text_and_no_paths_for_tensors(tmp_path, capsys):
    from clplat.scenarios.__main__ import main

    cfg = write_config(tmp_path, "{dataset: digits}", "{kind: fscil, base_classes: 4, ways: 2, n_sessions: 3}")
    assert main(["describe", cfg]) == 0
    out = capsys.readouterr().out
    assert "4 sessions (base + 3 incremental)" in out and "session 3: classes [8, 9]" in out
    assert main(["describe", cfg, "--json"]) == 0
    sessions = json.loads(capsys.readouterr().out)["sessions"]
    assert [len(s["samples"]) for s in sessions[1:]] == [10, 10, 10] and "paths" not in sessions[0]


def test_describe_bad_index_line_is_one_error_line(tmp_path, capsys):
    from clplat.scenarios.__main__ import main

    make_mini_tree(tmp_path / "data")
    write_sessions(tmp_path / "idx", [[f"MINI-ImageNet/train/{MINI_WNIDS[0]}/{MINI_WNIDS[0]}00000000.jpg",
                                       "MINI-ImageNet/train/n99999999/n9999999900000000.jpg"]])
    cfg = write_config(tmp_path, f"{{dataset: mini_imagenet, root: {tmp_path / 'data'}}}",
                       "{kind: fscil, base_classes: 2, ways: 1, shots: 1, n_sessions: 1, "
                       f"index_dir: {tmp_path / 'idx'}}}")
    assert main(["describe", cfg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "session_1.txt line 2" in err[0] and "matches no training sample" in err[0]
