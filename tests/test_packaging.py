"""A non-editable install carries everything the gateway reads at run time."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_code_data_and_entry_points(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    [wheel] = tmp_path.glob("opengateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gateway/data/models.yaml" in names
    assert {"plugins/openai.py", "plugins/local.py", "gateway/app.py"} <= names
    # Every non-Python file under gateway/ and plugins/ in the tree ships in the wheel.
    for package in ("gateway", "plugins"):
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in names, path
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert parser["console_scripts"]["opengateway"] == "gateway.cli:main"
    assert {"openai", "local", "azure_openai", "google", "stability", "bfl", "fal"} <= set(
        parser["opengateway.providers"])
