"""What a command printed, checked alike everywhere. Test modules import it by name
(``from cli_results import one_error_line``): tests/conftest.py puts tests/ on the path."""


def one_line_refusal(result, *words):
    """Exit 2 and one error line: the whole of stderr, or its last line after progress bars."""
    assert result.exit_code == 2, result.output
    refusals = [line for line in result.stderr.splitlines() if "sharpdiv: error" in line]
    assert len(refusals) == 1 and result.stderr.endswith(refusals[0] + "\n"), result.stderr
    assert refusals[0].startswith("sharpdiv: error: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in refusals[0], (word, refusals[0])


def one_error_line(result) -> str:
    """The command failed with status 2 and showed exactly one line, no traceback. Progress bars
    are drawn and erased with carriage returns; what counts is what a terminal shows."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    shown = [line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n")]
    shown = [line for line in shown if line.strip()]
    assert len(shown) == 1 and shown[0].startswith("sharpdiv: error: "), result.stderr
    assert "Traceback" not in result.output
    return shown[0]


def refused(result, *fragments):
    """Exit 2 with one line on stderr holding every fragment, and no traceback."""
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("sharpdiv: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
