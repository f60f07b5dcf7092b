"""The shipped calibration and evaluation corpus (README.md here), as package data.

`models.data` finds it with importlib.resources, so a checkout (PYTHONPATH=. or an editable install) and an
installed wheel resolve it the same way; pyproject.toml's package-data ships the .txt and .tsv files.
"""
