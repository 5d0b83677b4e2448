"""The README's quick example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Quick example"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "README quick example", "exec"), namespace)
    history = namespace["history"].history
    assert len(history["gga_cos_after"]) == 2
    assert history["loss"][-1] < history["loss"][0]
