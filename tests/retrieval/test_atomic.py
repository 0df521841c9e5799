import os
import stat
from pathlib import Path

import pytest

from coins.retrieval.atomic import atomic_path, write_json


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    # the module read the umask at import; this machine's default is 022 as well
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) & 0o044 == 0o044


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
