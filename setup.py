"""Install detrex (KS-DETR fork).

A default install is pure Python: no compiler, no CUDA toolkit. The repository's `configs/` directory is
shipped inside the package as `detrex/_configs` so that `detrex.config.get_config("common/...")` works in
regular (non-editable) installs too; an editable install reads `configs/` in place.

Optional CUDA op: the multi-scale deformable attention extension `detrex._C` (sources in `detrex/layers/csrc/`) is
built only when `FORCE_CUDA=1`, or when a CUDA toolkit (nvcc) is found and `torch.cuda.is_available()`. The GPU
architectures come from `TORCH_CUDA_ARCH_LIST` (e.g. "9.0", or "8.0;8.6;9.0+PTX"). Without it, the pure-PyTorch op
is used and nothing is compiled. torch is imported only on that path (pyproject's build requirements are setuptools
and wheel); see `_cuda_extensions()`.
"""
import os
import shutil
import sys
import sysconfig

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))

# Ranges, not pins: the package must install into an environment whose torch is already there (a cluster's CUDA
# build, conda, a source build) without replacing it. The exact versions CI tests live in constraints.txt
# (`pip install -c constraints.txt -e ".[dev]"`).
#
# torch >= 2.6: the lowest release on which the whole library works. It uses torch.library.register_fake /
# register_autograd / custom_op / opcheck (2.4: the compiled op's fake kernels and autograd, detrex/layers/msda_op.py),
# the torch.serialization.safe_globals context manager (2.5) and get_unsafe_globals_in_checkpoint (2.6: names what
# keeps a checkpoint from loading with weights_only=True), and float16 / bfloat16 F.grid_sample on the CPU (2.6: the
# pure-PyTorch deformable attention under bf16 autocast on a CPU). Measured: torch 2.5.1 fails exactly those tests,
# 2.6.0 passes them. CI installs into a venv that already holds torch 2.6.0 and checks that torch stays
# (.ci/check_older_torch); the GPU tests and benchmarks ran on 2.11; constraints.txt pins the default, 2.14.1.
#
# torchvision and timm are not imported by the library: only tests compare against them (ResNet, Swin, box ops,
# focal loss), so they live in the "dev" extra. As install requirements they would drag a torch in: every torchvision
# wheel pins one exact torch (timm needs torchvision), so `pip install -e .` would replace the user's torch.
INSTALL_REQUIRES = [
    "torch>=2.6",
    "omegaconf>=2.3,<2.4",
    "hydra-core>=1.3,<1.4",
    "fvcore>=0.1.5.post20221221",
    "iopath>=0.1.9",
    "pycocotools>=2.0.8",
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

# ONNX export and deployment (tools/export_onnx.py, detrex.deploy, demo --onnx, bench/inference.py --onnx). The
# exporter is torch's TorchScript-based one (torch.onnx.export(..., dynamo=False)), which needs no onnxscript;
# `onnx` writes the metadata (and reads files), `onnxruntime` runs them (GridSample of opset 16+: onnxruntime >= 1.17
# runs all of our graphs, tested with 1.32). Part of "dev" so that CI runs the export tests.
EXPORT_REQUIRES = ["onnx>=1.15", "onnxruntime>=1.17"]

EXTRAS_REQUIRE = {
    # pytest-xdist: the README's test command spreads the test files over the CPU cores (`-n auto`)
    # torchvision must be the release built for the installed torch (0.21 <-> 2.6, ..., 0.29 <-> 2.14)
    "dev": ["pytest>=7", "pytest-xdist>=3.2", "black", "torchvision>=0.21", "timm>=1.0"] + EXPORT_REQUIRES,
    "export": EXPORT_REQUIRES,
    "fast-eval": ["faster-coco-eval>=1.8"],
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


def _cuda_home():
    """The CUDA toolkit root (holding bin/nvcc and include/cuda_runtime.h), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:  # nvcc may be a wrapper script or symlink outside the toolkit (e.g. /usr/local/bin/nvcc)
        candidates += [os.path.dirname(os.path.dirname(nvcc)), os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")) and (
            os.path.isfile(os.path.join(home, "bin", "nvcc"))
        ):
            return home
    return None


def _import_torch(forced: bool):
    """torch, or None. Under pip's build isolation torch is not importable from the build environment; the target
    environment's own torch (the one the extension must match) is then looked up in its site-packages."""
    try:
        import torch  # noqa: F401
        return torch
    except Exception:  # ImportError, or a broken torch install: never fatal for a default install
        pass
    for path in dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])):
        if os.path.isdir(os.path.join(path, "torch")) and path not in sys.path:
            sys.path.append(path)
            try:
                import torch  # noqa: F811
                print(f"detrex setup.py: building the CUDA op against torch {torch.__version__} from {path}")
                return torch
            except Exception:
                sys.path.remove(path)
    if forced:
        raise SystemExit(
            "detrex setup.py: FORCE_CUDA=1 needs torch to build the CUDA op, but torch is not importable. Install "
            "torch first (pip install -c constraints.txt torch, or your own build), then run: FORCE_CUDA=1 pip install "
            "--no-build-isolation -e ."
        )
    return None


def _cuda_extensions():
    """([CUDAExtension detrex._C], {"build_ext": BuildExtension}) when the CUDA op should be built, else ([], {})."""
    forced = os.environ.get("FORCE_CUDA", "0") == "1"
    cuda_home = _cuda_home()
    if not forced and cuda_home is None:
        return [], {}
    if cuda_home is not None and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension when it is imported
    torch = _import_torch(forced)
    if torch is None:
        return [], {}
    if not forced and not torch.cuda.is_available():
        return [], {}
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

    if CUDA_HOME is None:
        raise SystemExit("detrex setup.py: FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to a toolkit "
                         "whose major version matches torch.version.cuda (" + str(torch.version.cuda) + ")")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # no GPU to detect the architecture from: a short default list instead of torch's every-arch default
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;8.6;8.9;9.0+PTX"
        print("detrex setup.py: TORCH_CUDA_ARCH_LIST unset and no GPU visible; building for "
              + os.environ["TORCH_CUDA_ARCH_LIST"])
    csrc = os.path.join("detrex", "layers", "csrc")
    ext = CUDAExtension(
        name="detrex._C",
        sources=[os.path.join(csrc, "msda_op.cpp"), os.path.join(csrc, "msda_kernels.cu")],
        include_dirs=[os.path.join(HERE, csrc)],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )

    class BuildOptionalExtension(BuildExtension):
        """Without FORCE_CUDA=1 a failed build only warns: the pure-PyTorch op still works."""

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as e:  # compiler errors surface as several exception types
                if forced:
                    raise
                # drop it so that later steps (copying into the source tree, listing outputs) do not look for it
                self.extensions = [e for e in self.extensions if e is not extension]
                print(f"detrex setup.py: WARNING: building the optional CUDA op {extension.name} failed ({e}); "
                      "the pure-PyTorch op will be used. Set FORCE_CUDA=1 to make this an error.")

    return [ext], {"build_ext": BuildOptionalExtension}


EXT_MODULES, EXT_CMDCLASS = _cuda_extensions()

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
    ext_modules=EXT_MODULES,
    cmdclass={"build_py": BuildPyWithConfigs, **EXT_CMDCLASS},
)
