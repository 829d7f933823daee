"""fastpnr: fast continual self-supervised learning with Pseudo-Negative Regularization.

Install torch first (see README): an unpinned torch from the index pulls a multi-GB CUDA build.
"""
from setuptools import setup

PACKAGES = [
    "fastpnr", "fastpnr.data", "fastpnr.losses", "fastpnr.methods", "fastpnr.models", "fastpnr.regularizers", "fastpnr.train", "fastpnr.system", "fastpnr.study", "fastpnr.run", "fastpnr.eval",
    "loaders", "kernels", "fastpnr.scripts",
]

setup(
    name="fastpnr",
    version="0.1.0",
    description="High-throughput continual self-supervised learning (PNR, CaSSLe, GSG) in PyTorch",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir={"fastpnr.scripts": "scripts"},
    install_requires=[
        "torch>=2.11",
        "numpy>=1.26",
        "pillow>=10",
        "fire>=0.6",
        "tqdm>=4.66",
        "tensorboard>=2.15",
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "triton>=3.6"],
        "triton": ["triton>=3.6"],
        "ffcv": ["ffcv==1.0.2", "opencv-python-headless"],
        "dali": ["nvidia-dali-cuda130"],
        "profile": ["tensorboard>=2.15", "torch-tb-profiler>=0.4.3"],
        "slurm": ["submitit>=1.5"],
        "yaml": ["pyyaml>=6"],                # fastpnr train --config FILE.yaml (JSON needs nothing)
        "wandb": ["wandb>=0.17", "pyyaml>=6"],  # --train.wandb PROJECT
    },
    entry_points={"console_scripts": ["fastpnr=fastpnr.cli:main"]},
)
