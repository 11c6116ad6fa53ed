"""Installation script for gpsk_materials."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="gpsk_materials",
    version="0.1.0",
    description="Generative models of inorganic crystals in an invertible reciprocal-space representation (GPSK-300).",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gpsk_materials", "gpsk_materials.*"]),
    include_package_data=True,
    package_data={
        "gpsk_materials": ["weights/*/*.safetensors", "weights/*/*.json", "data/*", "evaluation/data/*",
                           "evaluation/data/magpie_elementdata/*"]
    },
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "pymatgen>=2024.1.1",
        "ase>=3.23",
        "spglib>=2.1",
        "monty>=2024.1.1",
        "matgl>=1.1",
        "chgnet>=0.3",
        "smact>=2.5",
        "periodictable>=1.7",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "pandas>=2.0",
        "pyarrow>=14",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6"],
        "docs": ["mkdocs>=1.5", "mkdocstrings[python]>=0.24"],
    },
    entry_points={"console_scripts": ["gpsk=gpsk_materials.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Chemistry",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
