"""Build-time layout: the repository keeps plugins/, templates/, etc/ and man/ at the top; the
wheel carries them inside the package, as honeytrap/data/<name>/ (honeytrap/resources.py finds
them there, or in the source tree when run from a checkout). Everything else is pyproject.toml.

Every file under those directories and under honeytrap/ is package data (a glob, never a list):
a new template format, a dialogue file, a subpackage's data need no change here.
"""

from setuptools import find_packages, setup

# The repository's data directories, by the name they have in the package (honeytrap.data.X).
DATA = ("plugins", "templates", "etc", "man")

setup(
    packages=[*find_packages(include=["honeytrap", "honeytrap.*"]),
              *(f"honeytrap.data.{name}" for name in DATA)],
    package_dir={f"honeytrap.data.{name}": name for name in DATA},
    package_data={
        "honeytrap": ["py.typed"],
        "": ["**/*"],
    },
    exclude_package_data={"": ["__pycache__", "*.pyc", "*.pyo"]},
)
