"""A rendered report, copied where it can be committed and linked (the config's `publish` folder):
the HTML and PDF, summary.csv, the figures, and the configuration it was made with."""

import shutil
from pathlib import Path

import yaml

from reproml.atomic import atomic_path, write_text
from reproml.files import existing


def publish(files, figures, config, command, out):
    """Copy `files` into `out` and `figures` into `out`/figures, and write `out`/config.yaml: the
    configuration as the pipeline ran it (every default filled in), with the command that remakes it."""
    for path in (*files, *figures):
        existing(path, "report file" if path in files else "figure")
    out = Path(out)
    for source, target in [(f, out / Path(f).name) for f in files] + [(f, out / "figures" / Path(f).name)
                                                                      for f in figures]:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    header = (f"# The configuration of this report as the pipeline ran it, every default filled in.\n"
              f"# Remade by: {command}\n")
    write_text(out / "config.yaml", header + yaml.safe_dump(config, sort_keys=False))
