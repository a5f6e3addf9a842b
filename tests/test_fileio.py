import os
import stat

import pandas as pd
import pytest
import torch

from cli import UserError
from fileio import STARTED, atomic_path, load_checkpoint, open_lock, write_csv, write_csvs


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "output.csv"
    write_csv(pd.DataFrame({"ImageID": ["a.jpg"], "ans": [3]}), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            with open(temporary, "w") as half_written:
                half_written.write("ImageID,ans\nb.jpg")
            raise RuntimeError("killed")
    assert target.read_text() == "ImageID,ans\na.jpg,3\n"
    assert [path.name for path in tmp_path.iterdir()] == ["output.csv"]


def test_a_symlink_planted_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/output.csv").symlink_to(victim)
    write_csv(pd.DataFrame({"a": [1]}), tmp_path / "data/output.csv")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "data/output.csv").is_symlink()


def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "cache.lock").symlink_to(victim)
    with pytest.raises(OSError):
        open_lock(tmp_path / "cache.lock")
    assert victim.read_text() == "precious"


def test_written_files_get_the_mode_the_umask_gives(tmp_path):
    previous = os.umask(0o027)
    try:
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "out.csv")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o640


def test_a_killed_writes_temporary_is_removed_by_the_next_write_and_a_running_ones_kept(tmp_path):
    stale, running = tmp_path / ".out.csv.k1ll3d.tmp", tmp_path / ".out.csv.runn1n.tmp"
    stale.write_text("half")
    os.utime(stale, (STARTED - 60, STARTED - 60))  # written before this process started: its writer is gone
    running.write_text("half")
    write_csv(pd.DataFrame({"a": [1]}), tmp_path / "out.csv")
    assert sorted(path.name for path in tmp_path.iterdir()) == [running.name, "out.csv"]


def test_a_pair_interrupted_between_its_moves_leaves_the_last_file_missing_not_stale(tmp_path, monkeypatch):
    first, last = tmp_path / "probabilities.csv", tmp_path / "output.csv"
    write_csvs({first: pd.DataFrame({"v": ["old"]}), last: pd.DataFrame({"v": ["old"]})})
    replace, moves = os.replace, []

    def killed_after_one_move(source, target):
        if moves:
            raise KeyboardInterrupt
        moves.append(target)
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_after_one_move)
    with pytest.raises(KeyboardInterrupt):
        write_csvs({first: pd.DataFrame({"v": ["new"]}), last: pd.DataFrame({"v": ["new"]})})
    assert pd.read_csv(first)["v"].tolist() == ["new"]
    assert not last.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["probabilities.csv"]


@pytest.mark.parametrize("target", ["a_file/out.csv", "a_folder"])
def test_an_unwritable_output_path_is_a_user_error_and_writes_nothing(tmp_path, target):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(UserError, match="cannot write"):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file", "a_folder"]


@pytest.mark.parametrize("content, message", [
    (b"", "cannot read checkpoint"),
    (b"not a checkpoint at all" * 10, "it is not a file torch.save wrote"),
    (None, "it holds a list, not a table of tensors"),
])
def test_an_empty_garbage_or_odd_checkpoint_is_a_user_error(tmp_path, content, message):
    path = tmp_path / "best.pth"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)
