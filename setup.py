"""Install detrex (KS-DETR fork).

A default install is pure Python: no compiler, no CUDA toolkit. The repository's `configs/` directory is
shipped inside the package as `detrex/_configs` so that `detrex.config.get_config("common/...")` works in
regular (non-editable) installs too; an editable install reads `configs/` in place.
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))

# Tested pins: torch 2.14.1 with torchvision 0.29.1 (never the 2.13.0+cpu wheel: no torchvision loads on it).
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "omegaconf==2.3.1",
    "hydra-core==1.3.8",
    "fvcore==0.1.5.post20221221",
    "iopath==0.1.10",
    "pycocotools==2.0.11",
    "timm==1.0.31",
    "scipy>=1.10",
    "numpy>=1.24",
    "Pillow>=9.5",
    "PyYAML>=6.0",
    "cloudpickle>=2.0",
    "tabulate",
    "termcolor",
    "tensorboard>=2.14",
    "matplotlib>=3.7",
]

EXTRAS_REQUIRE = {
    "dev": ["pytest>=7", "black"],
    "fast-eval": ["faster-coco-eval==1.8.0"],
}


class BuildPyWithConfigs(build_py):
    """Copy the repository's `configs/` into the built package as `detrex/_configs`."""

    def run(self):
        super().run()
        src = os.path.join(HERE, "configs")
        dst = os.path.join(self.build_lib, "detrex", "_configs")
        if os.path.isdir(src) and not self.editable_mode:
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(
    name="detrex",
    version="0.1.0",
    description="KS-DETR and DETR-family baselines on a detectron2-free detrex",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["detrex", "detrex.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    cmdclass={"build_py": BuildPyWithConfigs},
)
