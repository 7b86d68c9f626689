import shutil

import pytest

import datatrace as dt
from datatrace.lm import sources


def test_fortune_files_are_split_on_percent_lines(tmp_path):
    (tmp_path / "jokes").write_text("first joke\nline two\n%\n%\nsecond\n%\nthird, long enough\n")
    (tmp_path / "jokes.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "jokes.u8").symlink_to(tmp_path / "jokes")
    (tmp_path / "ascii-art").write_text("  /\\_/\\\n%\n")
    texts, ids = dt.lm.load_fortunes(tmp_path)
    assert texts == ["first joke\nline two", "second", "third, long enough"]
    assert ids == ["jokes:0", "jokes:1", "jokes:2"]
    texts, ids = dt.lm.load_fortunes(tmp_path, min_chars=10)
    assert ids == ["jokes:0", "jokes:2"]  # ids do not move when short documents are dropped


def test_missing_packages_name_the_apt_package(tmp_path, monkeypatch):
    with pytest.raises(dt.lm.MissingDependencyError, match="apt-get install fortunes"):
        dt.lm.load_fortunes(tmp_path / "nowhere")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(dt.lm.MissingDependencyError, match="apt-get install bible-kjv"):
        dt.lm.load_kjv()


def test_missing_python_package_names_the_extra():
    with pytest.raises(dt.lm.MissingDependencyError, match="pip install 'datatrace\\[llm\\]'"):
        sources.require("a_package_that_does_not_exist")


@pytest.mark.skipif(not sources.FORTUNES_DIR.is_dir(), reason="Debian package 'fortunes' not installed")
def test_real_fortunes():
    texts, ids = dt.lm.load_fortunes()
    assert 14_000 < len(texts) < 16_000
    assert len({i.split(":")[0] for i in ids}) == 42  # 43 topic files minus ascii-art


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian package 'bible-kjv' not installed")
def test_real_kjv_verses():
    texts, ids = dt.lm.load_kjv("gen1:1-gen1:3")
    assert ids == ["Ge1:1", "Ge1:2", "Ge1:3"]
    assert texts[0] == "In the beginning God created the heaven and the earth."
