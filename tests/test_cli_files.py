"""``python -m vpred_core inspect`` / ``write-yaml``: output forms, folder scans, progress bar, exit codes."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_factory import build_checkpoint

from vpred_core.cli.main import EXIT_ERRORS, EXIT_NOTHING_TO_DO, EXIT_OK, ProgressBar, main, progress_wanted

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path):
    build_checkpoint(tmp_path / "v.safetensors", "sdxl", markers=("v_pred", "ztsnr"))
    build_checkpoint(tmp_path / "e.safetensors", "sd1")
    (tmp_path / "sub").mkdir()
    build_checkpoint(tmp_path / "sub" / "deep.safetensors", "sd1", metadata={"modelspec.prediction_type": "v"})
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    return tmp_path


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_table(folder, capsys):
    code, out, _ = _run(capsys, "inspect", str(folder))
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].startswith("file") and len(lines) == 3
    assert any(line.startswith("v.safetensors") and " v " in line and " yes " in line for line in lines)


def test_inspect_json_recursive(folder, capsys):
    code, out, _ = _run(capsys, "inspect", "-r", "--json", str(folder))
    data = json.loads(out)
    assert code == EXIT_OK and data["errors"] == []
    by_name = {Path(r["path"]).name: r for r in data["results"]}
    assert set(by_name) == {"v.safetensors", "e.safetensors", "deep.safetensors"}
    assert by_name["deep.safetensors"]["sources"]["prediction"]["source"] == "modelspec.prediction_type"


def test_inspect_exit_codes(tmp_path, capsys):
    assert _run(capsys, "inspect", str(tmp_path))[0] == EXIT_NOTHING_TO_DO
    assert _run(capsys, "inspect", str(tmp_path / "missing"))[0] == EXIT_ERRORS
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\0" * 3)
    code, out, _ = _run(capsys, "inspect", str(bad))
    assert code == EXIT_ERRORS and "too short" in out
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"PK\x03\x04")
    code, out, _ = _run(capsys, "inspect", str(pickle))
    assert code == EXIT_OK and "cannot inspect safely" in out


def test_write_yaml_cycle(folder, capsys):
    code, out, _ = _run(capsys, "write-yaml", "--dry-run", "-r", str(folder))
    assert code == EXIT_OK and out.count("would_write") == 3 and not (folder / "v.yaml").exists()
    code, out, _ = _run(capsys, "write-yaml", "--only-vpred", "-r", str(folder))
    assert code == EXIT_OK and (folder / "v.yaml").exists() and (folder / "sub" / "deep.yaml").exists()
    assert not (folder / "e.yaml").exists() and "not a v-prediction" in out
    code, out, _ = _run(capsys, "write-yaml", "--only-vpred", "-r", str(folder))
    assert code == EXIT_NOTHING_TO_DO and sum(line.startswith("exists") for line in out.splitlines()) == 2
    code, out, _ = _run(capsys, "write-yaml", "--force", "--json", str(folder / "v.safetensors"))
    outcome = json.loads(out)["outcomes"][0]
    assert code == EXIT_OK and outcome["status"] == "written" and outcome["backup_path"].endswith(".bak")


def test_write_yaml_errors_do_not_stop_the_run(folder, capsys):
    (folder / "v.yaml").mkdir()
    code, out, _ = _run(capsys, "write-yaml", "--force", str(folder))
    assert code == EXIT_ERRORS and "error" in out and (folder / "e.yaml").is_file()


def test_bad_override_is_an_error(folder, capsys):
    override = folder / "o.yaml"
    override.write_text("prediction: sideways\n")
    code, out, _ = _run(capsys, "write-yaml", "--override", str(override), str(folder))
    assert code == EXIT_ERRORS and "o.yaml" in out and not (folder / "v.yaml").exists()


def test_override_applies(folder, capsys):
    override = folder / "o.json"
    override.write_text('{"prediction": "v", "ztsnr": true}')
    code, out, _ = _run(capsys, "inspect", "--json", "--override", str(override), str(folder / "e.safetensors"))
    result = json.loads(out)["results"][0]
    assert code == EXIT_OK and result["prediction"] == "v" and result["ztsnr"] is True


def test_progress_bar_on_request_only(folder, capsys):
    _, _, err = _run(capsys, "inspect", "--progress", str(folder))
    assert "[" in err and "2/2" in err
    _, _, err = _run(capsys, "inspect", str(folder))
    assert err == ""  # stderr is not a terminal under pytest
    _, _, err = _run(capsys, "inspect", "--progress", str(folder / "e.safetensors"))
    assert err == "", "single files are not a folder scan"


def test_progress_bar_drawing():
    stream = io.StringIO()
    with ProgressBar(3, True, stream) as bar:
        for name in "abc":
            bar.step(name)
    assert "3/3" in stream.getvalue() and stream.getvalue().endswith("\n")
    assert progress_wanted(None, io.StringIO()) is False and progress_wanted(True, io.StringIO()) is True


def test_module_entry_point(folder):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "vpred_core", "inspect", "--json", str(folder / "v.safetensors")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["architecture"]["id"] == "sdxl"
