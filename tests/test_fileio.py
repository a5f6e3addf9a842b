import pandas as pd
import pytest

from fileio import atomic_path, write_csv


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
