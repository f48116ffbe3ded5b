"""Packages for setuptools (the rest is in pyproject.toml): the code, and the repo's top-level conf/
mapped into the package as `dcgan_lightning/conf`, so that a wheel or `pip install .` carries every
config (dcgan_lightning.compose.CONF_DIR finds them there; a checkout or an editable install reads
conf/ beside the package). New config groups (conf/<group>/) are found without editing this file."""

from setuptools import find_namespace_packages, setup

GROUPS = find_namespace_packages("conf")  # conf/model, conf/data, ...
CONF = ["dcgan_lightning.conf", *(f"dcgan_lightning.conf.{group}" for group in GROUPS)]

setup(
    packages=[
        *find_namespace_packages(include=["dcgan_lightning*"], exclude=["*__pycache__"]),
        *CONF,
    ],
    package_dir={"dcgan_lightning.conf": "conf"},
    package_data={package: ["*.yaml"] for package in CONF},
)
