"""Bad command-line input is refused before any work, with exit status 2 (EXIT_USAGE) and
what is accepted; a port that cannot be served fails at once with status 1."""

import os
import socket
import subprocess
import sys

import pytest

from terramesh_stac.cli import main
from terramesh_stac.converters.modalities import MODALITIES
from terramesh_stac.converters.source import open_source
from terramesh_stac.converters.storage import Store
from terramesh_stac.exits import EXIT_FAILED, EXIT_USAGE


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_USAGE
    return capsys.readouterr().err


def test_unknown_modality_is_refused_naming_the_accepted_ones(synth_root, tmp_path, capsys):
    dest = tmp_path / "out"
    err = _refused(["convert", str(synth_root), "--dest", str(dest), "--modalities", "S2L2A,NOPE"], capsys)
    assert "'NOPE'" in err and all(m in err for m in MODALITIES)
    assert not dest.exists()


def test_malformed_destination_is_refused_and_nothing_written(synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("ht!tp://::bad url", "s3://", "s3://Not_A_Bucket/x", "gs://bucket/x"):
        err = _refused(["convert", str(synth_root), "--dest", bad], capsys)
        assert "neither a folder" in err, (bad, err)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="neither a folder"):  # the library refuses it too
        Store("ht!tp://::bad url")


def test_missing_source_is_no_such_folder(tmp_path, capsys):
    missing = tmp_path / "no-such-terramesh"
    err = _refused(["convert", str(missing), "--dest", str(tmp_path / "out")], capsys)
    assert f"source {missing}: no such folder" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        open_source(missing)
    assert "unknown scheme 'ftp'" in _refused(["convert", "ftp://host/TerraMesh"], capsys)


def test_port_out_of_range_is_refused(capsys):
    assert "port must be a number from 1 to 65535" in _refused(["serve", "--port", "99999"], capsys)


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "terramesh_stac.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.subprocess
def test_serve_on_a_busy_port_fails_at_once(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _cli("serve", "--port", str(port), "--dest", str(tmp_path))
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in proc.stderr and "in use" in proc.stderr


@pytest.mark.subprocess
def test_port_setting_out_of_range_is_a_usage_error(tmp_path):
    proc = _cli("serve", env={"TERRAMESH_PORT": "99999", "TERRAMESH_DEST": str(tmp_path)})
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "TERRAMESH_PORT" in proc.stderr and "65535" in proc.stderr
