"""The CLI through typer's CliRunner: exit codes, one-line errors, no tracebacks."""

from typer.testing import CliRunner

from jianmu.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, text):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output


def test_version_and_help():
    assert invoke("--version").output.startswith("jianmu ")
    result = invoke("--help")
    assert result.exit_code == 0
    assert "taxonomy" in result.output and "data" in result.output


def test_taxonomy_show_search(tiny_taxonomy_path):
    result = invoke("taxonomy", "show", tiny_taxonomy_path, "--search", "cassia")
    assert result.exit_code == 0, result.output
    assert "Senna siamea" in result.output and "Tectona" not in result.output
    assert "1 of 4 species" in result.output


def test_taxonomy_show_flagged_only(tiny_taxonomy_path):
    result = invoke("taxonomy", "show", tiny_taxonomy_path, "--flagged")
    assert "tucurensis" in result.output and "Senna" in result.output
    assert "Tectona" not in result.output


def test_taxonomy_check_matches_folders(tiny_taxonomy_path, tmp_path):
    root = tmp_path / "data"
    for name in ["1-Dalbergia_tucurensis", "5-Cassia_siamea"]:
        (root / name).mkdir(parents=True)
    result = invoke("taxonomy", "check", tiny_taxonomy_path, root)
    assert result.exit_code == 0, result.output
    assert "2 of 2 folders matched" in result.output
    (root / "Teak").mkdir()
    result = invoke("taxonomy", "check", tiny_taxonomy_path, root)
    assert result.exit_code == 1
    assert "not found" in result.output


def test_user_errors_are_one_red_line(tmp_path):
    assert_one_line_error(invoke("taxonomy", "show", "wod"), "did you mean 'wood'")
    assert_one_line_error(
        invoke("taxonomy", "check", "wood", tmp_path / "missing"), str(tmp_path / "missing")
    )
