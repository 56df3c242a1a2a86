"""Every ```python and ```bash block of README.md runs as written.

The blocks run top to bottom in one fresh directory, as a reader would type them
(a later block may look at what an earlier one wrote), each in its own process,
with this interpreter's ``bin/`` first on PATH so ``dreamlake`` is the one under
test. A block that cannot run here carries, on the line right above its fence,
``<!-- readme-test: skip (the reason) -->``."""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip \((?P<reason>[^)]*)\) -->$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclass
class Block:
    lang: str
    line: int
    code: str
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = SKIP.match(lines[i - 1]) if i else None
        blocks.append(Block(opened["lang"], i + 1, "\n".join(lines[i + 1 : end]) + "\n", marker["reason"] if marker else None))
        i = end + 1
    return blocks


def test_every_skip_marker_gives_a_reason_and_sits_on_a_block():
    lines = README.read_text().splitlines()
    markers = [i for i, line in enumerate(lines) if "readme-test" in line]
    assert markers, "the README's install block should be marked"
    for i in markers:
        found = SKIP.match(lines[i])
        assert found and found["reason"].strip(), f"README.md:{i + 1}: a skip marker needs a reason: {lines[i]!r}"
        assert FENCE.match(lines[i + 1]) and lines[i + 1] != "```", f"README.md:{i + 1}: marker not right above a code block"


@pytest.mark.timeout(600)
def test_every_readme_block_runs_as_written(tmp_path):
    blocks = [b for b in readme_blocks(README.read_text()) if b.lang in ("python", "bash")]
    runnable = [b for b in blocks if b.skip is None]
    assert len([b for b in runnable if b.lang == "python"]) >= 4 and len([b for b in runnable if b.lang == "bash"]) >= 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMLAKE_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for number, block in enumerate(runnable):
        script = tmp_path / f"readme_block_{number}.{'py' if block.lang == 'python' else 'sh'}"
        script.write_text(block.code)
        command = [sys.executable, str(script)] if block.lang == "python" else ["bash", "-euo", "pipefail", str(script)]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (
            f"README.md:{block.line}: the {block.lang} block failed (exit {result.returncode})\n"
            f"--- block ---\n{block.code}--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
        )
    # what the blocks promise, read back
    assert (tmp_path / "train.csv").read_text().splitlines()[0] == "index,_ts,loss,step"
    assert (tmp_path / "data" / "robotics" / "run-1" / "session.json").exists()
    assert (tmp_path / "config-copy.json").read_text() == "{}"
    assert len(list((tmp_path / "demo-data" / "demo").iterdir())) == 1
