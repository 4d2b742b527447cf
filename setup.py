"""Installs the `pipelines` and `trainer` packages (also what Dataflow workers get)."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def requirements(name):
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="keyword-recognition",
    version="0.1.0",
    description="Speech-command recognition: Beam preprocessing, Keras training, batch prediction",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines", "pipelines.*", "trainer", "trainer.*"]),
    install_requires=requirements("requirements.txt"),
    extras_require={"test": requirements("requirements-test.txt")},
    entry_points={
        "console_scripts": [
            "kws-preprocess=pipelines.preprocess:main",
            "kws-download=pipelines.download:main",
            "kws-stage=pipelines.stage:main",
            "kws-batch-predict=pipelines.predict:main",
            "kws-train=trainer.task:main",
            "kws-evaluate=trainer.evaluate:main",
            "kws-predict=trainer.predict:main",
        ],
    },
)
