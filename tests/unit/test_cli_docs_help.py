"""`zoo docs --help` prints its help and writes nothing (it used to regenerate every README)."""

import pytest

from zoo.cli import main


def test_docs_help_writes_nothing(monkeypatch, capsys):
    import zoo.docs

    def must_not_run():
        raise AssertionError("zoo docs --help regenerated the READMEs")

    monkeypatch.setattr(zoo.docs, "write_readmes", must_not_run)
    with pytest.raises(SystemExit) as exit_info:
        main(["docs", "--help"])
    assert exit_info.value.code == 0
    assert "Regenerate recipes/<paper>/README.md" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["docs", "--bogus"])
    assert exit_info.value.code == 2
