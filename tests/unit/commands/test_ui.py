"""`textinv ui`: loopback by default, a warning for --share and other hosts, one line without gradio."""

from __future__ import annotations

import logging
import socket
import sys

import pytest

from textinv.cli import main


@pytest.fixture()
def launched(monkeypatch):
    import textinv.ui.app as app  # the ui extra is part of [dev]: a missing gradio fails here, never skips

    calls = []
    monkeypatch.setattr(app, "launch", lambda blocks, ctx, host, port, share: calls.append((ctx, host, port, share)))
    return calls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_gradio_it_says_how_to_install_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "textinv[ui]"' in err


def test_an_empty_gradio_namespace_package_is_not_gradio(monkeypatch, capsys):
    import types

    # What a folder named gradio in the working directory imports as (run from /tmp, Gradio's cache /tmp/gradio).
    monkeypatch.setitem(sys.modules, "gradio", types.ModuleType("gradio"))
    assert main(["ui"]) == 2
    assert 'pip install "textinv[ui]"' in capsys.readouterr().err


def test_listens_on_loopback_by_default_without_a_share_link(launched, tmp_path, caplog):
    port = _free_port()
    with caplog.at_level(logging.WARNING):
        assert main(["ui", "--port", str(port), "--output-root", str(tmp_path / "root")]) == 0
    ctx, host, got_port, share = launched[0]
    assert (host, got_port, share) == ("127.0.0.1", port, False)
    assert ctx.output_root == tmp_path / "root" and ctx.model is None
    assert "public" not in caplog.text


def test_share_and_other_hosts_warn(launched, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        main(["ui", "--share", "--port", str(_free_port()), "--output-root", str(tmp_path)])
    assert launched[-1][3] is True and "public link" in caplog.text
    with caplog.at_level(logging.WARNING):
        main(["ui", "--host", "0.0.0.0", "--port", str(_free_port()), "--output-root", str(tmp_path)])
    assert launched[-1][1] == "0.0.0.0" and "other machines" in caplog.text


def test_busy_port_and_bad_model_are_one_line_errors(launched, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port), "--output-root", str(tmp_path)]) == 2
    assert "pick another --port" in capsys.readouterr().err
    assert main(["ui", "--model", str(tmp_path / "nope"), "--output-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not launched
