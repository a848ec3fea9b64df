"""Figures saved as image files, for --mode=analyze and the sweep's front.

Drawn on matplotlib `Figure`s and rendered by Agg, never through pyplot, so no
display is needed and no global state is touched.
"""

import io
import os

from matplotlib.figure import Figure

from l0jax import workdirs

DPI = 110


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
  """`fig` as the image file `path` (its format by its suffix); a refused write names the file."""
  image = io.BytesIO()
  fig.savefig(image, dpi=DPI, format=os.path.splitext(path)[1][1:])
  workdirs.write_file(path, image.getvalue())
