"""Where a result belongs in the viewer: the source layer's scale, translate, affine and NIfTI geometry.

One value carried from the image layer to the run and back to every layer made from it, so no
widget copies these four by hand (or forgets one of them). No Qt: any object with napari's layer
attributes can be read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_autofocus.io.nifti import NiftiGeometry, geometry_from_layer


@dataclass(frozen=True)
class Placement:
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    affine: np.ndarray | None = None  # the layer's napari affine (display), 4x4 for 3D
    geometry: NiftiGeometry | None = None  # what NIfTI writers use; read from the file when there was one

    @classmethod
    def of_layer(cls, layer) -> Placement:
        """The placement of a napari layer (its NIfTI geometry from the reader, or one made from
        its scale and translate)."""
        geometry = layer.metadata.get("nifti")
        if not isinstance(geometry, NiftiGeometry):
            geometry = geometry_from_layer(layer.scale, layer.translate, layer.data.shape)
        return cls(
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            affine=np.array(layer.affine.affine_matrix, dtype=float),
            geometry=geometry,
        )

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size (mm) of the three spatial axes."""
        return self.scale[-3:]

    @property
    def description(self) -> str | None:
        """The scan's NIfTI description (how it was made), when it has one."""
        return self.geometry.description if self.geometry is not None else None

    def layer_kwargs(self) -> dict:
        """``scale``/``translate``/``affine`` keyword arguments for ``viewer.add_*``."""
        kwargs = {"scale": self.scale, "translate": self.translate}
        if self.affine is not None:
            kwargs["affine"] = self.affine
        return kwargs
