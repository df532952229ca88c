"""`chater-gpt completion bash`: a script bash reads, completing the commands and
their options as the parser defines them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from entrypoints.cli import main as chater_gpt


def complete(script: str, line: str) -> list[str]:
    """What bash offers for the last word of `line`, with the script loaded."""
    words = line.split(" ")
    program = f"""
source /dev/stdin
COMP_WORDS=({' '.join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
COMP_POINT=${{#COMP_LINE}}
_shtab_chater_gpt chater-gpt {words[-1]!r} {words[-2]!r}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", program], input=script, capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_and_their_options(capsys):
    assert chater_gpt(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # it parses
    assert complete(script, "chater-gpt ch") == ["check"]
    assert complete(script, "chater-gpt dead") == ["dead-letters"]
    assert complete(script, "chater-gpt check --re") == ["--replicas"]
    assert set(complete(script, "chater-gpt usage --by ")) == {"user", "model", "day", "month"}


def test_every_shell_it_names_gets_a_script(capsys):
    for shell in ("zsh", "tcsh"):
        assert chater_gpt(["completion", shell]) == 0
        assert "chater-gpt" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        chater_gpt(["completion", "fish"])  # not one it makes: argparse's usage error
