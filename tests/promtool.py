"""promtool on a Prometheus exposition: the one check the metrics tests share."""

from __future__ import annotations

import shutil
import subprocess


def check_exposition(text: str, families: tuple[str, ...] = ()) -> None:
    """Each family in `families` is exported, and `promtool check metrics` finds the text clean
    (no error, no lint warning). promtool comes with Debian's prometheus package; a missing one
    fails the test."""
    for family in families:
        assert f"# TYPE {family} " in text, f"{family} is not exported"
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian package prometheus); this test needs it"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        f"promtool check metrics (exit {done.returncode}):\n{done.stdout}{done.stderr}")
