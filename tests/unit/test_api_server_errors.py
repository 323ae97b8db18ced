"""What `runner serve` prints when a connection breaks outside a request: nothing for a client that vanished
(a killed docker CLI resets its kept-alive TCP connections), one line for anything else, never a traceback
unless --debug."""

from __future__ import annotations

from runner.api.server import Address, make_server


def _raise_in_handler(server, exc: BaseException) -> None:
    try:
        raise exc
    except BaseException:
        server.handle_error(None, ("127.0.0.1", 1))


def test_a_vanished_client_prints_nothing_and_a_bug_one_line(capsys):
    server = make_server(Address("tcp://127.0.0.1:0"), backend=None)
    try:
        _raise_in_handler(server, ConnectionResetError(104, "Connection reset by peer"))
        _raise_in_handler(server, BrokenPipeError(32, "Broken pipe"))
        assert capsys.readouterr().err == ""
        _raise_in_handler(server, RuntimeError("boom"))
        err = capsys.readouterr().err
        assert err == "runner: error serving a client: RuntimeError: boom\n"
        server.debug = True
        _raise_in_handler(server, RuntimeError("boom"))
        assert "Traceback" in capsys.readouterr().err
    finally:
        server.server_close()
