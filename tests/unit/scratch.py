"""A scratch directory for the unit tests: made if need be, holding the given files."""

import os


def scratch(path, files):
    """`path`, a directory holding `files` (name -> text); returns `path`."""
    try:
        os.mkdir(path)
    except OSError:
        pass
    for name, text in files.items():
        with open(path + "/" + name, "w") as f:
            f.write(text)
    return path
