"""`import detrex.config` stays light: omegaconf and PyYAML only."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_is_light():
    code = (
        "import sys, detrex.config\n"
        "heavy = [m for m in ('torch', 'hydra', 'cloudpickle', 'black', 'iopath', 'fvcore') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_public_api():
    import detrex.config as config

    for name in ("LazyCall", "L", "LazyConfig", "instantiate", "get_config", "try_get_key"):
        assert hasattr(config, name), name
    assert config.L is config.LazyCall
